//! TLS to PostgreSQL against a real TLS server: a cluster with `ssl = on`
//! and a `hostssl`-only pg_hba.conf, certificates made here with openssl.
//! Capture (its SQL and its replication connection) and the projector
//! run end to end with `sslmode = verify-full`; a CA that did not sign the
//! server's certificate is refused with a message naming the endpoint and
//! the certificate problem; a plain connection is refused by the server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use vitrina::pg::{SslMode, Target, TlsSettings};
use vitrina::region::load;

fn tls(ca: &Path) -> TlsSettings {
    TlsSettings {
        mode: Some(SslMode::VerifyFull),
        root_cert: Some(ca.to_path_buf()),
        ..Default::default()
    }
}

fn target(cluster: &common::OwnCluster, db: &str, ca: &Path) -> Target {
    let mut config = cluster.config();
    config.dbname(db);
    Target {
        config,
        tls: tls(ca),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_tls_end_to_end_and_a_wrong_ca_refused() {
    let certs = std::env::temp_dir().join(format!("vitrina-tls-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    common::certificates(&certs);
    let certs_for_server = certs.clone();
    let cluster = common::OwnCluster::start_with(
        "tls",
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        move |data| {
            // The server reads its key as its own OS user, mode 0600.
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let owner = std::fs::metadata(data).unwrap();
            for f in ["server.crt", "server.key"] {
                let to = data.join(f);
                std::fs::copy(certs_for_server.join(f), &to).unwrap();
                std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        },
    );
    // Set up over plain TCP, then close it: hostssl only.
    let admin = vitrina::pg::connect(&cluster.config()).await.unwrap();
    for db in ["journal", "showcase"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let mut plain = cluster.config();
    plain.dbname("journal");
    let mut c = vitrina::pg::connect(&plain).await.unwrap();
    vitrina::journal::migrate(&mut c).await.unwrap();
    load::load(
        &plain,
        &common::small_region(81, 1, 20, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    drop(c);
    let hba = cluster.pg.data_dir().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "hostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(admin);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ca = certs.join("ca.crt");
    let journal = target(&cluster, "journal", &ca);
    let showcase = target(&cluster, "showcase", &ca);
    // A plain connection is refused by the server now.
    let refused = vitrina::pg::connect(&plain).await.unwrap_err().to_string();
    assert!(
        refused.contains("no encryption") || refused.contains("pg_hba.conf"),
        "{refused}"
    );

    let name = format!("tls{}", std::process::id());
    let port = cluster.port.to_string();
    let ca_s = ca.display().to_string();
    let env = |section: &str, db: &str| -> Vec<(String, String)> {
        let up = section.to_uppercase();
        vec![
            (format!("VITRINA_{up}__HOST"), "127.0.0.1".into()),
            (format!("VITRINA_{up}__PORT"), port.clone()),
            (
                format!("VITRINA_{up}__USER"),
                vitrina::stack::postgres::SUPERUSER.into(),
            ),
            (format!("VITRINA_{up}__DATABASE"), db.into()),
            (format!("VITRINA_{up}__SSLMODE"), "verify-full".into()),
            (format!("VITRINA_{up}__SSLROOTCERT"), ca_s.clone()),
        ]
    };
    let mut all = env("journal", "journal");
    all.extend(env("showcase", "showcase"));
    all.push((
        "VITRINA_PROJECTOR__METRICS_LISTEN".into(),
        "127.0.0.1:0".into(),
    ));
    let all_ref: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut capture = common::spawn_vitrina(
        "capture",
        "journal",
        &name,
        &format!("{name}-capture"),
        &all_ref,
    );
    let mut projector = common::spawn_vitrina(
        "project",
        "journal",
        &name,
        &format!("{name}-project"),
        &all_ref,
    );
    common::wait_caught_up(&journal, &name, Duration::from_secs(240)).await;
    // Some edits over TLS, then the showcase equals the journal.
    let j = vitrina::pg::connect(&journal).await.unwrap();
    j.batch_execute(
        "UPDATE journal.grades SET mark = 5, updated_at = now() WHERE id IN (SELECT id FROM journal.grades ORDER BY id LIMIT 50);
         DELETE FROM journal.grades WHERE id IN (SELECT id FROM journal.grades ORDER BY id DESC LIMIT 10);",
    )
    .await
    .unwrap();
    common::assert_showcase_equals_journal(
        "showcase over TLS vs journal over TLS",
        &journal,
        &name,
        &showcase,
    )
    .await;
    assert!(
        capture.try_wait().unwrap().is_none(),
        "{}",
        common::log_tail(&format!("{name}-capture"), 30)
    );
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);

    // A CA that did not sign the server's certificate: refused, definite.
    let other: PathBuf = certs.join("other.crt");
    let mut wrong = env("journal", "journal");
    wrong.push((
        "VITRINA_JOURNAL__SSLROOTCERT".into(),
        other.display().to_string(),
    ));
    let wrong_ref: Vec<(&str, &str)> = wrong
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = common::run_vitrina("journal", &format!("{name}x"), &["capture"], &wrong_ref);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("with a wrong CA: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}/journal")) && err.contains("certificate"),
        "names the endpoint and the certificate problem: {err}"
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&certs);
}
