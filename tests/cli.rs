//! The `vitrina` binary: configuration errors name the key, overrides apply.

use std::process::Command;

fn vitrina() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitrina"));
    c.env_remove("VITRINA_CONFIG");
    c
}

#[test]
fn unknown_config_key_fails_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("vitrina-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[region]\nstudents_per_schol = 10\n").unwrap();
    let out = vitrina()
        .arg("--config")
        .arg(&file)
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("students_per_schol"), "{err}");
    assert!(err.contains("bad.toml"), "names the file: {err}");
}

#[test]
fn environment_overrides_apply_and_are_validated() {
    let out = vitrina()
        .env("VITRINA_REGION__SCHOOLS", "7")
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("schools = 7"));

    let out = vitrina()
        .env("VITRINA_WORKLOAD__SESSIONS", "0")
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workload.sessions") && err.contains("1..=64"),
        "{err}"
    );
}

#[test]
fn commands_needing_the_stack_say_how_to_start_it() {
    let dir = std::env::temp_dir().join(format!("vitrina-cli-empty-{}", std::process::id()));
    let out = vitrina()
        .env("VITRINA_STATE_DIR", &dir)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vitrina up"), "{err}");
}
