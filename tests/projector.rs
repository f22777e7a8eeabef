//! The projector against real PostgreSQL and broker: after a live workload
//! through capture and projector the showcase equals the journal under the
//! same mapping, also when the projector is killed with SIGKILL at random
//! moments; freshness is truthful.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use vitrina::events::{contract::ENTITIES, Ty, Val};
use vitrina::region::{load, RegionSpec};

type State = BTreeMap<(String, String), Vec<Val>>;

async fn showcase_state(cfg: &tokio_postgres::Config) -> State {
    let c = vitrina::pg::connect(cfg).await.unwrap();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let mut out = State::new();
    for e in ENTITIES {
        let cols: Vec<&str> = e.fields.iter().map(|f| f.name).collect();
        let sql = format!(
            "SELECT key, {} FROM showcase.{} WHERE NOT deleted",
            cols.join(", "),
            e.name
        );
        for r in c.query(&sql, &[]).await.unwrap() {
            let mut vals = Vec::new();
            for (i, f) in e.fields.iter().enumerate() {
                let j = i + 1;
                let v = match f.ty {
                    Ty::Long => r.get::<_, Option<i64>>(j).map(Val::Long),
                    Ty::Int => r.get::<_, Option<i32>>(j).map(Val::Int),
                    Ty::Double => r.get::<_, Option<f64>>(j).map(Val::Double),
                    Ty::Bool => r.get::<_, Option<bool>>(j).map(Val::Bool),
                    Ty::Str => r.get::<_, Option<String>>(j).map(Val::Str),
                    Ty::Date => r
                        .get::<_, Option<NaiveDate>>(j)
                        .map(|d| Val::Date((d - epoch).num_days() as i32)),
                    Ty::Timestamp => r
                        .get::<_, Option<DateTime<Utc>>>(j)
                        .map(|t| Val::Timestamp(t.timestamp_micros())),
                    Ty::Time => r.get::<_, Option<NaiveTime>>(j).map(|t| {
                        Val::Time(
                            t.num_seconds_from_midnight() as i64 * 1_000_000
                                + (t.nanosecond() / 1000) as i64,
                        )
                    }),
                };
                vals.push(v.unwrap_or(Val::Null));
            }
            out.insert((e.name.to_string(), r.get(0)), vals);
        }
    }
    out
}

/// Waits until the projector's stored offsets reach the end of every topic.
async fn wait_projected(showcase: &tokio_postgres::Config, prefix: &str, timeout: Duration) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::stack().brokers())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut ends = Vec::new();
    for t in md.topics().iter().filter(|t| {
        t.name().starts_with(&format!("{prefix}.")) && !t.name().ends_with("deadletter.v1")
    }) {
        for p in t.partitions() {
            let (_, hi) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .unwrap();
            ends.push((t.name().to_string(), p.id(), hi));
        }
    }
    let c = vitrina::pg::connect(showcase).await.unwrap();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut behind = 0;
        for (t, p, hi) in &ends {
            let at: Option<i64> = c
                .query_opt("SELECT next_offset FROM showcase.consumer_offsets WHERE topic = $1 AND partition = $2", &[t, p])
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            if at.unwrap_or(0) < *hi {
                behind += 1;
            }
        }
        if behind == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{behind} partitions not projected in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The journal's state as the showcase may show it: medical detail (the
/// reason of an illness mark, an exemption's diagnosis and PE group) only
/// for students with a granted medical-data consent, computed here straight
/// from the journal tables.
async fn under_consent(cfg: &tokio_postgres::Config, mut state: State) -> State {
    let c = vitrina::pg::connect(cfg).await.unwrap();
    let consenting: std::collections::HashSet<i64> = c
        .query(
            "SELECT DISTINCT student_id FROM journal.parental_consents
              WHERE kind = 'medical_data_transfer' AND status = 'granted'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let index = |entity: &str, field: &str| {
        vitrina::events::contract::entity(entity)
            .unwrap()
            .fields
            .iter()
            .position(|f| f.name == field)
            .unwrap()
    };
    let mut redacted = 0;
    for ((entity, _), vals) in state.iter_mut() {
        let hidden: &[&str] = match entity.as_str() {
            "attendance" if vals[index("attendance", "code")] == Val::Str("Б".into()) => {
                &["reason"]
            }
            "medical_exemption" => &["diagnosis_group", "pe_group"],
            _ => continue,
        };
        let Val::Long(student) = vals[index(entity, "student_id")] else {
            continue;
        };
        if consenting.contains(&student) {
            continue;
        }
        for f in hidden {
            let i = index(entity, f);
            if vals[i] != Val::Null {
                vals[i] = Val::Null;
                redacted += 1;
            }
        }
    }
    assert!(
        redacted > 0,
        "the region has medical detail without consent"
    );
    state
}

async fn freshness(c: &tokio_postgres::Client) -> (f64, String) {
    let r = c
        .query_one("SELECT extract(epoch FROM now() - fresh_as_of)::float8, sla_state FROM showcase.status", &[])
        .await
        .unwrap();
    (
        r.get::<_, Option<f64>>(0).unwrap_or(f64::INFINITY),
        r.get::<_, String>(1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showcase_equals_the_journal_after_a_workload_with_the_projector_killed_ten_times() {
    let cfg = common::journal_db("t_proj").await;
    let db = common::db_name(&cfg);
    let spec = RegionSpec {
        seed: 51,
        schools: 1,
        students_per_school: 40,
        history_years: 1,
        as_of: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
        invalid_identifier_share: 0.02,
    };
    load::load(&cfg, &spec, 2, false, false).await.unwrap();
    let showcase = common::fresh_db("t_proj_show").await;
    let show_db = common::db_name(&showcase);
    let name = format!("proj{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let mut projector = common::spawn_projector(&db, &name, &show_db);

    let load_task = common::spawn_workload(&cfg, 30, 200, 5);
    let mut rng = vitrina::region::rng::Rng::new(std::process::id() as u64);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.range(500, 2500) as u64)).await;
        common::kill(&mut projector, libc::SIGKILL);
        projector = common::spawn_projector(&db, &name, &show_db);
    }
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    wait_projected(&showcase, &name, Duration::from_secs(240)).await;
    common::assert_same_state(
        "showcase vs journal",
        &showcase_state(&showcase).await,
        &under_consent(&cfg, common::journal_state(&cfg).await).await,
    );

    // Freshness is truthful: near the heartbeat interval while capture runs…
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = vitrina::pg::connect(&showcase).await.unwrap();
    let (fresh, state) = freshness(&c).await;
    assert!(
        fresh < 10.0 && state == "ok",
        "freshness {fresh} s, {state}"
    );
    // …and it grows by about the time capture is stopped.
    common::kill(&mut capture, libc::SIGTERM);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (stale, _) = freshness(&c).await;
    assert!(
        stale >= fresh + 4.0,
        "freshness grows while capture is down: {fresh} → {stale}"
    );
    common::kill(&mut projector, libc::SIGTERM);
}
