//! Development tools (`migrate`, `generate`, `workload`, `bench`, `demo`)
//! write synthetic data, truncate tables, and create and drop slots and
//! publications. They must never do that to a region's journal by mistake.
//!
//! Invariant: a development tool runs against the local stack's journal,
//! or against a journal whose database the operator named on the command
//! line (`--allow-database NAME`); anything else is refused before a
//! single statement is sent.

use crate::connections::PgEndpoint;

#[derive(Debug, thiserror::Error)]
#[error("`vitrina {tool}` refused: the journal database `{database}` at {host}:{port} is not the local stack's, and {tool} {harm}\nhint: to run it there on purpose (a test server of your own), pass --allow-database {database}")]
pub struct Refused {
    pub tool: &'static str,
    harm: &'static str,
    database: String,
    host: String,
    port: u16,
}

/// What each tool does to the journal, for the refusal.
fn harm(tool: &str) -> &'static str {
    match tool {
        "generate" => {
            "bulk-loads a synthetic region (with --replace, after truncating every journal table)"
        }
        "workload" => "writes synthetic changes",
        "migrate" => "creates the reference journal's tables",
        "bench" => "creates slots, publications and databases and writes synthetic changes",
        "demo" => "loads a synthetic region and writes synthetic changes",
        _ => "writes to it",
    }
}

/// Ok when `tool` may act on `journal`: the local stack's, or the database
/// named by `allow`.
pub fn check_target(
    tool: &'static str,
    journal: &PgEndpoint,
    allow: Option<&str>,
) -> Result<(), Refused> {
    if journal.local || allow == Some(journal.database.as_str()) {
        return Ok(());
    }
    Err(Refused {
        tool,
        harm: harm(tool),
        database: journal.database.clone(),
        host: journal.host.clone(),
        port: journal.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::connections::{Connections, LocalServices};

    #[test]
    fn an_external_journal_is_refused_unless_named() {
        let mut cfg = Config::default();
        cfg.journal.host = Some("journal.region.example".into());
        let local = LocalServices {
            postgres: Some(("127.0.0.1".into(), 5999, "vitrina".into())),
            kafka: None,
        };
        let c = Connections::resolve(&cfg, &local);
        let e = check_target("generate", c.journal().unwrap(), None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("journal.region.example:5432"), "{text}");
        assert!(text.contains("--allow-database journal"), "{text}");
        assert!(check_target("generate", c.journal().unwrap(), Some("other")).is_err());
        assert!(check_target("generate", c.journal().unwrap(), Some("journal")).is_ok());
        let local_cfg = Config::default();
        let c = Connections::resolve(&local_cfg, &local);
        assert!(check_target("workload", c.journal().unwrap(), None).is_ok());
    }
}
