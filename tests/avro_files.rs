//! The schemas in avro/ are the ones the code writes with, their
//! fingerprints are the ones a stock Avro library computes, and a stock
//! library (fastavro, from PyPI) decodes every message capture publishes
//! with nothing but those files.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use vitrina::events::{codec::Registry, schema, ENTITIES};

fn avro_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro")
}

/// Runs tests/fastavro_decode.py over `messages` (topic, value); returns
/// its JSON report.
fn fastavro(messages: &[(String, Vec<u8>)]) -> serde_json::Value {
    let file = std::env::temp_dir().join(format!(
        "vitrina-fastavro-{}-{}.jsonl",
        std::process::id(),
        messages.len()
    ));
    let mut text = String::new();
    for (topic, value) in messages {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&serde_json::json!({"topic": topic, "value": hex}).to_string());
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fastavro_decode.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(avro_dir())
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/bootstrap installs fastavro)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "fastavro could not decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// fastavro's fingerprints (Parsing Canonical Form, CRC-64-AVRO) of the
/// files in avro/ are the ones in our message headers.
#[test]
fn fingerprints_are_the_ones_fastavro_computes() {
    let reg = Registry::new();
    let report = fastavro(&[]);
    let theirs = report["fingerprints"].as_object().unwrap();
    for (e, ours) in reg.fingerprints() {
        assert_eq!(
            theirs[&schema::file_name(e)].as_str().unwrap(),
            ours,
            "{}",
            e.name
        );
    }
    assert_eq!(
        theirs[schema::WATERMARK_FILE].as_str().unwrap(),
        reg.watermark_fingerprint()
    );
    assert_eq!(
        theirs[schema::DETAIL_FILE].as_str().unwrap(),
        reg.detail_fingerprint()
    );
}

/// Every message of every topic after an initial load and a live workload
/// decodes with fastavro and the files in avro/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastavro_decodes_every_message_of_every_topic() {
    let cfg = common::journal_db("t_fastavro").await;
    let db = common::db_name(&cfg);
    let spec = common::small_region(57, 1, 30, 0.05);
    vitrina::region::load::load(&cfg, &spec, 2, false, false)
        .await
        .unwrap();
    let name = format!("fav{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let report = common::spawn_workload(&cfg, 5, 30, 3).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::kill(&mut capture, libc::SIGTERM);
    let dlt = format!("{name}.deadletter.v1");
    let messages: Vec<(String, Vec<u8>)> = common::read_all(&name)
        .into_iter()
        .filter(|m| m.0 != dlt)
        .map(|(topic, _, _, value)| (topic, value))
        .collect();
    let mut want: HashMap<String, u64> = HashMap::new();
    for (t, _) in &messages {
        *want.entry(t.clone()).or_default() += 1;
    }
    let decoded = fastavro(&messages)["decoded"].clone();
    let got: HashMap<String, u64> = serde_json::from_value(decoded).unwrap();
    assert_eq!(got, want, "fastavro decoded every message");
    assert!(
        got.len() >= ENTITIES.len() - 1 && got.values().sum::<u64>() > 10_000,
        "the run covers (nearly) every topic with many messages: {got:?}"
    );
}

#[test]
fn avro_dir_matches_the_contract() {
    let dir = avro_dir();
    for e in ENTITIES {
        let path = dir.join(schema::file_name(e));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "{}: {err}; run `vitrina schemas --write avro`",
                path.display()
            )
        });
        assert_eq!(
            text,
            schema::avsc_text(e),
            "{} is stale; run `vitrina schemas --write avro`",
            path.display()
        );
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "avsc")
        })
        .count();
    let wm = std::fs::read_to_string(dir.join(schema::WATERMARK_FILE)).unwrap();
    assert_eq!(wm, schema::watermark_text(), "avro/watermark.avsc is stale");
    let detail = std::fs::read_to_string(dir.join(schema::DETAIL_FILE)).unwrap();
    assert_eq!(
        detail,
        schema::detail_text(),
        "avro/medical_detail.avsc is stale"
    );
    assert_eq!(files, ENTITIES.len() + 2, "no stray schemas in avro/");
}
