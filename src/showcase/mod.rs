//! The showcase (витрина) schema: one table per entity of the event
//! contract, generated from it, plus the projector's bookkeeping.
//!
//! Invariants:
//! - No names and no raw identifiers: the columns are the contract's
//!   fields, which carry only depersonalized ids.
//! - Every row carries the source position (commit LSN, change LSN) and
//!   commit time of the change that produced it; a deleted row stays as a
//!   tombstone (`deleted = true`) with its position, so an older event
//!   delivered again can never bring it back.
//! - Applying an event is order-safe: a row is only replaced by an event
//!   with a higher source position ([`apply`]).

pub mod apply;
pub mod consent;
pub mod quality;

use std::collections::HashMap;

use crate::events::contract::{Entity, Ty, ENTITIES};
use crate::pg::PgError;

/// Schema holding the showcase tables readers use; a replay builds a
/// shadow schema next to it and swaps it in.
pub const SCHEMA: &str = "showcase";

/// The Kafka offsets applied to showcase `schema`, next to its rows.
pub async fn stored_offsets(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<HashMap<(String, i32), i64>, PgError> {
    Ok(client
        .query(
            &format!("SELECT topic, partition, next_offset FROM {schema}.consumer_offsets"),
            &[],
        )
        .await
        .map_err(PgError::query("reading consumer offsets"))?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Lets the showcase's readers (`projector.readers`) read `schema`: usage
/// of the schema and SELECT on its tables, never its private schema. Run
/// on the live schema at start and on a replay's shadow before the swap,
/// so readers keep their access when the shadow becomes the showcase.
pub async fn grant_readers(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    readers: &[String],
) -> Result<(), PgError> {
    for r in readers {
        let role = crate::pg::ident(r);
        client
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};"
            ))
            .await
            .map_err(PgError::query(format!(
                "granting {r} read access to schema {schema} (does the role exist?)"
            )))?;
    }
    Ok(())
}

/// The key of the advisory lock that orders apply transactions into
/// `schema` (shared) against a replay's swap (exclusive).
pub fn apply_lock_key(schema: &str) -> String {
    format!("vitrina.apply.{schema}")
}

/// The shared lock every apply transaction into `schema` takes first.
pub fn apply_lock_sql() -> &'static str {
    "SELECT pg_advisory_xact_lock_shared(hashtext('vitrina.apply.' || $1::text))"
}

/// Held by every apply transaction that writes consent, a medical entity or
/// medical detail, for its whole length (see `apply::apply_with_watermarks`).
pub fn medical_lock_sql() -> &'static str {
    "SELECT pg_advisory_xact_lock(hashtext('vitrina.medical.' || $1::text))"
}

fn sql_type(ty: Ty) -> &'static str {
    match ty {
        Ty::Long => "bigint",
        Ty::Int => "integer",
        Ty::Double => "double precision",
        Ty::Bool => "boolean",
        Ty::Str => "text",
        Ty::Date => "date",
        Ty::Timestamp => "timestamptz",
        Ty::Time => "time",
    }
}

/// `CREATE TABLE` of one entity.
pub fn table_ddl(schema: &str, e: &Entity) -> String {
    let mut cols = vec!["    key text PRIMARY KEY".to_string()];
    for f in e.fields {
        // Stored nullable: a tombstone keeps only its key and position.
        cols.push(format!("    {} {}", f.name, sql_type(f.ty)));
    }
    cols.push("    deleted boolean NOT NULL DEFAULT false".into());
    cols.push("    source_commit_lsn bigint NOT NULL".into());
    cols.push("    source_lsn bigint NOT NULL".into());
    cols.push("    source_commit_time timestamptz NOT NULL".into());
    cols.push("    event_id text NOT NULL".into());
    cols.push("    applied_at timestamptz NOT NULL DEFAULT now()".into());
    let mut out = format!(
        "CREATE TABLE IF NOT EXISTS {schema}.{} (\n{}\n);\nCOMMENT ON TABLE {schema}.{} IS {};\n",
        e.name,
        cols.join(",\n"),
        e.name,
        quote(e.doc)
    );
    // A showcase made by an earlier release gains the fields added since
    // (the contract only adds nullable fields).
    for f in e.fields {
        out.push_str(&format!(
            "ALTER TABLE {schema}.{} ADD COLUMN IF NOT EXISTS {} {};\n",
            e.name,
            f.name,
            sql_type(f.ty)
        ));
    }
    out
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The whole showcase schema `schema`: entity tables, the projector's
/// offsets, watermarks and status, and the consent-held medical detail.
pub fn ddl(schema: &str) -> String {
    let mut out = format!("CREATE SCHEMA IF NOT EXISTS {schema};\n");
    for e in ENTITIES {
        out.push_str(&table_ddl(schema, e));
    }
    out.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.consumer_offsets (
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
COMMENT ON TABLE {schema}.consumer_offsets IS 'Kafka offsets consumed, committed in the same transaction as the rows they produced.';
CREATE TABLE IF NOT EXISTS {schema}.watermarks (
    topic text NOT NULL,
    partition integer NOT NULL,
    commit_time timestamptz NOT NULL,
    commit_lsn bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
COMMENT ON TABLE {schema}.watermarks IS 'Latest capture watermark applied per partition: every journal change committed up to commit_time on that partition is in the showcase.';
CREATE TABLE IF NOT EXISTS {schema}.status (
    id integer PRIMARY KEY CHECK (id = 1),
    fresh_as_of timestamptz,
    sla_state text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {schema}.status IS 'fresh_as_of: every change committed in the journal up to this time is visible in the showcase. sla_state: ok, at_risk or breached (600 s budget).';
CREATE TABLE IF NOT EXISTS {schema}.entity_freshness (
    entity text PRIMARY KEY,
    fresh_as_of timestamptz,
    sla_state text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {schema}.entity_freshness IS 'fresh_as_of per entity: from the watermarks of that entity''s topic partitions only.';
"
    ));
    out.push_str(&consent::ddl(schema));
    out.push_str(&quality::ddl(schema));
    out
}

/// Creates the showcase schema `schema`, or brings it up to date. A
/// schema already at the current DDL is left alone without taking a lock
/// on any table (a projector may be applying to it); migrations of one
/// schema are serialized with an advisory lock.
pub async fn migrate(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), crate::pg::PgError> {
    use crate::pg::PgError;
    let version = ddl_version();
    if is_current(client, schema, &version).await? {
        return Ok(());
    }
    let lock = format!("vitrina.migrate.{schema}");
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock])
        .await
        .map_err(PgError::query("locking the showcase migration"))?;
    let result = async {
        if is_current(client, schema, &version).await? {
            return Ok(());
        }
        client
            .batch_execute(&format!(
                "BEGIN;
                 {ddl}
                 CREATE TABLE IF NOT EXISTS {schema}.schema_version (version text NOT NULL);
                 DELETE FROM {schema}.schema_version;
                 INSERT INTO {schema}.schema_version VALUES ('{version}');
                 COMMIT;",
                ddl = ddl(schema)
            ))
            .await
            .map_err(PgError::query("creating the showcase schema"))
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock])
        .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn is_current(
    c: &tokio_postgres::Client,
    schema: &str,
    version: &str,
) -> Result<bool, crate::pg::PgError> {
    let q = crate::pg::PgError::query("reading the showcase schema version");
    let present: bool = c
        .query_one(
            &format!("SELECT to_regclass('{schema}.schema_version') IS NOT NULL"),
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    if !present {
        return Ok(false);
    }
    Ok(c.query_one(
        &format!("SELECT EXISTS (SELECT 1 FROM {schema}.schema_version WHERE version = $1)"),
        &[&version],
    )
    .await
    .map_err(crate::pg::PgError::query(
        "reading the showcase schema version",
    ))?
    .get(0))
}

/// A fingerprint of the DDL (FNV-1a over the schema-independent text).
pub fn ddl_version() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ddl("{schema}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
