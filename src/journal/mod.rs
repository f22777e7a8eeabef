//! The reference regional journal: the source database vitrina captures from
//! in demos, tests and benchmarks. A real region's journal is its own; vitrina
//! only reads it. This module owns the reference schema's migrations.
//!
//! Invariants:
//! - Migrations are applied in order, each in its own transaction, under an
//!   advisory lock, so two concurrent `migrate` calls do not race.
//! - An applied migration is recorded with a checksum; a migration file that
//!   changed after it was applied is an error, never re-run.
//! - Applying twice changes nothing.

use tokio_postgres::Client;

use crate::pg::PgError;

/// Schema holding the reference journal's tables.
pub const SCHEMA: &str = "journal";

/// One embedded migration.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The reference journal's migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "reference_journal",
        sql: include_str!("../../migrations/journal/0001_reference_journal.sql"),
    },
    Migration {
        version: 2,
        name: "replica_identity",
        sql: include_str!("../../migrations/journal/0002_replica_identity.sql"),
    },
    Migration {
        version: 3,
        name: "organization_registry",
        sql: include_str!("../../migrations/journal/0003_organization_registry.sql"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("journal migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {current} in this build)\nhint: migrations are append-only; add a new migration instead of editing an applied one")]
    Changed {
        version: i32,
        name: String,
        applied: String,
        current: String,
    },
}

/// FNV-1a 64-bit: a stable checksum of migration text (not for security).
pub fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Applies the pending migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS journal;
             CREATE TABLE IF NOT EXISTS journal.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(PgError::query("creating journal.schema_migrations"))?;
    let mut applied_now = Vec::new();
    for m in MIGRATIONS {
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("starting a migration transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock(7101)", &[])
            .await
            .map_err(PgError::query("taking the migration lock"))?;
        let row = tx
            .query_opt(
                "SELECT checksum FROM journal.schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await
            .map_err(PgError::query("reading journal.schema_migrations"))?;
        let current = checksum(m.sql);
        if let Some(row) = row {
            let applied: String = row.get(0);
            if applied != current {
                return Err(MigrateError::Changed {
                    version: m.version,
                    name: m.name.to_string(),
                    applied,
                    current,
                });
            }
            continue;
        }
        tx.batch_execute(m.sql)
            .await
            .map_err(PgError::query(format!(
                "applying journal migration {} ({})",
                m.version, m.name
            )))?;
        tx.execute(
            "INSERT INTO journal.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &current],
        )
        .await
        .map_err(PgError::query("recording the migration"))?;
        tx.commit()
            .await
            .map_err(PgError::query("committing the migration"))?;
        applied_now.push(m.version);
    }
    Ok(applied_now)
}
