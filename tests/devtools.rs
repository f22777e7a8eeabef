//! Development tools never touch a journal that is not the local stack's
//! unless the operator names its database.

mod common;

use std::net::TcpListener;
use std::time::Duration;

/// `generate --replace` (and `workload`, `migrate`, `bench`) pointed at an
/// external journal refuse before opening a connection: the "server" here
/// is a listener that counts who connects, and nobody does.
#[test]
fn dev_tools_refuse_a_journal_that_is_not_the_local_stacks_before_connecting() {
    common::stack(); // the local stack runs, as on a developer's machine
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let env = [
        ("VITRINA_JOURNAL__HOST", "127.0.0.1"),
        ("VITRINA_JOURNAL__PORT", port.as_str()),
    ];
    for args in [
        &["generate", "--replace"][..],
        &["workload", "--duration", "1"][..],
        &["migrate"][..],
        &["bench", "capture", "--runs", "1"][..],
    ] {
        let out = common::run_vitrina("regionjournal", "refuse", args, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("`vitrina {}` refused", args[0]))
                && err.contains(&format!("127.0.0.1:{port}"))
                && err.contains("--allow-database regionjournal"),
            "{args:?}: {err}"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        listener.accept().is_err(),
        "a refused tool must not even connect to the journal"
    );

    // Named on the command line, the tool goes ahead: it tries to connect
    // (to a port nobody listens on any more).
    drop(listener);
    let out = common::run_vitrina(
        "regionjournal",
        "refuse",
        &["migrate", "--allow-database", "regionjournal"],
        &env,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("`vitrina migrate` refused") && err.contains("cannot connect"),
        "{err}"
    );
}
