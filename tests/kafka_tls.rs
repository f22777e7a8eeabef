//! Kafka over TLS: a real TLS server (stunnel from Debian) in front of a
//! broker of the test's own, which advertises the TLS address; capture
//! and the projector reach it with `security.protocol = SSL` through
//! `[kafka.properties]`, end to end. A CA that did not sign the endpoint's
//! certificate gets nothing through: capture and the projector stop with a
//! definite error that names the endpoint and the certificate problem.

mod common;

use std::time::Duration;

use vitrina::region::load;

struct Stunnel(std::process::Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (60 s at most) for a stage that must stop by itself on a
/// refusal; its exit status.
async fn stops_by_itself(
    child: &mut std::process::Child,
    log_name: &str,
    refused: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            common::kill(child, libc::SIGKILL);
            panic!(
                "{log_name} kept retrying {refused}:\n{}",
                common::log_tail(log_name, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A broker of the test's own behind stunnel, which terminates TLS with
/// the test's certificates; the broker advertises the TLS address.
struct TlsBroker {
    dir: std::path::PathBuf,
    broker: vitrina::stack::broker::LocalBroker,
    _stunnel: Stunnel,
    tls: u16,
}

impl TlsBroker {
    fn start(tag: &str, authenticating: bool) -> TlsBroker {
        let dir = std::env::temp_dir().join(format!("vitrina-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        common::certificates(&dir);
        let [plain, tls] = common::free_ports(2)[..] else {
            unreachable!()
        };
        // nisshi keeps SCRAM users only in its postgres storage: it
        // refuses --authentication on the memory one.
        let storage = if authenticating {
            vitrina::stack::broker::Storage::Postgres
        } else {
            vitrina::stack::broker::Storage::Memory
        };
        let mut broker = vitrina::stack::broker::LocalBroker::new(
            &vitrina::config::StackConfig::default(),
            dir.join("broker"),
        )
        .with_storage(storage)
        .advertising(&format!("127.0.0.1:{tls}"));
        if authenticating {
            broker = broker.authenticating();
        }
        broker.start(plain).unwrap();
        std::fs::write(
            dir.join("stunnel.conf"),
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {d}/server.crt\nkey = {d}/server.key\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("stunnel.log")).unwrap();
        let stunnel = Stunnel(
            std::process::Command::new("stunnel4")
                .arg(dir.join("stunnel.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("stunnel4 runs (scripts/bootstrap installs it)"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "stunnel did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        TlsBroker {
            dir,
            broker,
            _stunnel: stunnel,
            tls,
        }
    }

    fn ca(&self) -> String {
        self.dir.join("ca.crt").display().to_string()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.broker.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_and_projector_through_a_tls_kafka_endpoint() {
    let tb = TlsBroker::start("kafka-tls", false);
    let (dir, tls) = (tb.dir.clone(), tb.tls);
    let cfg = common::journal_db("t_kafka_tls").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(91, 1, 20, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_kafka_tls_show").await;
    let name = format!("ktls{}", std::process::id());
    let ca = tb.ca();
    let brokers = format!("127.0.0.1:{tls}");
    let env = |ca: &str| -> Vec<(String, String)> {
        vec![
            ("VITRINA_KAFKA__BROKERS".into(), brokers.clone()),
            ("VITRINA_KAFKA__REPLICATION_FACTOR".into(), "1".into()),
            ("VITRINA_KAFKA__MIN_INSYNC_REPLICAS".into(), "1".into()),
            (
                "VITRINA_KAFKA__PROPERTIES__SECURITY.PROTOCOL".into(),
                "SSL".into(),
            ),
            (
                "VITRINA_KAFKA__PROPERTIES__SSL.CA.LOCATION".into(),
                ca.into(),
            ),
            ("VITRINA_SHOWCASE__DATABASE".into(), common::db_name(&show)),
            (
                "VITRINA_PROJECTOR__METRICS_LISTEN".into(),
                "127.0.0.1:0".into(),
            ),
        ]
    };
    let good = env(&ca);
    let good_ref: Vec<(&str, &str)> = good.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut capture =
        common::spawn_vitrina("capture", &db, &name, &format!("{name}-capture"), &good_ref);
    let mut projector =
        common::spawn_vitrina("project", &db, &name, &format!("{name}-project"), &good_ref);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let report = common::spawn_workload(&cfg, 4, 0, 3).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::wait_projected_with(
        &brokers,
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
        &show,
        &name,
        Duration::from_secs(240),
    )
    .await;
    common::assert_showcase_converges(
        "showcase via TLS Kafka vs journal",
        &show,
        &common::under_consent(&cfg, common::journal_view(&cfg, true).await).await,
        Duration::from_secs(60),
    )
    .await;
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);

    // The wrong CA: nothing gets through; capture and the projector stop
    // (a definite error, no restarts) and say where and why.
    let other = dir.join("other.crt").display().to_string();
    let bad = env(&other);
    let bad_ref: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let wrong = format!("{name}w");
    for stage in ["capture", "project"] {
        let log_name = format!("{wrong}-{stage}");
        let mut child = common::spawn_vitrina(stage, &db, &wrong, &log_name, &bad_ref);
        let status = stops_by_itself(&mut child, &log_name, "a refused certificate").await;
        let log = common::log_tail(&log_name, 200);
        assert_eq!(status.code(), Some(1), "{stage} exits 1:\n{log}");
        assert!(
            log.contains(&format!("127.0.0.1:{tls}"))
                && log.contains("certificate verify failed")
                && log.contains("Kafka refused this client")
                && log.contains("ssl.ca.location"),
            "{stage}'s log names the endpoint, the certificate problem and what to check:\n{log}"
        );
        assert!(
            !log.contains("transient failure"),
            "{stage} did not restart on a refusal:\n{log}"
        );
    }
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let slot: Option<String> = c
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&wrong],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0));
    assert!(slot.is_none(), "no slot was even created: {slot:?}");
}

/// SASL_SSL against an authenticating broker behind TLS, with SCRAM
/// credentials the cluster does not know: capture and the projector stop
/// at once (a definite error, no restarts) with the endpoint and the SASL
/// failure, and the password appears in no log nor in `vitrina config`.
/// The broker (nisshi on its postgres storage, the one that keeps SCRAM
/// users) has no user: every login is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sasl_credentials_stop_both_stages_without_printing_the_password() {
    let tb = TlsBroker::start("kafka-sasl", true);
    let cfg = common::journal_db("t_kafka_sasl").await;
    let db = common::db_name(&cfg);
    let show = common::fresh_db("t_kafka_sasl_show").await;
    let name = format!("ksasl{}", std::process::id());
    let brokers = format!("127.0.0.1:{}", tb.tls);
    let secret = format!("sasl-secret-{}", std::process::id());
    let ca = tb.ca();
    let sasl: Vec<(String, String)> = vec![
        ("VITRINA_KAFKA__BROKERS".into(), brokers.clone()),
        ("VITRINA_KAFKA__REPLICATION_FACTOR".into(), "1".into()),
        ("VITRINA_KAFKA__MIN_INSYNC_REPLICAS".into(), "1".into()),
        (
            "VITRINA_KAFKA__PROPERTIES__SECURITY.PROTOCOL".into(),
            "SASL_SSL".into(),
        ),
        (
            "VITRINA_KAFKA__PROPERTIES__SSL.CA.LOCATION".into(),
            ca.clone(),
        ),
        (
            "VITRINA_KAFKA__PROPERTIES__SASL.MECHANISM".into(),
            "SCRAM-SHA-512".into(),
        ),
        (
            "VITRINA_KAFKA__PROPERTIES__SASL.USERNAME".into(),
            "vitrina".into(),
        ),
        (
            "VITRINA_KAFKA__PROPERTIES__SASL.PASSWORD".into(),
            secret.clone(),
        ),
        ("VITRINA_SHOWCASE__DATABASE".into(), common::db_name(&show)),
        (
            "VITRINA_PROJECTOR__METRICS_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
    ];
    let sasl_ref: Vec<(&str, &str)> = sasl.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for stage in ["capture", "project"] {
        let log_name = format!("{name}-{stage}");
        let mut child = common::spawn_vitrina(stage, &db, &name, &log_name, &sasl_ref);
        let status = stops_by_itself(&mut child, &log_name, "refused credentials").await;
        let log = common::log_tail(&log_name, 100_000);
        assert_eq!(status.code(), Some(1), "{stage} exits 1:\n{log}");
        assert!(
            log.contains("Kafka refused this client")
                && log.contains(&format!("sasl_ssl://127.0.0.1:{}", tb.tls))
                && log.contains("SASL"),
            "{stage}'s log names the endpoint and the SASL failure:\n{log}"
        );
        assert!(
            !log.contains("transient failure"),
            "{stage} did not restart:\n{log}"
        );
        assert!(
            !log.contains(&secret),
            "{stage}'s log printed the SASL password"
        );
    }
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    assert!(
        c.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&name]
        )
        .await
        .unwrap()
        .is_none(),
        "no slot was created"
    );
    let out = common::run_vitrina(&db, &name, &["config"], &sasl_ref);
    let printed =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vitrina config: {printed}");
    assert!(
        printed.contains("sasl.password") && !printed.contains(&secret),
        "vitrina config shows the key and hides its value:\n{printed}"
    );
}
