//! Unit tests of the configuration.

use super::*;
use chrono::NaiveDate;

fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("vitrina-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("c{}.toml", text.len()));
    std::fs::write(&p, text).unwrap();
    Config::load(
        Some(&p),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_are_valid() {
    let c = Config::load(None, Vec::new()).unwrap();
    assert_eq!(c.region.schools, 20);
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let e = load_str("[region]\nschoolz = 3\n", &[]).unwrap_err();
    assert!(e.to_string().contains("schoolz"), "{e}");
}

#[test]
fn the_removed_disk_storage_says_what_to_use_instead() {
    let e = load_str("[stack]\nkafka_storage = \"disk\"\n", &[]).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("no longer offered") && e.contains("\"postgres\""),
        "{e}"
    );
    let c = load_str("[stack]\nkafka_storage = \"memory\"\n", &[]).unwrap();
    assert_eq!(c.stack.kafka_storage, crate::stack::broker::Storage::Memory);
    let e = load_str("[stack]\nkafka_storage = \"s3\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("unknown storage \"s3\""), "{e}");
}

#[test]
fn env_overrides_file() {
    let c = load_str(
        "[region]\nschools = 3\n",
        &[
            ("VITRINA_REGION__SCHOOLS", "5"),
            ("VITRINA_JOURNAL__HOST", "db.example"),
            ("VITRINA_CONFIG", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.region.schools, 5);
    assert_eq!(c.journal.host.as_deref(), Some("db.example"));
}

#[test]
fn unknown_env_key_is_an_error_naming_it() {
    let e = load_str("", &[("VITRINA_REGION__SCHOOLZ", "5")]).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("schoolz") && s.contains("VITRINA_REGION__SCHOOLZ"),
        "{s}"
    );
}

#[test]
fn validation_names_key_and_constraint() {
    let e = load_str("[region]\ninvalid_identifier_share = 0.5\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: `region.invalid_identifier_share` must be within 0.0..=0.2"
    );
}

#[test]
fn secrets_do_not_print() {
    let c = load_str("[journal]\npassword = \"hunter2\"\n", &[]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    let printed = toml::to_string_pretty(&c).unwrap();
    assert!(
        !printed.contains("hunter2") && printed.contains("password = \"***\""),
        "{printed}"
    );
    assert_eq!(c.journal.password.unwrap().expose(), "hunter2");
}

#[test]
fn as_of_parses_as_date() {
    let c = load_str("[region]\nas_of = 2026-11-20\n", &[]).unwrap();
    assert_eq!(c.region.as_of, NaiveDate::from_ymd_opt(2026, 11, 20));
}

#[test]
fn secrets_come_from_files_and_never_print() {
    let dir = std::env::temp_dir().join(format!("vitrina-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cr3t-from-file\n").unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "a-regional-hmac-key-of-32-chars!").unwrap();
    let c = load_str(
        &format!(
            "[journal]\npassword_file = {pw:?}\n[capture]\nhashing = \"keyed\"\nhmac_key_file = {key:?}\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"kafka-pw\"\n"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.journal.password.as_ref().unwrap().expose(),
        "s3cr3t-from-file"
    );
    assert_eq!(
        c.capture.hmac_key.as_ref().unwrap().expose(),
        "a-regional-hmac-key-of-32-chars!"
    );
    let printed = toml::to_string_pretty(&c).unwrap();
    let debug = format!("{c:?}");
    for secret in ["s3cr3t-from-file", "a-regional-hmac-key", "kafka-pw"] {
        assert!(
            !printed.contains(secret) && !debug.contains(secret),
            "{secret} printed"
        );
    }
    assert!(printed.contains("SASL_SSL"), "{printed}");
    let e = load_str(
        &format!("[journal]\npassword = \"x\"\npassword_file = {pw:?}\n"),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("journal.password_file"), "{e}");
    let e = load_str(
        "[kafka.properties]\n\"enable.idempotence\" = \"false\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("enable.idempotence"), "{e}");
}
