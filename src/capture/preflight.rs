//! Checks before capture streams: logical WAL, privileges, mapped tables,
//! their replica identity, the publication and the slot. Every failure says
//! what to do, and all of them run before capture changes anything (the
//! publication is created only after every table passed).
//!
//! Replica identity, per mapped table (per leaf partition of a partitioned
//! one):
//! - none (no primary key, or `REPLICA IDENTITY NOTHING`): once published,
//!   the journal's own UPDATE and DELETE on it fail. Refused.
//! - the entity key or the Kafka partition column (`partition_by`) not in
//!   it: a delete would arrive without them, unmappable or on another
//!   partition than the row's other changes. Refused.
//! - not FULL while mapped columns can be TOASTed: an UPDATE that leaves
//!   such a value unchanged arrives without it, and capture can take it
//!   only from a FULL old row. Warned.

use tokio_postgres::Client;

use super::mapping::Mapping;
use super::CaptureError;
use crate::pg::PgError;

/// A slot as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotNow {
    /// Held by a process.
    pub held: bool,
    /// Held by a walsender that streams (one still creating the slot also
    /// holds it, before capture's initial load has begun).
    pub streaming: bool,
    pub confirmed_flush: Option<u64>,
}

/// `slot` now, or None when it does not exist.
pub async fn slot_now(client: &Client, slot: &str) -> Result<Option<SlotNow>, PgError> {
    Ok(client
        .query_opt(
            "SELECT r.active, r.active AND coalesce(s.state IN ('catchup', 'streaming'), false),
                    r.confirmed_flush_lsn::text
               FROM pg_replication_slots r LEFT JOIN pg_stat_replication s ON s.pid = r.active_pid
              WHERE r.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(PgError::query("reading pg_replication_slots"))?
        .map(|r| SlotNow {
            held: r.get(0),
            streaming: r.get(1),
            confirmed_flush: r
                .get::<_, Option<String>>(2)
                .as_deref()
                .and_then(crate::lsn::parse),
        }))
}

/// What preflight learned about the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Absent,
    /// Exists, invalidated by `max_slot_wal_keep_size` (`wal_status` lost):
    /// its changes are gone.
    Invalidated,
    /// Exists and is free; `confirmed_flush` as a u64 LSN.
    Ready {
        confirmed_flush: u64,
    },
}

/// Mapped columns that the journal lacks, per table (capture still runs;
/// rows of those tables are dead-lettered with the reason).
pub type MissingColumns = Vec<(String, Vec<String>)>;

pub async fn check(
    client: &Client,
    mapping: &Mapping,
    slot: &str,
    publication: &str,
) -> Result<(SlotState, MissingColumns), CaptureError> {
    let user = check_server(client).await?;
    let (missing_columns, partitioned) = check_tables(client, mapping, &user).await?;
    check_publication(client, mapping, publication, &user, partitioned).await?;
    let state = check_slot(client, slot).await?;
    Ok((state, missing_columns))
}

fn q(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    PgError::query(what)
}

/// `wal_level = logical`, and a role that may replicate: the role's name.
async fn check_server(client: &Client) -> Result<String, CaptureError> {
    let wal: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(q("reading wal_level"))?
        .get(0);
    if wal != "logical" {
        return Err(CaptureError::WalLevel(wal));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(q("reading role attributes"))?;
    let (user, can_replicate): (String, bool) = (row.get(0), row.get(1));
    if !can_replicate {
        return Err(CaptureError::Privilege {
            user: user.clone(),
            hint: format!("ALTER ROLE {user} REPLICATION; and GRANT SELECT on the mapped tables"),
        });
    }
    Ok(user)
}

/// Every mapped table exists, may be read, and has a replica identity
/// capture can work with: the mapped columns it lacks, and the tables that
/// are partitioned.
async fn check_tables(
    client: &Client,
    mapping: &Mapping,
    user: &str,
) -> Result<(MissingColumns, Vec<String>), CaptureError> {
    let mut missing_columns = Vec::new();
    let mut partitioned = Vec::new();
    let mut toast_prone = Vec::new();
    for t in &mapping.tables {
        let (schema, table) = t
            .table
            .split_once('.')
            .expect("mapping validated schema.table");
        let cols: Vec<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )
            .await
            .map_err(q("reading mapped table columns"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if cols.is_empty() {
            return Err(CaptureError::MissingTable(t.table.clone()));
        }
        let missing: Vec<String> = t
            .columns()
            .iter()
            .filter(|c| !cols.contains(c))
            .cloned()
            .collect();
        if !missing.is_empty() {
            tracing::error!(table = %t.table, columns = ?missing, "mapped columns missing in the journal; rows of this table will be dead-lettered");
            missing_columns.push((t.table.clone(), missing));
        }
        let can_select: bool = client
            .query_one("SELECT has_table_privilege($1, 'SELECT')", &[&t.table])
            .await
            .map_err(q("checking SELECT privilege"))?
            .get(0);
        if !can_select {
            return Err(CaptureError::Privilege {
                user: user.to_string(),
                hint: format!("GRANT SELECT ON {} TO {user}", t.table),
            });
        }
        let (is_partitioned, prone) = check_identity(client, t).await?;
        if is_partitioned {
            partitioned.push(t.table.clone());
        }
        toast_prone.extend(prone);
    }
    if !toast_prone.is_empty() {
        tracing::warn!(
            tables = ?toast_prone,
            "these tables are not REPLICA IDENTITY FULL and have mapped columns that can be TOASTed: an UPDATE that leaves such a value (over about 2 kB) unchanged is dead-lettered; REPLICA IDENTITY FULL lets capture take it from the old row"
        );
    }

    Ok((missing_columns, partitioned))
}

/// The publication exists (or is created) and publishes every mapped table.
async fn check_publication(
    client: &Client,
    mapping: &Mapping,
    publication: &str,
    user: &str,
    partitioned: Vec<String>,
) -> Result<(), CaptureError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(q("reading pg_publication"))?
        .is_some();
    let wanted: Vec<String> = mapping.tables.iter().map(|t| t.table.clone()).collect();
    if !exists {
        let list = wanted
            .iter()
            .map(|t| {
                let (s, n) = t.split_once('.').unwrap();
                format!("{}.{}", crate::pg::ident(s), crate::pg::ident(n))
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Changes of a partitioned table arrive under its own name, not
        // its partitions' (which no mapping names).
        let create = format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            crate::pg::ident(publication)
        );
        match client.batch_execute(&create).await {
            Ok(()) => {}
            // Capture runs with least privilege (REPLICATION and SELECT):
            // creating a publication takes the tables' owner.
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                return Err(CaptureError::Privilege {
                    user: user.to_string(),
                    hint: format!(
                        "publication `{publication}` does not exist and creating one takes the tables' owner; a DBA runs: {create};"
                    ),
                });
            }
            Err(e) => return Err(q("creating the publication")(e).into()),
        }
        tracing::info!(publication, tables = wanted.len(), "publication created");
    } else {
        let via_root: bool = client
            .query_one(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(q("reading pg_publication"))?
            .get(0);
        if !via_root && !partitioned.is_empty() {
            return Err(CaptureError::PublicationPartitions {
                publication: publication.to_string(),
                tables: partitioned,
            });
        }
        let published: Vec<String> = client
            .query(
                "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(q("reading pg_publication_tables"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let unmapped: Vec<&String> = published.iter().filter(|t| !wanted.contains(t)).collect();
        if !unmapped.is_empty() {
            tracing::warn!(publication, tables = ?unmapped, "the publication holds tables no mapping covers; their changes are decoded and ignored");
        }
        let absent: Vec<String> = wanted
            .into_iter()
            .filter(|t| !published.contains(t))
            .collect();
        if !absent.is_empty() {
            return Err(CaptureError::PublicationMissing {
                publication: publication.to_string(),
                tables: absent,
            });
        }
    }

    Ok(())
}

/// The slot: absent, or ours, free and valid.
async fn check_slot(client: &Client, slot: &str) -> Result<SlotState, CaptureError> {
    let slot_row = client
        .query_opt(
            "SELECT active_pid, wal_status, plugin::text, confirmed_flush_lsn::text, database::text, current_database()::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(q("reading pg_replication_slots"))?;
    Ok(match slot_row {
        None => SlotState::Absent,
        Some(r) => {
            let active: Option<i32> = r.get(0);
            let wal_status: Option<String> = r.get(1);
            let plugin: Option<String> = r.get(2);
            let flush: Option<String> = r.get(3);
            let (db, here): (Option<String>, String) = (r.get(4), r.get(5));
            if let Some(pid) = active {
                return Err(CaptureError::SlotActive {
                    slot: slot.to_string(),
                    pid,
                });
            }
            if wal_status.as_deref() == Some("lost") {
                return Ok(SlotState::Invalidated);
            }
            if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(here.as_str()) {
                return Err(CaptureError::SlotForeign {
                    slot: slot.to_string(),
                    plugin: plugin.unwrap_or_default(),
                    database: db.unwrap_or_default(),
                });
            }
            SlotState::Ready {
                confirmed_flush: flush.as_deref().and_then(crate::lsn::parse).unwrap_or(0),
            }
        }
    })
}

/// Checks `t`'s replica identity (see the module's header); returns whether
/// `t` is partitioned, and its leaves that are not FULL while mapped
/// columns can be TOASTed.
async fn check_identity(
    client: &Client,
    t: &super::mapping::TableMapping,
) -> Result<(bool, Vec<String>), CaptureError> {
    let leaves = client
        .query(
            "SELECT c.oid::regclass::text, c.relreplident::text,
                    coalesce((SELECT array_agg(a.attname::text)
                                FROM pg_index i
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
                               WHERE i.indrelid = c.oid
                                 AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                                         WHEN 'i' THEN i.indisreplident
                                                         ELSE false END), '{}'),
                    (SELECT relkind = 'p' FROM pg_class WHERE oid = $1::text::regclass)
               FROM pg_class c
              WHERE c.oid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE isleaf
                              UNION
                              SELECT oid FROM pg_class WHERE oid = $1::text::regclass AND relkind <> 'p')",
            &[&t.table],
        )
        .await
        .map_err(q("reading the replica identity of mapped tables"))?;
    let mut partitioned = false;
    let mut toast_prone = Vec::new();
    for r in &leaves {
        let (leaf, ident, cols): (String, String, Vec<String>) = (r.get(0), r.get(1), r.get(2));
        partitioned = r.get(3);
        let full = ident == "f";
        let fix = format!("ALTER TABLE {leaf} REPLICA IDENTITY FULL");
        if !full && cols.is_empty() {
            return Err(CaptureError::ReplicaIdentity {
                table: leaf,
                problem: "has no replica identity (no primary key, or REPLICA IDENTITY NOTHING): once published, the journal's own UPDATE and DELETE on it would fail".into(),
                hint: format!("give it a primary key, or run {fix}; capture changed nothing"),
            });
        }
        let lacking: Vec<&String> = t
            .key
            .iter()
            .chain(t.partition_by.iter())
            .filter(|c| !full && !cols.contains(c))
            .collect();
        if !lacking.is_empty() {
            return Err(CaptureError::ReplicaIdentity {
                table: leaf,
                problem: format!(
                    "has a replica identity of ({}) without {lacking:?}: its deletes would arrive without the entity key or the Kafka partition column (partition_by), and travel on another partition than the row's other changes",
                    cols.join(", ")
                ),
                hint: format!("{fix} (or a unique index over the key and the partition column as its REPLICA IDENTITY USING INDEX); capture changed nothing"),
            });
        }
        if !full {
            let wanted = t.columns();
            let toastable = client
                .query_one(
                    "SELECT count(*) FROM pg_attribute
                      WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
                        AND attstorage <> 'p' AND attname::text = ANY($2)",
                    &[&leaf, &wanted],
                )
                .await
                .map_err(q("reading the storage of mapped columns"))?
                .get::<_, i64>(0);
            if toastable > 0 {
                toast_prone.push(leaf);
            }
        }
    }
    Ok((partitioned, toast_prone))
}
