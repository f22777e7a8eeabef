//! The showcase schema and order-safe, idempotent batch apply, against the
//! real PostgreSQL.

mod common;

use vitrina::events::{contract, Event, Op, Source, Val};
use vitrina::showcase::{self, apply::apply_batch};

fn subject(key: i64, name: &str, commit_lsn: u64, lsn: u64, op: Op) -> Event {
    Event {
        event_id: vitrina::events::change_event_id(commit_lsn, lsn, "journal.subjects"),
        entity: contract::entity("subject").unwrap(),
        op,
        key: key.to_string(),
        source: Source {
            lsn,
            commit_lsn,
            txid: 1,
            commit_time_micros: 1_700_000_000_000_000 + commit_lsn as i64,
            table: "journal.subjects".into(),
            snapshot: false,
        },
        actor: None,
        quality: vec![],
        after: (!matches!(op, Op::Delete | Op::Truncate)).then(|| {
            vec![
                Val::Long(key),
                Val::Str(format!("S{key}")),
                Val::Str(name.into()),
                Val::Bool(false),
            ]
        }),
    }
}

async fn rows(c: &tokio_postgres::Client) -> Vec<(String, Option<String>, bool, i64)> {
    c.query(
        "SELECT key, name, deleted, source_commit_lsn FROM showcase.subject ORDER BY key",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn schema_applies_twice_and_holds_no_names() {
    let cfg = common::fresh_db("t_show_schema").await;
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c).await.unwrap();
    showcase::migrate(&c).await.unwrap();
    let cols: Vec<String> = c
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'showcase'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for forbidden in [
        "last_name",
        "first_name",
        "middle_name",
        "snils",
        "passport_number",
        "address",
    ] {
        assert!(
            !cols.iter().any(|c| c == forbidden),
            "showcase has column {forbidden}"
        );
    }
    for needed in ["snils_hash", "source_commit_lsn", "source_commit_time"] {
        assert!(cols.iter().any(|c| c == needed), "showcase lacks {needed}");
    }
}

#[tokio::test]
async fn apply_is_order_safe_idempotent_and_commits_offsets_with_rows() {
    let cfg = common::fresh_db("t_show_apply").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c).await.unwrap();

    let batch = vec![
        subject(1, "Математика", 100, 101, Op::Create),
        subject(1, "Алгебра", 200, 201, Op::Update),
        subject(2, "Физика", 100, 102, Op::Create),
        subject(3, "Химия", 100, 103, Op::Create),
        subject(3, "", 300, 301, Op::Delete),
    ];
    let a = apply_batch(&mut c, &batch, &[("t".into(), 0, 5)])
        .await
        .unwrap();
    assert_eq!(a.written, 3);
    let first = rows(&c).await;
    assert_eq!(first[0], ("1".into(), Some("Алгебра".into()), false, 200));
    assert!(first[2].2, "a delete leaves a tombstone");

    // The same batch again, and the old events in another order: nothing changes.
    let again = apply_batch(&mut c, &batch, &[("t".into(), 0, 5)])
        .await
        .unwrap();
    assert_eq!(again.written, 0);
    let mut reversed = batch.clone();
    reversed.reverse();
    for e in reversed {
        apply_batch(&mut c, &[e], &[]).await.unwrap();
    }
    assert_eq!(
        rows(&c).await,
        first,
        "replays and reordering leave the showcase as it was"
    );

    // A truncate tombstones older rows; a newer event revives its key.
    apply_batch(
        &mut c,
        &[
            subject(0, "", 400, 0, Op::Truncate),
            subject(2, "Астрономия", 500, 501, Op::Update),
        ],
        &[("t".into(), 0, 7)],
    )
    .await
    .unwrap();
    let after = rows(&c).await;
    assert!(
        after[0].2 && !after[1].2 && after[1].1.as_deref() == Some("Астрономия"),
        "{after:?}"
    );
    let next: i64 = c
        .query_one(
            "SELECT next_offset FROM showcase.consumer_offsets WHERE topic = 't' AND partition = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 7);
}
