//! The RDM upload client against the service's own OpenAPI description:
//! every request goes through Prism (`@stoplight/prism-cli`, a validating
//! proxy that is not ours) serving `rdm.json` from PyPI's `uploader-client`,
//! to a stand-in service (`tests/rdm_mock.py`) that checks each file
//! against the public entity descriptions of PyPI's `edu-rdm-integration`
//! and keeps what it accepted. The journal is changed under it (updates,
//! deletes, a moved address, a TRUNCATE, a row the service rejects); the
//! client dies right after the service takes a file and is killed later;
//! at the end the service holds the journal's organizations, addresses and
//! contacts, row by row, and no file reached it twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "rdm-test-token-5f3a";
const PREFIX: &str = "69";

fn tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools")
}

/// The vendor's descriptions, fetched from PyPI into target/test-tools.
fn spec_dir() -> PathBuf {
    let dir = tools().join("rdm-spec");
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rdm_spec.py"))
        .arg(&dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "fetching uploader-client and edu-rdm-integration from PyPI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn spawn_logged(mut cmd: Command, log: &str) -> Child {
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let out = std::fs::File::create(logs.join(format!("{log}.log"))).unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null());
    common::dies_with_test(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {log}: {e}"))
}

fn wait_listening(port: u16, what: &str, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}:\n{}",
            common::log_tail(log, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The stand-in service's state.
fn mock_state(port: u16) -> serde_json::Value {
    let (code, body) = common::http_get(&format!("127.0.0.1:{port}"), "/_mock/state");
    assert_eq!(code, 200, "mock state: {body}");
    serde_json::from_str(&body).unwrap()
}

/// table → primary key → (column → value), for the columns compared.
type Tables = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// What the service should hold: the journal's rows, as the public
/// entities name them (every column but the datetimes, which depend on
/// when a row was sent).
async fn expected(c: &tokio_postgres::Client) -> Tables {
    let id = |v: Option<i64>| v.map(|v| format!("{PREFIX}-{v}")).unwrap_or_default();
    let s = |v: Option<String>| v.unwrap_or_default();
    let n = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out: Tables = BTreeMap::new();
    for r in c
        .query(
            "SELECT id, rosobr_id, ogrn, okpo, inn, kpp, active, okopf, okfs, okogu, okato, oktmo, full_name, parent_id, head_name, head_position, phone FROM journal.organizations",
            &[],
        )
        .await
        .unwrap()
    {
        let active: Option<bool> = r.get(6);
        let row: BTreeMap<String, String> = [
            ("id", id(r.get(0))),
            ("rosobr_id", s(r.get(1))),
            ("ogrn", s(r.get(2))),
            ("okpo", s(r.get(3))),
            ("inn", s(r.get(4))),
            ("kpp", s(r.get(5))),
            (
                "active",
                active.map(|a| if a { "True" } else { "False" }.to_string()).unwrap_or_default(),
            ),
            ("okpf", s(r.get(7))),
            ("okfs", s(r.get(8))),
            ("okogu", s(r.get(9))),
            ("okato", s(r.get(10))),
            ("oktmo", s(r.get(11))),
            ("name", s(r.get(12))),
            ("partof_id", id(r.get(13))),
            ("executive_name", s(r.get(14))),
            ("executive_position", s(r.get(15))),
            ("phone", s(r.get(16))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        out.entry("organisations".into())
            .or_default()
            .insert(row["id"].clone(), row);
    }
    for r in c
        .query(
            "SELECT id, organization_id, use_address, type_address, text, city, district, state, postal_code, country, flat, building, house, street FROM journal.organization_addresses",
            &[],
        )
        .await
        .unwrap()
    {
        let row: BTreeMap<String, String> = [
            ("id", id(r.get(0))),
            ("use_address", n(r.get(2))),
            ("type_address", n(r.get(3))),
            ("text", s(r.get(4))),
            ("city", s(r.get(5))),
            ("district", s(r.get(6))),
            ("state", s(r.get(7))),
            ("postal_code", s(r.get(8))),
            ("country", s(r.get(9))),
            ("flat", s(r.get(10))),
            ("building", s(r.get(11))),
            ("house", s(r.get(12))),
            ("street", s(r.get(13))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        out.entry("address".into())
            .or_default()
            .insert(row["id"].clone(), row);
        let (a, o) = (id(r.get(0)), id(r.get(1)));
        out.entry("address_organisation".into()).or_default().insert(
            format!("{a}|{o}"),
            [("address_id", a), ("organisation_id", o)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
    }
    for r in c
        .query(
            "SELECT id, type_contact, value_type, use_cod, rank_contact FROM journal.organization_contacts",
            &[],
        )
        .await
        .unwrap()
    {
        let row: BTreeMap<String, String> = [
            ("id", id(r.get(0))),
            ("type_contact", n(r.get(1))),
            ("value_type", s(r.get(2))),
            ("use_cod", n(r.get(3))),
            ("rank_contact", n(r.get(4))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        out.entry("telecom".into())
            .or_default()
            .insert(row["id"].clone(), row);
    }
    out
}

/// The service's tables, cut to the columns [`expected`] compares.
fn held(state: &serde_json::Value, like: &Tables) -> Tables {
    let mut out: Tables = BTreeMap::new();
    for (table, rows) in state["tables"].as_object().unwrap() {
        let cols: BTreeSet<&String> = like
            .get(table)
            .and_then(|t| t.values().next())
            .map(|r| r.keys().collect())
            .unwrap_or_default();
        for (pk, row) in rows.as_object().unwrap() {
            let row: BTreeMap<String, String> = row
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| cols.contains(k))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            out.entry(table.clone())
                .or_default()
                .insert(pk.clone(), row);
        }
    }
    out.retain(|_, rows| !rows.is_empty());
    out
}

/// Waits until the service holds what the journal holds.
async fn wait_delivered(c: &tokio_postgres::Client, port: u16, log: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let want = expected(c).await;
        let got = held(&mock_state(port), &want);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let mut diff = Vec::new();
            for (t, rows) in &want {
                for (k, r) in rows {
                    let g = got.get(t).and_then(|g| g.get(k));
                    if g != Some(r) {
                        diff.push(format!("{t} {k}: want {r:?}, got {g:?}"));
                    }
                }
                for k in got.get(t).into_iter().flat_map(|g| g.keys()) {
                    if !rows.contains_key(k) {
                        diff.push(format!("{t} {k}: held, not in the journal"));
                    }
                }
            }
            panic!(
                "the service does not hold the journal's rows after {timeout:?}; {} differences, e.g.:\n{}\n{}",
                diff.len(),
                diff[..diff.len().min(5)].join("\n"),
                common::log_tail(log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdm_uploads_validate_against_the_spec_and_survive_restarts() {
    let prism_bin = tools().join("prism/node_modules/.bin/prism");
    assert!(
        prism_bin.exists(),
        "{} is missing: scripts/bootstrap installs Prism (npm)",
        prism_bin.display()
    );
    let spec = spec_dir();
    let cfg = common::journal_db("t_rdm").await;
    let db = common::db_name(&cfg);
    vitrina::region::load::load(&cfg, &common::small_region(93, 4, 15, 0.0), 2, false, false)
        .await
        .unwrap();
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    // One organization is a branch of another.
    c.execute(
        "UPDATE journal.organizations SET parent_id = 1 WHERE id = 4",
        &[],
    )
    .await
    .unwrap();

    let name = format!("rdm{}", std::process::id());
    let ports = common::free_ports(3);
    let (mock_port, prism_port, metrics_port) = (ports[0], ports[1], ports[2]);
    let (log_mock, log_prism, log_client) = (
        format!("{name}-mock"),
        format!("{name}-prism"),
        format!("{name}-rdm"),
    );
    let mut mock = Command::new("python3");
    mock.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rdm_mock.py"))
        .args(["--port", &mock_port.to_string()])
        .arg("--tables")
        .arg(spec.join("tables.json"))
        .args(["--token", TOKEN, "--processing-ms", "600"])
        // The first two files meet a failing service.
        .args(["--fail-first", "2", "--reject-marker", "REJECT-ME"]);
    let mut mock = spawn_logged(mock, &log_mock);
    let mut proxy = Command::new(&prism_bin);
    proxy
        .arg("proxy")
        .arg(spec.join("rdm.json"))
        .arg(format!("http://127.0.0.1:{mock_port}"))
        .args([
            "--errors",
            "--port",
            &prism_port.to_string(),
            "--host",
            "127.0.0.1",
        ]);
    let mut prism = spawn_logged(proxy, &log_prism);
    wait_listening(mock_port, "the RDM stand-in", &log_mock);
    wait_listening(prism_port, "Prism", &log_prism);

    let token_file = std::env::temp_dir().join(format!("{name}.token"));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let url = format!("http://127.0.0.1:{prism_port}");
    let listen = format!("127.0.0.1:{metrics_port}");
    let token_path = token_file.to_str().unwrap().to_string();
    let env: Vec<(&str, &str)> = vec![
        ("VITRINA_PROSTORE__METRICS_LISTEN", "127.0.0.1:0"),
        ("VITRINA_PROSTORE__DELTA_INTERVAL_MS", "1000"),
        ("VITRINA_RDM__URL", &url),
        ("VITRINA_RDM__TOKEN_FILE", &token_path),
        ("VITRINA_RDM__ID_PREFIX", PREFIX),
        ("VITRINA_RDM__BATCH_INTERVAL_MS", "2000"),
        ("VITRINA_RDM__STATUS_POLL_MS", "200"),
        // A table's rows in several files.
        ("VITRINA_RDM__MAX_ROWS_PER_FILE", "3"),
        ("VITRINA_RDM__METRICS_LISTEN", &listen),
    ];
    let mut capture =
        common::spawn_vitrina("capture", &db, &name, &format!("{name}-capture"), &env);
    let mut feed = common::spawn_vitrina(
        "prostore feed",
        &db,
        &name,
        &format!("{name}-prostore"),
        &env,
    );

    // The first client dies right after the service took its first file:
    // the next one must poll that request, not send the file again.
    let mut dying = env.clone();
    dying.push(common::failpoints("rdm-crash-after-send=return"));
    let mut client = common::spawn_vitrina("rdm upload", &db, &name, &log_client, &dying);
    let deadline = Instant::now() + Duration::from_secs(240);
    while client.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the failpoint did not end the client:\n{}",
            common::log_tail(&log_client, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        common::log_tail(&log_client, 200).contains("failpoint: crashing"),
        "{}",
        common::log_tail(&log_client, 30)
    );
    // Started again with another file size: the planned batch is rebuilt
    // as planned (its files as the service took the first one).
    let mut resized = env.clone();
    resized.retain(|(k, _)| *k != "VITRINA_RDM__MAX_ROWS_PER_FILE");
    resized.push(("VITRINA_RDM__MAX_ROWS_PER_FILE", "5"));
    let mut client = common::spawn_vitrina("rdm upload", &db, &name, &log_client, &resized);
    wait_delivered(&c, mock_port, &log_client, Duration::from_secs(240)).await;
    let log = common::log_tail(&log_client, 100_000);
    assert!(
        log.contains("finishing a batch planned before a restart"),
        "the batch left by the hook is finished"
    );
    assert!(
        !log.contains("a rebuilt file differs from the one sent before the restart"),
        "the batch is rebuilt with the settings of its plan:\n{}",
        common::log_tail(&log_client, 30)
    );
    common::kill(&mut client, libc::SIGTERM);
    let mut client = common::spawn_vitrina("rdm upload", &db, &name, &log_client, &env);

    // Changes of every kind: an update on both tables, a delete, an insert,
    // an address moved to another organization (a new primary key of
    // ADDRESS_ORGANISATION), a change of a column RDM does not carry.
    c.batch_execute(
        "UPDATE journal.organizations SET phone = '+7 (4822) 11-22-33', updated_by = 't' WHERE id = 1;
         UPDATE journal.organization_contacts SET value_type = '+7 (4822) 11-22-33', updated_by = 't' WHERE organization_id = 1 AND type_contact = 1;
         DELETE FROM journal.organization_contacts WHERE organization_id = 2 AND type_contact = 5;
         INSERT INTO journal.organization_contacts (organization_id, type_contact, value_type, use_cod, rank_contact, updated_by)
             VALUES (3, 2, '+7 (4822) 99-00-00', 1, 4, 't');
         UPDATE journal.organization_addresses SET organization_id = 2, updated_by = 't' WHERE id = 2;
         UPDATE journal.organizations SET active = false, updated_by = 't' WHERE id = 3;
         UPDATE journal.organizations SET licence_number = 'Л-new', updated_by = 't' WHERE id = 2;",
    )
    .await
    .unwrap();
    wait_delivered(&c, mock_port, &log_client, Duration::from_secs(120)).await;

    // A row the service's control rejects: its file is dead-lettered with
    // the service's reason; the next change of the row goes through.
    c.execute(
        "UPDATE journal.organizations SET phone = 'REJECT-ME', updated_by = 't' WHERE id = 3",
        &[],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let dead = loop {
        let n = name.clone();
        let dl: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || common::read_all(&n))
            .await
            .unwrap()
            .into_iter()
            .filter(|(t, ..)| *t == vitrina::kafka::dead_letter_topic(&name))
            .filter_map(|(_, _, _, v)| serde_json::from_slice(&v).ok())
            .filter(|v: &serde_json::Value| v["stage"] == "rdm")
            .collect();
        if !dl.is_empty() {
            break dl;
        }
        assert!(
            Instant::now() < deadline,
            "no RDM dead letter:\n{}",
            common::log_tail(&log_client, 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(dead.len(), 1, "one row rejected: {dead:?}");
    assert_eq!(dead[0]["table"], "organisations");
    assert_eq!(dead[0]["code"], 7);
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("rejected by the control"),
        "the service's reason is kept: {}",
        dead[0]
    );
    c.execute(
        "UPDATE journal.organizations SET phone = '+7 (4822) 44-55-66', updated_by = 't' WHERE id = 3",
        &[],
    )
    .await
    .unwrap();
    wait_delivered(&c, mock_port, &log_client, Duration::from_secs(120)).await;

    // A TRUNCATE of the contacts, and new ones; then the client is killed
    // and started again with nothing new to send.
    c.batch_execute(
        "TRUNCATE journal.organization_contacts;
         INSERT INTO journal.organization_contacts (organization_id, type_contact, value_type, use_cod, rank_contact, updated_by)
             VALUES (1, 1, '+7 (4822) 10-10-10', 1, 1, 't'), (2, 3, 'school2@edu.tver.example', 1, 1, 't');",
    )
    .await
    .unwrap();
    wait_delivered(&c, mock_port, &log_client, Duration::from_secs(120)).await;
    let (code, text) = common::http_get(&listen, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metric(&text, "vitrina_rdm_rows_accepted_total") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "vitrina_rdm_rows_rejected_total") >= 1.0);
    assert!(metric(&text, "vitrina_rdm_commit_to_accepted_seconds_count") > 0.0);
    common::kill(&mut client, libc::SIGKILL);
    let mut client = common::spawn_vitrina("rdm upload", &db, &name, &log_client, &env);
    tokio::time::sleep(Duration::from_secs(6)).await;
    wait_delivered(&c, mock_port, &log_client, Duration::from_secs(60)).await;
    // That start read the checkpoint, not the history: of the upload
    // journal only what came after the checkpoint's batch (the kill may
    // fall between a commit and its checkpoint: one batch).
    let log = common::log_tail(&log_client, 100_000);
    let start = log
        .lines()
        .rfind(|l| l.contains("RDM client state read"))
        .expect("the client says how it started");
    let start = regex_lite::Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(start, "")
        .to_string();
    eprintln!("RDM client start after the history: {start}");
    let field = |name: &str| -> String {
        let from = start.find(&format!("{name}=")).expect(name) + name.len() + 1;
        start[from..].split(' ').next().unwrap().to_string()
    };
    let checkpoint: u64 = field("checkpoint_batch")
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or_else(|_| panic!("the start reads from a checkpoint: {start}"));
    let read: u64 = field("journal_batches_read").parse().unwrap();
    assert!(
        checkpoint >= 3 && read <= 1,
        "the start skips the batches before its checkpoint: {start}"
    );

    let state = mock_state(mock_port);
    assert_eq!(
        state["duplicate_posts"], 0,
        "no file reached the service twice"
    );
    assert_eq!(
        state["deletes_of_missing"], 0,
        "every delete named a held row"
    );
    assert_eq!(state["pending"], 0);
    // No person's address reached the service.
    let addresses: Vec<Option<String>> =
        common::column(&c, "SELECT address FROM journal.students").await;
    let sent = state["tables"].to_string();
    for a in addresses.into_iter().flatten() {
        assert!(!sent.contains(&a), "a student's address was sent: {a}");
    }

    // Prism found every request valid, and forwarded each one.
    let prism_log = common::log_tail(&log_prism, 1_000_000);
    let violations: Vec<&str> = prism_log
        .lines()
        .filter(|l| l.contains("✖") || l.contains("Violation") || l.contains("violation"))
        .collect();
    assert!(
        violations.is_empty(),
        "Prism found requests that do not match rdm.json:\n{}",
        violations[..violations.len().min(10)].join("\n")
    );
    let forwarded = prism_log.matches("Forwarding \"post\"").count();
    assert!(
        forwarded as u64 >= state["posts"].as_u64().unwrap() && forwarded > 5,
        "every file went through Prism: {forwarded} forwarded, {} reached the service",
        state["posts"]
    );
    assert!(
        prism_log.contains("Forwarding \"get\""),
        "status polls went through Prism"
    );

    for child in [&mut client, &mut feed, &mut capture, &mut prism, &mut mock] {
        common::kill(child, libc::SIGTERM);
    }
    let log = common::log_tail(&log_client, 1_000_000);
    assert!(
        log.contains("sending a file failed; retrying"),
        "the injected 500s were retried"
    );
    assert!(!log.contains(TOKEN), "the token is never printed");
    let _ = std::fs::remove_file(Path::new(&token_file));
}
