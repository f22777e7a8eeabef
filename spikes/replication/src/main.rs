//! Reads one logical slot from its confirmed position up to a stop LSN with
//! one of the two crates and prints what it saw and how long it took.
//!
//! usage: replication-spike <walstream|pgwire> HOST PORT USER DB SLOT PUBLICATION STOP_LSN

use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (which, host, port, user, db, slot, publ, stop) =
        (&a[1], &a[2], a[3].parse::<u16>()?, &a[4], &a[5], &a[6], &a[7], &a[8]);
    let t0 = Instant::now();
    let (messages, changes) = match which.as_str() {
        "walstream" => walstream(host, port, user, db, slot, publ, stop).await?,
        "pgwire" => pgwire(host, port, user, db, slot, publ, stop).await?,
        other => anyhow::bail!("unknown reader {other}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    println!("{which} messages={messages} changes={changes} seconds={secs:.3} changes_per_s={:.0}", changes as f64 / secs);
    Ok(())
}

async fn walstream(host: &str, port: u16, user: &str, db: &str, slot: &str, publ: &str, stop: &str) -> anyhow::Result<(u64, u64)> {
    use pg_walstream::{EventType, LogicalReplicationStream, ReplicationError, ReplicationStreamConfig};
    let stop = pg_walstream::Lsn::from(pg_walstream::parse_lsn(stop)?);
    let cfg = ReplicationStreamConfig::builder(slot, publ)
        .with_protocol_version(1)
        .with_stop_at_lsn(stop);
    let conn = format!("postgresql://{user}@{host}:{port}/{db}?replication=database");
    let mut s = LogicalReplicationStream::new(&conn, cfg).await?;
    s.start(None).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let (mut messages, mut changes) = (0u64, 0u64);
    loop {
        match s.next_event(&cancel).await {
            Ok(ev) => {
                messages += 1;
                if matches!(ev.event_type, EventType::Insert { .. } | EventType::Update { .. } | EventType::Delete { .. }) {
                    changes += 1;
                }
            }
            Err(ReplicationError::StreamStopped(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((messages, changes))
}

async fn pgwire(host: &str, port: u16, user: &str, db: &str, slot: &str, publ: &str, stop: &str) -> anyhow::Result<(u64, u64)> {
    use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
    let cfg = ReplicationConfig::new(host, user, "", db, slot, publ)
        .with_port(port)
        .with_stop_lsn(Lsn::parse(stop)?);
    let mut c = ReplicationClient::connect(cfg).await?;
    let (mut messages, mut changes) = (0u64, 0u64);
    while let Some(ev) = c.recv().await? {
        messages += 1;
        match ev {
            // Transport only: count I/U/D by the pgoutput tag byte.
            ReplicationEvent::XLogData { data, .. } => {
                if matches!(data.first(), Some(b'I' | b'U' | b'D')) {
                    changes += 1;
                }
            }
            ReplicationEvent::StoppedAt { .. } => break,
            _ => {}
        }
    }
    Ok((messages, changes))
}
