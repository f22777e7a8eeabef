//! The showcase schema and order-safe, idempotent batch apply, against the
//! real PostgreSQL.

mod common;

use vitrina::events::Detail;
use vitrina::events::{contract, Event, Op, Source, Val};
use vitrina::showcase::apply::{apply_with_watermarks, DetailChange};
use vitrina::showcase::{self, apply::apply_batch};

fn subject(key: i64, name: &str, commit_lsn: u64, lsn: u64, op: Op) -> Event {
    Event {
        event_id: vitrina::events::change_event_id(commit_lsn, lsn, 0, "journal.subjects"),
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
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
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
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();

    let batch = vec![
        subject(1, "Математика", 100, 101, Op::Create),
        subject(1, "Алгебра", 200, 201, Op::Update),
        subject(2, "Физика", 100, 102, Op::Create),
        subject(3, "Химия", 100, 103, Op::Create),
        subject(3, "", 300, 301, Op::Delete),
    ];
    let a = apply_batch(&mut c, showcase::SCHEMA, &batch, &[("t".into(), 0, 5)])
        .await
        .unwrap();
    assert_eq!(a.written, 3);
    let first = rows(&c).await;
    assert_eq!(first[0], ("1".into(), Some("Алгебра".into()), false, 200));
    assert!(first[2].2, "a delete leaves a tombstone");

    // The same batch again, and the old events in another order: nothing changes.
    let again = apply_batch(&mut c, showcase::SCHEMA, &batch, &[("t".into(), 0, 5)])
        .await
        .unwrap();
    assert_eq!(again.written, 0);
    let mut reversed = batch.clone();
    reversed.reverse();
    for e in reversed {
        apply_batch(&mut c, showcase::SCHEMA, &[e], &[])
            .await
            .unwrap();
    }
    assert_eq!(
        rows(&c).await,
        first,
        "replays and reordering leave the showcase as it was"
    );

    // A truncate tombstones older rows; a newer event revives its key.
    apply_batch(
        &mut c,
        showcase::SCHEMA,
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

/// An event of `entity` with the named fields set (others null).
fn event(entity: &str, key: i64, commit_lsn: u64, fields: &[(&str, Val)]) -> Event {
    let e = contract::entity(entity).unwrap();
    let mut after = vec![Val::Null; e.fields.len()];
    after[0] = Val::Long(key);
    for (name, v) in fields {
        let i = e.fields.iter().position(|f| f.name == *name).unwrap();
        after[i] = v.clone();
    }
    let table = format!("journal.{entity}");
    Event {
        event_id: vitrina::events::change_event_id(commit_lsn, commit_lsn, 0, &table),
        entity: e,
        op: Op::Update,
        key: key.to_string(),
        source: Source {
            lsn: commit_lsn,
            commit_lsn,
            txid: 1,
            commit_time_micros: 1_700_000_000_000_000 + commit_lsn as i64,
            table,
            snapshot: false,
        },
        actor: None,
        quality: vec![],
        after: Some(after),
    }
}

/// An attendance mark as capture publishes it: the reason of an illness
/// (Б) is not on the general topic; other reasons are.
fn ill(key: i64, student: i64, lsn: u64, code: &str) -> Event {
    let mut fields = vec![
        ("student_id", Val::Long(student)),
        ("code", Val::Str(code.into())),
    ];
    if code != "Б" {
        fields.push(("reason", Val::Str("соревнования".into())));
    }
    event("attendance", key, lsn, &fields)
}

/// The next offset on the restricted topic: records arrive in offset order.
fn next_offset() -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// The restricted topic's record of an illness mark's reason.
fn detail(key: i64, student: i64, lsn: u64) -> DetailChange {
    DetailChange::Keep(
        Detail {
            entity: contract::entity("attendance").unwrap(),
            key: key.to_string(),
            student_id: Some(student),
            fields: vitrina::events::schema::medical_fields()
                .iter()
                .map(|f| (*f, (*f == "reason").then(|| "ОРВИ".to_string())))
                .collect(),
            commit_lsn: lsn,
            lsn,
            commit_time_micros: 1_700_000_000_000_000,
        },
        next_offset(),
    )
}

fn erase(key: i64) -> DetailChange {
    DetailChange::Erase {
        entity: "attendance".into(),
        key: key.to_string(),
        offset: next_offset(),
    }
}

async fn apply(c: &mut tokio_postgres::Client, events: &[Event], details: &[DetailChange]) {
    apply_with_watermarks(c, showcase::SCHEMA, events, details, &[], &[])
        .await
        .unwrap();
}

fn consent(key: i64, student: i64, lsn: u64, status: &str) -> Event {
    event(
        "consent",
        key,
        lsn,
        &[
            ("student_id", Val::Long(student)),
            ("kind", Val::Str("medical_data_transfer".into())),
            ("status", Val::Str(status.into())),
        ],
    )
}

async fn reasons(c: &tokio_postgres::Client) -> Vec<(String, Option<String>)> {
    c.query(
        "SELECT key, reason FROM showcase.attendance ORDER BY key",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn medical_detail_shows_only_under_consent_whatever_the_arrival_order() {
    let cfg = common::fresh_db("t_show_consent").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
    let shown = |k: &str, r: Option<&str>| (k.to_string(), r.map(String::from));

    // An illness of student 7 and an absence: the absence's reason shows,
    // the illness has none (the general topic carries none).
    apply(&mut c, &[ill(1, 7, 100, "Б"), ill(2, 7, 101, "Н")], &[]).await;
    assert_eq!(
        reasons(&c).await,
        vec![shown("1", None), shown("2", Some("соревнования"))]
    );
    // The detail arrives before the consent row does (another topic):
    // held, not shown.
    apply(&mut c, &[], &[detail(1, 7, 100)]).await;
    assert_eq!(reasons(&c).await[0], shown("1", None));
    // The consent arrives: the detail appears.
    apply(&mut c, &[consent(50, 7, 90, "granted")], &[]).await;
    assert_eq!(reasons(&c).await[0], shown("1", Some("ОРВИ")));
    // A new illness whose detail comes first, then its mark: shown.
    apply(&mut c, &[], &[detail(3, 7, 110)]).await;
    apply(&mut c, &[ill(3, 7, 110, "Б")], &[]).await;
    assert_eq!(reasons(&c).await[2], shown("3", Some("ОРВИ")));
    // Revocation redacts at once; the tombstones that follow erase the
    // held detail.
    apply(&mut c, &[consent(50, 7, 120, "revoked")], &[]).await;
    assert_eq!(
        reasons(&c).await,
        vec![
            shown("1", None),
            shown("2", Some("соревнования")),
            shown("3", None)
        ]
    );
    apply(&mut c, &[], &[erase(1), erase(3)]).await;
    let held: Vec<String> = common::column(
        &c,
        "SELECT key FROM showcase_private.attendance_medical WHERE reason IS NOT NULL ORDER BY key",
    )
    .await;
    assert!(held.is_empty(), "erased: {held:?}");
    // An older "granted" delivered again does not bring anything back.
    apply(&mut c, &[consent(50, 7, 90, "granted")], &[]).await;
    assert_eq!(reasons(&c).await[0], shown("1", None));
    // A new consent: capture publishes the detail again; it shows.
    apply(
        &mut c,
        &[consent(50, 7, 200, "granted")],
        &[detail(1, 7, 200), detail(3, 7, 200)],
    )
    .await;
    assert_eq!(reasons(&c).await[0], shown("1", Some("ОРВИ")));
    assert_eq!(reasons(&c).await[2], shown("3", Some("ОРВИ")));
    // Another student's consent changes nothing for student 7; a consent
    // deleted from the journal redacts like a revocation.
    apply(
        &mut c,
        &[consent(51, 8, 230, "granted"), ill(4, 8, 231, "Б")],
        &[detail(4, 8, 231)],
    )
    .await;
    assert_eq!(reasons(&c).await[3], shown("4", Some("ОРВИ")));
    let mut gone = consent(51, 8, 240, "granted");
    gone.op = Op::Delete;
    gone.after = None;
    apply(&mut c, &[gone], &[]).await;
    assert_eq!(reasons(&c).await[3], shown("4", None));
    assert_eq!(reasons(&c).await[0], shown("1", Some("ОРВИ")));
    // Within one batch the last record of a key wins.
    let before = detail(1, 7, 300);
    apply(&mut c, &[], &[before.clone(), erase(1)]).await;
    assert_eq!(reasons(&c).await[0], shown("1", None));
    // The detail record read again (a group member that took the partition
    // over from an older position, a restart) does not undo its tombstone.
    apply(&mut c, &[], &[before]).await;
    assert_eq!(
        reasons(&c).await[0],
        shown("1", None),
        "erased detail came back"
    );
    let held: Vec<String> = common::column(
        &c,
        "SELECT key FROM showcase_private.attendance_medical WHERE key = '1' AND reason IS NOT NULL",
    )
    .await;
    assert!(held.is_empty(), "erased detail held again: {held:?}");
}

/// Waits until some other backend of `c`'s database waits on a lock of
/// `kind` (`advisory`, `transactionid`).
async fn wait_for_a_waiter(c: &tokio_postgres::Client, kind: &str) {
    for _ in 0..200 {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = $1",
                &[&kind],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no backend waits on a {kind} lock");
}

/// Two apply transactions touching medical detail (two group members, or
/// the detail and the rows of one student on different partitions) run one
/// after the other; a batch without medical entities does not wait.
#[tokio::test]
async fn medical_detail_transactions_are_serialized_across_connections() {
    let cfg = common::fresh_db("t_show_medlock").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
    let mut holder = vitrina::pg::connect(&cfg).await.unwrap();
    let mut other = vitrina::pg::connect(&cfg).await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(showcase::medical_lock_sql(), &[&showcase::SCHEMA])
        .await
        .unwrap();
    // A grade batch goes on while the lock is held.
    apply(
        &mut other,
        &[event("grade", 1, 10, &[("student_id", Val::Long(7))])],
        &[],
    )
    .await;
    // An attendance batch waits for it.
    let waiting = tokio::spawn(async move {
        apply(&mut other, &[ill(1, 7, 20, "Б")], &[detail(1, 7, 20)]).await;
        other
    });
    wait_for_a_waiter(&c, "advisory").await;
    assert!(!waiting.is_finished());
    tx.commit().await.unwrap();
    waiting.await.unwrap();
    apply(&mut c, &[consent(50, 7, 30, "granted")], &[]).await;
    assert_eq!(reasons(&c).await, vec![("1".into(), Some("ОРВИ".into()))]);
}

/// A recomputation of shown detail that meets a row another transaction
/// has just changed (an illness mark turned into an excused absence with
/// its own reason) leaves the new row as it is.
#[tokio::test]
async fn a_detail_recomputation_leaves_a_row_changed_under_it_alone() {
    let cfg = common::fresh_db("t_show_epq").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
    apply(
        &mut c,
        &[consent(50, 7, 90, "granted"), ill(1, 7, 100, "Б")],
        &[detail(1, 7, 100)],
    )
    .await;
    assert_eq!(reasons(&c).await, vec![("1".into(), Some("ОРВИ".into()))]);
    // Another writer changes the row and has not committed yet.
    let mut writer = vitrina::pg::connect(&cfg).await.unwrap();
    let tx = writer.transaction().await.unwrap();
    tx.execute(
        "UPDATE showcase.attendance SET code = 'У', reason = 'соревнования', source_commit_lsn = 200, source_lsn = 200 WHERE key = '1'",
        &[],
    )
    .await
    .unwrap();
    // New detail for the row: its recomputation waits for the writer's row.
    let (mut newer, at) = match detail(1, 7, 150) {
        DetailChange::Keep(d, at) => (d, at),
        DetailChange::Erase { .. } => unreachable!(),
    };
    for (f, v) in newer.fields.iter_mut() {
        if *f == "reason" {
            *v = Some("грипп".into());
        }
    }
    let mut second = vitrina::pg::connect(&cfg).await.unwrap();
    let recompute = tokio::spawn(async move {
        apply(&mut second, &[], &[DetailChange::Keep(newer, at)]).await;
    });
    wait_for_a_waiter(&c, "transactionid").await;
    tx.commit().await.unwrap();
    recompute.await.unwrap();
    let row: (String, Option<String>) = {
        let r = c
            .query_one(
                "SELECT code, reason FROM showcase.attendance WHERE key = '1'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(row, ("У".into(), Some("соревнования".into())));
}

fn finding<'a>(
    r: &'a vitrina::showcase::quality::QualityReport,
    check: &str,
) -> &'a vitrina::showcase::quality::Finding {
    r.findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no check {check}"))
}

#[tokio::test]
async fn quality_checks_find_each_kind_of_fault_and_hold_late_references_as_pending() {
    use vitrina::showcase::quality;
    let cfg = common::fresh_db("t_show_quality").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
    let s = showcase::SCHEMA;
    let d = |day: i32| Val::Date(day);
    let grade = |key: i64, student: i64, lesson: i64, mark: Val, lsn: u64| {
        event(
            "grade",
            key,
            lsn,
            &[
                ("student_id", Val::Long(student)),
                ("lesson_id", Val::Long(lesson)),
                ("class_id", Val::Long(1)),
                ("subject_id", Val::Long(1)),
                ("teacher_id", Val::Long(1)),
                ("kind", Val::Str("current".into())),
                ("mark", mark),
                ("weight", Val::Double(1.0)),
                ("created_at", Val::Timestamp(0)),
                ("updated_at", Val::Timestamp(0)),
            ],
        )
    };
    // Grades for student 10 and lesson 20 arrive before either exists;
    // one mark is off the scale, one grade has no kind.
    let mut no_kind = grade(3, 10, 20, Val::Int(4), 103);
    no_kind.after.as_mut().unwrap()[6] = Val::Null;
    apply_batch(
        &mut c,
        s,
        &[
            grade(1, 10, 20, Val::Int(5), 101),
            grade(2, 10, 20, Val::Int(7), 102),
            no_kind,
        ],
        &[],
    )
    .await
    .unwrap();
    let r = quality::run(&c, s, 600).await.unwrap();
    assert_eq!(finding(&r, "grade_mark_out_of_scale").violations, 1);
    assert_eq!(finding(&r, "grade_required_fields").violations, 1);
    let by_student = finding(&r, "grade_student_id");
    assert_eq!(
        (by_student.violations, by_student.pending),
        (0, 3),
        "late, not lost"
    );
    // With no grace, the same references are violations.
    let strict = quality::run(&c, s, 0).await.unwrap();
    assert_eq!(finding(&strict, "grade_student_id").violations, 3);

    // The student and the lesson arrive: resolved. The lesson is then
    // deleted: attendance for it is inconsistent.
    let student = event("student", 10, 200, &[("sex", Val::Str("F".into()))]);
    let lesson = event("lesson", 20, 201, &[("class_id", Val::Long(1))]);
    let mark = event(
        "attendance",
        30,
        202,
        &[
            ("student_id", Val::Long(10)),
            ("lesson_id", Val::Long(20)),
            ("code", Val::Str("Н".into())),
        ],
    );
    apply_batch(&mut c, s, &[student, lesson, mark], &[])
        .await
        .unwrap();
    let r = quality::run(&c, s, 0).await.unwrap();
    assert_eq!(
        (
            finding(&r, "grade_student_id").violations,
            finding(&r, "grade_student_id").pending
        ),
        (0, 0),
        "resolved when the student arrived"
    );
    assert_eq!(finding(&r, "grade_lesson_id").violations, 0);
    let mut gone = event("lesson", 20, 300, &[]);
    gone.op = Op::Delete;
    gone.after = None;
    apply_batch(&mut c, s, &[gone], &[]).await.unwrap();
    let r = quality::run(&c, s, 0).await.unwrap();
    assert_eq!(finding(&r, "attendance_for_deleted_lesson").violations, 1);

    // Two classes of one school in one year at once; a transfer that
    // leaves the first class is fine.
    let class = |key: i64| {
        event(
            "class",
            key,
            400 + key as u64,
            &[
                ("organization_id", Val::Long(1)),
                ("academic_year", Val::Int(2026)),
            ],
        )
    };
    let order = |key: i64, from: Option<i64>, to: i64, lsn: u64| {
        let mut f = vec![
            ("student_id", Val::Long(10)),
            ("to_class_id", Val::Long(to)),
            ("effective_date", d(20_300)),
        ];
        if let Some(from) = from {
            f.push(("from_class_id", Val::Long(from)));
        }
        event("enrolment_order", key, lsn, &f)
    };
    apply_batch(
        &mut c,
        s,
        &[
            class(41),
            class(42),
            order(51, None, 41, 500),
            order(52, None, 42, 501),
        ],
        &[],
    )
    .await
    .unwrap();
    let r = quality::run(&c, s, 0).await.unwrap();
    assert_eq!(finding(&r, "student_in_two_classes").violations, 1);
    apply_batch(&mut c, s, &[order(52, Some(41), 42, 600)], &[])
        .await
        .unwrap();
    let r = quality::run(&c, s, 0).await.unwrap();
    assert_eq!(finding(&r, "student_in_two_classes").violations, 0);
    // Results are kept in the showcase for readers.
    let kept: i64 = c
        .query_one("SELECT count(*) FROM showcase.quality", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept as usize, r.findings.len());
}

/// A transaction committing exactly at a snapshot's consistent point S is
/// streamed, not in the snapshot: whatever order they arrive in, its change
/// wins over the snapshot's row of the same key, and a withdrawal just
/// before a reload removes rows published before it but not the reload's.
#[tokio::test]
async fn a_change_committed_at_the_snapshot_point_wins_over_the_snapshot_row() {
    let cfg = common::fresh_db("t_show_snappos").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    showcase::migrate(&c, showcase::SCHEMA).await.unwrap();
    let s: u64 = 0x5000;
    let snap = |key: i64, name: &str, at: u64| {
        let (commit_lsn, lsn) = vitrina::events::snapshot_position(at);
        let mut e = subject(key, name, commit_lsn, lsn, Op::Read);
        e.source.snapshot = true;
        e
    };
    // The change: its transaction commits at S, its row change is before S.
    let streamed = subject(1, "Алгебра", s, s - 0x40, Op::Update);
    for order in [
        vec![snap(1, "Математика", s), streamed.clone()],
        vec![streamed.clone(), snap(1, "Математика", s)],
    ] {
        c.batch_execute("TRUNCATE showcase.subject").await.unwrap();
        for e in order {
            apply_batch(&mut c, showcase::SCHEMA, &[e], &[])
                .await
                .unwrap();
        }
        assert_eq!(
            rows(&c).await[0].1.as_deref(),
            Some("Алгебра"),
            "the streamed change stands"
        );
    }
    // A reload at R > S: its withdrawal removes what came before, its rows stand.
    let r: u64 = 0x9000;
    let (wc, wl) = vitrina::events::withdrawal_position(r);
    let withdraw = subject(0, "", wc, wl, Op::Truncate);
    apply_batch(
        &mut c,
        showcase::SCHEMA,
        &[withdraw, snap(2, "Физика", r)],
        &[],
    )
    .await
    .unwrap();
    let after = rows(&c).await;
    assert!(after[0].2, "the earlier row is withdrawn: {after:?}");
    assert_eq!((after[1].1.as_deref(), after[1].2), (Some("Физика"), false));
}

async fn all_subjects(
    c: &tokio_postgres::Client,
) -> Vec<(String, Option<String>, bool, i64, i64, String)> {
    c.query(
        "SELECT key, name, deleted, source_commit_lsn, source_lsn, event_id FROM showcase.subject ORDER BY key",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

/// The bulk insert (with its fallback to the upsert when a row exists) and
/// the split between parallel writers leave the showcase as applying the
/// same events in small upserted batches does.
#[tokio::test]
async fn bulk_and_split_apply_equal_small_upserted_batches() {
    use vitrina::showcase::apply::{apply_on, Bulk};
    let split_cfg = common::fresh_db("t_show_split").await;
    let single_cfg = common::fresh_db("t_show_small").await;
    let mut home = vitrina::pg::connect(&split_cfg).await.unwrap();
    showcase::migrate(&home, showcase::SCHEMA).await.unwrap();
    let mut writers = vec![
        vitrina::pg::connect(&split_cfg).await.unwrap(),
        vitrina::pg::connect(&split_cfg).await.unwrap(),
    ];
    let mut single = vitrina::pg::connect(&single_cfg).await.unwrap();
    showcase::migrate(&single, showcase::SCHEMA).await.unwrap();

    // 1,200 new rows; the same again (the bulk insert meets them all);
    // then newer versions of half, deletes of a tenth, 300 new rows and a
    // truncate followed by a few rows.
    let load: Vec<Event> = (1..=1200)
        .map(|k| subject(k, &format!("n{k}"), 1000, 1000 + k as u64, Op::Read))
        .collect();
    let mut later: Vec<Event> = (1..=600)
        .map(|k| subject(k, &format!("m{k}"), 2000, 2000 + k as u64, Op::Update))
        .chain((1..=120).map(|k| subject(k * 10, "", 3000, 3000 + k as u64, Op::Delete)))
        .chain(
            (1201..=1500).map(|k| subject(k, &format!("n{k}"), 3500, 3500 + k as u64, Op::Create)),
        )
        .collect();
    let mut last: Vec<Event> = vec![subject(0, "", 5000, 5000, Op::Truncate)];
    last.extend(
        (1..=700).map(|k| subject(k * 2, &format!("t{k}"), 6000, 6000 + k as u64, Op::Create)),
    );
    later.reverse(); // order within a batch does not matter: positions do
    let batches = [load.clone(), load, later, last];

    let mut bulk = Bulk::default();
    let mut offset = 0i64;
    for (i, b) in batches.iter().enumerate() {
        offset += b.len() as i64;
        let a = apply_on(
            &mut home,
            &mut writers,
            showcase::SCHEMA,
            b,
            &[],
            (&[("t".to_string(), 0, offset)], &[]),
            &mut bulk,
        )
        .await
        .unwrap_or_else(|e| panic!("batch {i}: {e}"));
        if i == 1 {
            assert_eq!(a.written, 0, "the same rows again change nothing");
        }
        for chunk in b.chunks(100) {
            apply_batch(&mut single, showcase::SCHEMA, chunk, &[])
                .await
                .unwrap();
        }
    }
    let got = all_subjects(&home).await;
    assert_eq!(got.len(), 1500);
    assert_eq!(got, all_subjects(&single).await);
    let next: i64 = home
        .query_one(
            "SELECT next_offset FROM showcase.consumer_offsets WHERE topic = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, offset, "offsets recorded after the writers' rows");
}
