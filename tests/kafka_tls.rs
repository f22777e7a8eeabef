//! Kafka over TLS: a real TLS server (stunnel from Debian) in front of a
//! broker of the test's own, which advertises the TLS address; capture
//! and the projector reach it with `security.protocol = SSL` through
//! `[kafka.properties]`, end to end. A CA that did not sign the endpoint's
//! certificate gets nothing through, and the log names the endpoint and
//! the certificate problem.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_and_projector_through_a_tls_kafka_endpoint() {
    let dir = std::env::temp_dir().join(format!("vitrina-kafka-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::certificates(&dir);
    let [plain, tls] = common::free_ports(2)[..] else {
        unreachable!()
    };
    let broker = vitrina::stack::tansu::LocalBroker::new(
        &vitrina::config::StackConfig::default(),
        dir.join("broker"),
    )
    .advertising(&format!("127.0.0.1:{tls}"));
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
    let _stunnel = Stunnel(
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
    let ca = dir.join("ca.crt").display().to_string();
    let brokers = format!("127.0.0.1:{tls}");
    let env = |ca: &str| -> Vec<(String, String)> {
        vec![
            ("VITRINA_KAFKA__BROKERS".into(), brokers.clone()),
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

    // The wrong CA: nothing gets through; the log says where and why.
    let other = dir.join("other.crt").display().to_string();
    let bad = env(&other);
    let bad_ref: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let wrong = format!("{name}w");
    let mut c2 = common::spawn_vitrina(
        "capture",
        &db,
        &wrong,
        &format!("{wrong}-capture"),
        &bad_ref,
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    common::kill(&mut c2, libc::SIGKILL);
    let log = common::log_tail(&format!("{wrong}-capture"), 200);
    assert!(
        log.contains(&format!("127.0.0.1:{tls}")) && log.contains("certificate verify failed"),
        "the log names the endpoint and the certificate problem:\n{log}"
    );
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
    let _ = broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
