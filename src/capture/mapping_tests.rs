//! Unit tests of `mapping`.

use super::*;
use crate::privacy::Mode;

fn row(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect()
}

fn student_row(snils: Option<&str>) -> BTreeMap<String, Option<String>> {
    row(&[
        ("id", Some("17")),
        ("esia_id", Some("1000100123")),
        ("snils", snils),
        ("last_name", Some("Иванова")),
        ("first_name", Some("Мария")),
        ("middle_name", Some("Петровна")),
        ("passport_series", None),
        ("passport_number", None),
        ("birth_certificate_series", Some("ІУ-МЮ")),
        ("birth_certificate_number", Some("123456")),
        ("identity_document_kind", Some("birth_certificate")),
        ("sex", Some("F")),
        ("birth_date", Some("2015-03-04")),
        ("citizenship", Some("RUS")),
        ("regional_account_id", Some("S-69-00000017")),
        ("movement_first_member", Some("t")),
        ("health_group", Some("2")),
        ("updated_by", Some("op:secretary")),
    ])
}

#[test]
fn reference_mapping_covers_every_journal_table_and_parses() {
    let m = Mapping::reference();
    assert_eq!(m.tables.len(), crate::region::load::TABLES.len());
    assert!(m.table("journal.grades").is_some());
}

#[test]
fn student_row_is_depersonalized() {
    let m = Mapping::reference();
    let t = m.table("journal.students").unwrap();
    let dp = Depersonalizer::new(Mode::Plain);
    let out = t
        .map_row(&student_row(Some("112-233-445 95")), &dp)
        .unwrap();
    assert_eq!(out.key, "17");
    assert_eq!(out.partition_key, "17");
    let text = format!("{out:?}");
    for secret in [
        "Иванова",
        "Мария",
        "Петровна",
        "112-233-445",
        "11223344595",
        "123456",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let snils_hash = &out.after[t
        .entity
        .fields
        .iter()
        .position(|f| f.name == "snils_hash")
        .unwrap()];
    assert_eq!(snils_hash, &Val::Str(dp.digest("11223344595")));
    assert!(out.quality.is_empty(), "{:?}", out.quality);
}

#[test]
fn invalid_snils_is_flagged_not_hashed_and_the_row_still_maps() {
    let m = Mapping::reference();
    let t = m.table("journal.students").unwrap();
    let dp = Depersonalizer::new(Mode::Plain);
    let out = t
        .map_row(&student_row(Some("112-233-445 96")), &dp)
        .unwrap();
    assert_eq!(out.quality, vec!["snils_invalid".to_string()]);
    let i = t
        .entity
        .fields
        .iter()
        .position(|f| f.name == "snils_hash")
        .unwrap();
    assert_eq!(out.after[i], Val::Null);
}

#[test]
fn a_missing_mapped_column_is_unmappable_and_names_it() {
    let m = Mapping::reference();
    let t = m.table("journal.students").unwrap();
    let dp = Depersonalizer::new(Mode::Plain);
    let mut r = student_row(None);
    r.remove("sex");
    let err = t.map_row(&r, &dp).unwrap_err();
    assert!(
        err.0.contains("`sex`") && err.0.contains("journal.students"),
        "{err}"
    );
}

#[test]
fn values_parse_from_pgoutput_text() {
    assert_eq!(parse_val(Ty::Date, "1970-01-02").unwrap(), Val::Date(1));
    assert_eq!(
        parse_val(Ty::Timestamp, "1970-01-01 03:00:01+03").unwrap(),
        Val::Timestamp(1_000_000)
    );
    assert_eq!(
        parse_val(Ty::Timestamp, "1970-01-01 00:00:00.5+00").unwrap(),
        Val::Timestamp(500_000)
    );
    assert_eq!(
        parse_val(Ty::Time, "08:30:00").unwrap(),
        Val::Time(30_600_000_000)
    );
    assert_eq!(parse_val(Ty::Double, "1.5").unwrap(), Val::Double(1.5));
    assert_eq!(parse_val(Ty::Bool, "f").unwrap(), Val::Bool(false));
    let err = parse_val(Ty::Long, "12345-secret").unwrap_err();
    assert!(
        !err.contains("12345-secret"),
        "values stay out of reasons: {err}"
    );
}

#[test]
fn mapping_errors_name_the_problem() {
    let e = Mapping::parse(
        "[[table]]\ntable = \"journal.x\"\nentity = \"nope\"\nkey = [\"id\"]\n",
        "t",
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown entity `nope`"), "{e}");
    let e = Mapping::parse("[[table]]\ntable = \"journal.x\"\nentity = \"grade\"\nkey = [\"id\"]\nfields.nope = \"x\"\n", "t").unwrap_err();
    assert!(e.to_string().contains("no field `nope`"), "{e}");
}

/// The direct readers of PostgreSQL's date and time output agree with
/// chrono's parser on every form they accept, and leave the rest to it.
#[test]
fn dates_and_times_read_directly_agree_with_chrono() {
    let chrono_ts = |s: &str| {
        DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|t| t.timestamp_micros())
    };
    let chrono_date = |s: &str| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32)
    };
    let chrono_time = |s: &str| {
        NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok().map(|t| {
            t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64
        })
    };
    let mut n = 0;
    for date in [
        "1970-01-01",
        "2026-12-02",
        "1969-12-31",
        "2024-02-29",
        "0001-01-01",
        "9999-12-31",
    ] {
        assert_eq!(pg_text::date(date), chrono_date(date), "{date}");
        for time in [
            "00:00:00",
            "23:59:59",
            "08:30:00.5",
            "12:00:00.123456",
            "07:01:02.010",
        ] {
            assert_eq!(pg_text::time(time), chrono_time(time), "{time}");
            for zone in ["+00", "+03", "-05", "+05:30", "-09:30", "+03:00:15"] {
                let ts = format!("{date} {time}{zone}");
                let fast = pg_text::timestamptz(&ts);
                assert!(fast.is_some(), "{ts} is read directly");
                if zone.len() <= 6 {
                    assert_eq!(fast, chrono_ts(&ts), "{ts}");
                }
                n += 1;
            }
        }
    }
    assert_eq!(n, 180);
    // Seconds in the offset (historic zones): chrono's %#z drops them.
    assert_eq!(
        pg_text::timestamptz("1970-01-01 00:00:00+00:00:15"),
        Some(-15_000_000)
    );
    // Not PostgreSQL's ISO output, or out of range: left to chrono.
    for other in [
        "2026-02-30",
        "2026-1-02",
        "20261202",
        "0044-03-15 BC",
        "12345-01-01",
        "infinity",
    ] {
        assert_eq!(pg_text::date(other), None, "{other}");
    }
    for other in [
        "24:00:00",
        "08:30",
        "08:30:00.",
        "08:30:00.1234567",
        "08:30:00x",
    ] {
        assert_eq!(pg_text::time(other), None, "{other}");
    }
    for other in [
        "2026-12-02 08:30:00",
        "2026-12-02T08:30:00+00",
        "2026-12-02 08:30:00+3",
        "2026-12-02 08:30:00+03:0",
        "2026-12-02 08:30:00 +03",
    ] {
        assert_eq!(pg_text::timestamptz(other), None, "{other}");
    }
}

#[test]
fn tables_are_found_by_schema_and_name_exactly() {
    let m = Mapping::reference();
    assert_eq!(
        m.table_of("journal", "grades").map(|t| t.table.as_str()),
        Some("journal.grades")
    );
    for (schema, table) in [
        ("journal", "grade"),
        ("journa", "lgrades"),
        ("journal.", "grades"),
        ("journalx", "grades"),
        ("", "journal.grades"),
    ] {
        assert!(m.table_of(schema, table).is_none(), "{schema}.{table}");
    }
}

#[test]
fn a_row_read_by_index_maps_as_a_row_read_by_name() {
    // The load's rows answer by index (`Row::at`); the stream's by name.
    let m = Mapping::reference();
    let t = m.table("journal.students").unwrap();
    let by_name = student_row(Some("112-233-445 95"));
    let line = t
        .columns()
        .iter()
        .map(|c| match by_name.get(c) {
            Some(Some(v)) => v.clone(),
            _ => "\\N".to_string(),
        })
        .collect::<Vec<_>>()
        .join("\t");
    let dp = Depersonalizer::new(Mode::Plain);
    let by_index = crate::capture::snapshot::CopyRow::parse(t.columns(), &line);
    let mapped = t.map_row(&by_index, &dp);
    assert!(mapped.is_ok(), "{mapped:?}");
    assert_eq!(mapped, t.map_row(&by_name, &dp));
}
