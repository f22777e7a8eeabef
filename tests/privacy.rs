//! The law at the Kafka boundary: after a workload that grants and revokes
//! consents and types pupils' names and document numbers into free text,
//! no general topic carries medical detail, a name or a raw document
//! number; the restricted topic carries detail only for students whose
//! parent consents now, loses it on revocation (what a new reader gets:
//! the latest record per key, as compaction leaves it) and gets it back on
//! a new consent; the showcase follows.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use vitrina::events::codec::Registry;
use vitrina::events::{Message, Val};
use vitrina::region::load;

/// The restricted topic as a new reader gets it once compacted: the latest
/// record per key; `None` for a tombstone.
fn compacted(
    messages: &[(String, i32, Vec<u8>, Vec<u8>)],
    prefix: &str,
) -> HashMap<String, Option<vitrina::events::Detail>> {
    let reg = Registry::new();
    let topic = format!("{prefix}.medical_detail.v1");
    let mut out = HashMap::new();
    for (t, _, key, value) in messages {
        if *t != topic {
            continue;
        }
        let k = String::from_utf8(key.clone()).unwrap();
        let v = (!value.is_empty()).then(|| reg.decode_detail(value).expect("detail decodes"));
        out.insert(k, v);
    }
    out
}

async fn consenting(c: &tokio_postgres::Client) -> HashSet<i64> {
    common::column::<i64>(
        c,
        "SELECT DISTINCT student_id FROM journal.parental_consents
          WHERE kind = 'medical_data_transfer' AND status = 'granted'",
    )
    .await
    .into_iter()
    .collect()
}

/// Waits until the showcase shows `reason` (or nothing) for attendance `key`.
async fn shown(show: &tokio_postgres::Client, key: i64, want: Option<&str>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r: Option<Option<String>> = show
            .query_opt(
                "SELECT reason FROM showcase.attendance WHERE key = $1",
                &[&key.to_string()],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if r.as_ref().map(|x| x.as_deref()) == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "showcase.attendance {key}: reason {r:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A student without any consent, one of whose marks becomes an illness
/// with `reason`: (student, a parent, the mark's id).
async fn ill_without_consent(c: &tokio_postgres::Client, reason: &str) -> (i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT s.id, sp.parent_id, a.lesson_id, a.teacher_id FROM journal.students s
               JOIN journal.student_parents sp ON sp.student_id = s.id
               JOIN journal.attendance a ON a.student_id = s.id
              WHERE NOT EXISTS (SELECT 1 FROM journal.parental_consents p WHERE p.student_id = s.id)
              ORDER BY s.id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (student, parent, lesson, teacher): (i64, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    c.execute(
        "DELETE FROM journal.attendance WHERE student_id = $1 AND lesson_id = $2",
        &[&student, &lesson],
    )
    .await
    .unwrap();
    let ill: i64 = c
        .query_one(
            "INSERT INTO journal.attendance (lesson_id, student_id, code, reason, teacher_id, updated_by)
             VALUES ($1, $2, 'Б', $4, $3, 'test') RETURNING id",
            &[&lesson, &student, &teacher, &reason],
        )
        .await
        .unwrap()
        .get(0);
    (student, parent, ill)
}

/// A parent's consent of `kind` for `student`, granted now; its id.
async fn grant(
    c: &tokio_postgres::Client,
    student: i64,
    parent: i64,
    kind: &str,
    document: &str,
) -> i64 {
    c.query_one(
        "INSERT INTO journal.parental_consents (student_id, parent_id, kind, status, granted_at, document_number, document_date, updated_by)
         VALUES ($1, $2, $3, 'granted', now(), $4, current_date, 'test') RETURNING id",
        &[&student, &parent, &kind, &document],
    )
    .await
    .unwrap()
    .get(0)
}

/// A journal of its own with the privacy tests' region (seed 61, 40
/// students) loaded; its config, database name and a client.
async fn loaded_journal(tag: &str) -> (tokio_postgres::Config, String, tokio_postgres::Client) {
    let cfg = common::journal_db(tag).await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(61, 1, 40, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    (cfg, db, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_medical_detail_names_or_documents_leave_except_under_consent() {
    let (cfg, db, c) = loaded_journal("t_privacy").await;
    // The student under test, without any consent, ill once.
    let (student, parent, ill) = ill_without_consent(&c, "болезнь: ОРВИ").await;
    let surname: String = c
        .query_one(
            "SELECT last_name FROM journal.students WHERE id = $1",
            &[&student],
        )
        .await
        .unwrap()
        .get(0);
    let name = format!("priv{}", std::process::id());
    let show_cfg = common::fresh_db("t_privacy_show").await;
    let show_db = common::db_name(&show_cfg);
    let mut capture = common::spawn_capture(&db, &name);
    let mut projector = common::spawn_projector(&db, &name, &show_db);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let show = vitrina::pg::connect(&show_cfg).await.unwrap();
    shown(&show, ill, None).await;

    // The live workload: lessons with names in homework, corrections,
    // consents granted and revoked, ЕМИАС exemptions; and a comment that
    // names our student in another case, with a SNILS.
    let load_task = common::spawn_workload(&cfg, 8, 0, 17);
    c.execute(
        "UPDATE journal.attendance SET reason = 'болезнь: ОРВИ, ' || $2 || 'у СНИЛС 112-233-445 95' WHERE id = $1",
        &[&ill, &surname],
    )
    .await
    .unwrap();
    assert_eq!(load_task.await.unwrap().failed_transactions, 0);

    // Consent granted: the detail that already exists goes out, and shows.
    let consent: i64 = grant(&c, student, parent, "medical_data_transfer", "Т-1").await;
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let detail_key = format!("attendance:{ill}");
    let messages = common::read_all(&name);
    let view = compacted(&messages, &name);
    let d = view
        .get(&detail_key)
        .cloned()
        .flatten()
        .expect("under consent the detail is on the restricted topic");
    let reason = d
        .fields
        .iter()
        .find(|(f, _)| *f == "reason")
        .unwrap()
        .1
        .clone()
        .unwrap();
    assert!(reason.starts_with("болезнь: ОРВИ"), "{reason}");
    assert!(
        !reason.contains(&surname),
        "names are scrubbed there too: {reason}"
    );
    shown(&show, ill, Some(&reason)).await;

    // Every general topic: no medical detail, no names, no raw documents.
    let reg = Registry::new();
    let surnames: Vec<String> = common::column::<String>(
        &c,
        "SELECT DISTINCT last_name FROM journal.students UNION SELECT DISTINCT last_name FROM journal.parents
         UNION SELECT DISTINCT last_name FROM journal.teachers",
    )
    .await
    .into_iter()
    .filter(|s| s.chars().count() >= 5)
    // The stem without a feminine ending catches the declined forms.
    .map(|s| s.trim_end_matches('а').to_lowercase())
    .collect();
    let snils = regex_lite::Regex::new(r"\d{3}-\d{3}-\d{3} \d{2}").unwrap();
    let mut checked = 0;
    let mut free_text = 0;
    for (topic, _, _, payload) in &messages {
        if topic.ends_with(".deadletter.v1") || topic.ends_with(".medical_detail.v1") {
            continue;
        }
        let Ok(Message::Event(e)) = reg.decode_message(payload) else {
            continue;
        };
        let Some(after) = &e.after else { continue };
        checked += 1;
        let field = |name: &str| &after[e.entity.index(name).unwrap()];
        match e.entity.name {
            "attendance" if *field("code") == Val::Str("Б".into()) => {
                assert_eq!(*field("reason"), Val::Null, "an illness reason on {topic}")
            }
            "medical_exemption" => {
                assert_eq!(
                    *field("diagnosis_group"),
                    Val::Null,
                    "a diagnosis on {topic}"
                );
                assert_eq!(*field("pe_group"), Val::Null, "a PE group on {topic}");
            }
            _ => {}
        }
        for (f, v) in e.entity.fields.iter().zip(after) {
            let Val::Str(s) = v else { continue };
            if e.entity.name == "organization" {
                continue; // heads' names are public registry data
            }
            if f.class.label().is_some() {
                free_text += 1;
            }
            let lower = s.to_lowercase();
            for n in &surnames {
                assert!(
                    !lower.contains(n.as_str()),
                    "a name on {topic}: {}.{} = {s:?}",
                    e.entity.name,
                    f.name
                );
            }
            assert!(
                !snils.is_match(s),
                "a SNILS on {topic}: {}.{}",
                e.entity.name,
                f.name
            );
        }
    }
    assert!(
        checked > 10_000 && free_text > 100,
        "{checked} events, {free_text} free-text values checked"
    );
    // The journal did hold names in free text: the check above was not idle.
    let named: i64 = c
        .query_one(
            "SELECT count(*) FROM journal.lessons l WHERE EXISTS (
               SELECT 1 FROM journal.students s WHERE l.homework LIKE '%' || s.last_name || '%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(named > 0, "the workload typed names into homework");

    // The restricted topic holds detail only for students who consent now.
    let now = consenting(&c).await;
    for (k, d) in &view {
        if let Some(d) = d {
            assert!(
                d.student_id.is_some_and(|s| now.contains(&s)),
                "{k}: detail of a student without consent"
            );
        }
    }

    // Revocation: tombstones; a new reader gets no detail; the showcase
    // redacts; the private copy is erased.
    c.execute(
        "UPDATE journal.parental_consents SET status = 'revoked', revoked_at = now() WHERE id = $1",
        &[&consent],
    )
    .await
    .unwrap();
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let view = compacted(&common::read_all(&name), &name);
    for (k, d) in &view {
        if let Some(d) = d {
            assert_ne!(d.student_id, Some(student), "{k}: detail after revocation");
        }
    }
    assert_eq!(
        view.get(&detail_key),
        Some(&None),
        "a tombstone erases the key"
    );
    shown(&show, ill, None).await;
    let held: Option<String> = show
        .query_one(
            "SELECT reason FROM showcase_private.attendance_medical WHERE key = $1",
            &[&ill.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, None, "the private copy is erased");

    // A late consent brings it back.
    grant(&c, student, parent, "medical_data_transfer", "Т-2").await;
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let view = compacted(&common::read_all(&name), &name);
    assert!(
        view.get(&detail_key).cloned().flatten().is_some(),
        "back under the new consent"
    );
    shown(&show, ill, Some(&reason)).await;

    // Capture behind the journal: the consent is revoked, then the row
    // changes to an excused absence, before capture reads either. When the
    // revocation reaches capture the journal's row holds no detail any more;
    // the key must still end erased (by the row's own change).
    common::kill(&mut capture, libc::SIGTERM);
    c.execute(
        "UPDATE journal.parental_consents SET status = 'revoked', revoked_at = now()
          WHERE student_id = $1 AND kind = 'medical_data_transfer' AND status = 'granted'",
        &[&student],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE journal.attendance SET code = 'У', reason = 'по заявлению родителей' WHERE id = $1",
        &[&ill],
    )
    .await
    .unwrap();
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let view = compacted(&common::read_all(&name), &name);
    assert_eq!(
        view.get(&detail_key),
        Some(&None),
        "a revocation read after the row changed leaves the key erased"
    );
    for (k, d) in &view {
        if let Some(d) = d {
            assert_ne!(d.student_id, Some(student), "{k}: detail after revocation");
        }
    }

    // And the other way: a grant, then the row ill again with another
    // reason, both before capture reads them: the current reason is what a
    // new reader gets.
    common::kill(&mut capture, libc::SIGTERM);
    grant(&c, student, parent, "medical_data_transfer", "Т-3").await;
    c.execute(
        "UPDATE journal.attendance SET code = 'Б', reason = 'болезнь: грипп' WHERE id = $1",
        &[&ill],
    )
    .await
    .unwrap();
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let view = compacted(&common::read_all(&name), &name);
    let now = view
        .get(&detail_key)
        .cloned()
        .flatten()
        .expect("the grant read after the row changed publishes its detail");
    assert_eq!(
        now.fields
            .iter()
            .find(|(f, _)| *f == "reason")
            .unwrap()
            .1
            .as_deref(),
        Some("болезнь: грипп")
    );
    shown(&show, ill, Some("болезнь: грипп")).await;
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

/// Capture dies in the middle of a consent flip, a few seconds after the
/// grant: nothing after the grant may have been confirmed to the slot in
/// the meantime (the publisher holds commits while a flip waits), so the
/// next capture replays the grant and the student's detail is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_dies_in_a_consent_flip_replays_the_consent() {
    let (cfg, db, c) = loaded_journal("t_flip_crash").await;
    let (student, parent, ill) = ill_without_consent(&c, "болезнь: ангина").await;
    let name = format!("flip{}", std::process::id());
    let mut capture = common::spawn_vitrina(
        "capture",
        &db,
        &name,
        &name,
        &[common::failpoints("capture-flush-crash=return(4000)")],
    );
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    grant(&c, student, parent, "medical_data_transfer", "Т-9").await;
    // Transactions after the grant, whose commits the flip holds back.
    for _ in 0..20 {
        c.execute(
            "SELECT pg_logical_emit_message(true, 'vitrina.test', 'x')",
            &[],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = capture.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failpoint did not stop capture in the flush"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "capture died in the flush: {status}");
    let key = format!("attendance:{ill}");
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let view = compacted(&common::read_all(&name), &name);
    let d = view
        .get(&key)
        .cloned()
        .flatten()
        .expect("the grant was replayed and its detail published");
    assert_eq!(d.student_id, Some(student));
    common::kill(&mut capture, libc::SIGTERM);
}

/// A consent flip's journal queries run while the stream goes on, and land
/// later. Rows of the student that change between the queries and the
/// landing (one deleted, one's illness reason edited, one no longer an
/// illness) must end on the restricted topic as the journal has them, not
/// as the queries read them: the changes wait behind the landing. Then a
/// consent of another kind (photo publication) for the same student
/// publishes and erases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_while_a_consent_flip_is_in_flight_end_as_the_journal_has_them() {
    let (cfg, db, c) = loaded_journal("t_flight").await;
    let (student, parent, deleted) = ill_without_consent(&c, "болезнь: ангина").await;
    let ill: Vec<i64> = c
        .query(
            "UPDATE journal.attendance SET code = 'Б', reason = 'болезнь: ОРВИ', updated_by = 'test'
              WHERE id IN (SELECT id FROM journal.attendance WHERE student_id = $1 AND id <> $2
                            ORDER BY id LIMIT 2)
              RETURNING id",
            &[&student, &deleted],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ill.len(), 2, "student {student} has three attendance rows");
    let (edited, cured) = (ill[0], ill[1]);
    let name = format!("flight{}", std::process::id());
    let mut capture = common::spawn_vitrina(
        "capture",
        &db,
        &name,
        &name,
        &[common::failpoints("capture-flight-lands-late=return(4000)")],
    );
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    grant(&c, student, parent, "medical_data_transfer", "Т-10").await;
    // The flight takes off within FLIP_WAIT (100 ms) and its queries answer
    // at once; it lands 4 s later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.batch_execute(&format!(
        "DELETE FROM journal.attendance WHERE id = {deleted};
         UPDATE journal.attendance SET reason = 'болезнь: грипп' WHERE id = {edited};
         UPDATE journal.attendance SET code = 'Н', reason = NULL WHERE id = {cured};"
    ))
    .await
    .unwrap();
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    let view = compacted(&messages, &name);
    let reason = |id: i64| {
        view.get(&format!("attendance:{id}")).map(|d| {
            d.as_ref().map(|d| {
                d.fields
                    .iter()
                    .find(|(n, _)| *n == "reason")
                    .and_then(|(_, v)| v.clone())
            })
        })
    };
    assert_eq!(
        reason(deleted),
        Some(None),
        "the deleted row's detail is erased (published by the flip, then tombstoned)"
    );
    assert_eq!(
        reason(edited),
        Some(Some(Some("болезнь: грипп".to_string()))),
        "the edited row carries the journal's reason"
    );
    assert_eq!(
        reason(cured),
        Some(None),
        "the row that is no longer an illness holds no detail"
    );

    // Another kind of consent: nothing on the restricted topic.
    let restricted = |m: &[(String, i32, Vec<u8>, Vec<u8>)]| {
        let topic = format!("{name}.medical_detail.v1");
        m.iter().filter(|(t, ..)| *t == topic).count()
    };
    let before = restricted(&messages);
    grant(&c, student, parent, "photo_publication", "Ф-1").await;
    // Past the flight's landing, had one taken off.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    assert_eq!(
        restricted(&common::read_all(&name)),
        before,
        "a photo-publication consent sends no restricted-topic records"
    );
    common::kill(&mut capture, libc::SIGTERM);
}

/// Between capture's first reading of the journal (the consenting set, the
/// names to scrub) and the slot's exported snapshot, a parent revokes the
/// consent of an ill student and a person is added whose name a teacher
/// types into a comment. Both changes are in the snapshot and not in the
/// stream: the initial load must publish neither the student's detail nor
/// the name, at any moment (the topics are read whole, not compacted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_revoked_or_a_name_added_before_the_snapshot_never_leaves() {
    let (cfg, db, c) = loaded_journal("t_snap_window").await;
    let (student, parent, ill) = ill_without_consent(&c, "болезнь: ангина").await;
    let consent = grant(&c, student, parent, "medical_data_transfer", "Т-11").await;
    let name = format!("snapwin{}", std::process::id());
    let mut capture = common::spawn_vitrina(
        "capture",
        &db,
        &name,
        &name,
        &[common::failpoints("capture-before-snapshot=return(6000)")],
    );
    // The window is open once the gate has read the journal.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !common::log_tail(&name, 200).contains("failpoint: waiting before the slot") {
        assert!(
            std::time::Instant::now() < deadline,
            "capture never reached the failpoint:\n{}",
            common::log_tail(&name, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.execute(
        "UPDATE journal.parental_consents SET status = 'revoked', revoked_at = now(), updated_at = now()
          WHERE id = $1",
        &[&consent],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO journal.parents (last_name, first_name, sex, birth_date, regional_account_id, updated_by)
         VALUES ('Ухтомцева', 'Евпраксия', 'F', '1990-01-01', 'snapwin-parent', 'test')",
        &[],
    )
    .await
    .unwrap();
    let graded: i64 = c
        .query_one(
            "UPDATE journal.grades SET comment = 'проект вместе с Евпраксией Ухтомцевой', updated_at = now()
              WHERE id = (SELECT min(id) FROM journal.grades) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        capture.try_wait().unwrap().is_none(),
        "the window closed before the journal changed (the failpoint waits 6 s)"
    );
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;

    let messages = common::read_all(&name);
    let reg = Registry::new();
    let detail_topic = format!("{name}.medical_detail.v1");
    let detail_key = format!("attendance:{ill}");
    let mut comment_seen = false;
    for (topic, _, key, payload) in &messages {
        if *topic == detail_topic {
            assert!(
                payload.is_empty() || key.as_slice() != detail_key.as_bytes(),
                "the detail of a student whose consent was revoked before the snapshot left"
            );
            continue;
        }
        if topic.ends_with(".deadletter.v1") {
            continue;
        }
        let text = String::from_utf8_lossy(payload).to_lowercase();
        assert!(
            !text.contains("ухтомцев") && !text.contains("евпракси"),
            "a name added before the snapshot left on {topic}"
        );
        if let Ok(Message::Event(e)) = reg.decode_message(payload) {
            comment_seen |= e.entity.name == "grade" && e.key == graded.to_string();
        }
    }
    assert!(
        comment_seen,
        "the changed grade was loaded (the check saw it)"
    );
    common::kill(&mut capture, libc::SIGTERM);
}
