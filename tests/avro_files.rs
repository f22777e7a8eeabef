//! The schemas in avro/ are the ones the code writes with, and each one
//! decodes messages by its fingerprint alone.

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use vitrina::events::{codec::Registry, schema, ENTITIES};

/// The schema's CRC-64-AVRO fingerprint as lowercase hex, as `vitrina schemas` prints it.
fn hex_fingerprint(s: &Schema) -> String {
    s.fingerprint::<Rabin>()
        .bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn avro_dir_matches_the_contract() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let reg = Registry::new();
    let fps = reg.fingerprints();
    for e in ENTITIES {
        let path = dir.join(schema::file_name(e));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "{}: {err}; run `vitrina schemas --write avro`",
                path.display()
            )
        });
        assert_eq!(
            text,
            schema::avsc_text(e),
            "{} is stale; run `vitrina schemas --write avro`",
            path.display()
        );
        let parsed = Schema::parse_str(&text).unwrap();
        let fp = hex_fingerprint(&parsed);
        let (_, want) = fps.iter().find(|(x, _)| x.name == e.name).unwrap();
        assert_eq!(&fp, want, "{}", e.name);
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "avsc")
        })
        .count();
    let wm = std::fs::read_to_string(dir.join(schema::WATERMARK_FILE)).unwrap();
    assert_eq!(wm, schema::watermark_text(), "avro/watermark.avsc is stale");
    let parsed = Schema::parse_str(&wm).unwrap();
    let fp = hex_fingerprint(&parsed);
    assert_eq!(fp, reg.watermark_fingerprint());
    assert_eq!(files, ENTITIES.len() + 1, "no stray schemas in avro/");
}
