//! Journal commit → delta committed, per record, for the records whose
//! journal commit lies in a time window (e.g. a workload's run): reads the
//! manifest and every committed delta's messages (apache-avro's container
//! reader) and prints the count, p50, p99 and max.
//!
//!     cargo run --release --example prostore_latency -- BROKERS PREFIX FROM_RFC3339 TO_RFC3339
use apache_avro::types::Value;
use vitrina::prostore::feed::{read_manifest, Manifest};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let kafka = vitrina::connections::KafkaEndpoint::new(&a[1]);
    let prefix = &a[2];
    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("an RFC 3339 time")
            .timestamp_micros()
    };
    let (from, to) = (t(&a[3]), t(&a[4]));
    let commits: Vec<_> = read_manifest(&kafka, prefix)
        .expect("the manifest reads")
        .into_iter()
        .filter_map(|m| match m {
            Manifest::Commit(c) => Some(c),
            Manifest::Plan(_) => None,
        })
        .filter(|c| c.newest_commit_time_micros >= from && c.oldest_commit_time_micros <= to)
        .collect();
    let mut what = Vec::new();
    for c in &commits {
        for t in &c.tables {
            what.push((t.topic.clone(), 0, t.first_offset));
        }
    }
    what.sort();
    what.dedup_by(|a, b| a.0 == b.0);
    let records = vitrina::kafka::read_partitions_blocking(
        &kafka,
        &what,
        std::time::Duration::from_secs(300),
    )
    .expect("the upload topics read");
    let mut lag_s: Vec<f64> = Vec::new();
    for c in &commits {
        for t in &c.tables {
            for (offset, _, value) in &records[&(t.topic.clone(), 0)] {
                if *offset < t.first_offset || *offset > t.last_offset {
                    continue;
                }
                let bytes = value.as_deref().unwrap_or_default();
                for r in apache_avro::Reader::new(bytes).expect("a container file") {
                    let Ok(Value::Record(fields)) = r else {
                        panic!("a record")
                    };
                    let at = fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
                        ("source_commit_time", Value::TimestampMicros(x)) => Some(*x),
                        _ => None,
                    });
                    if let Some(at) = at.filter(|x| (from..=to).contains(x)) {
                        lag_s.push((c.committed_at_micros - at) as f64 / 1e6);
                    }
                }
            }
        }
    }
    lag_s.sort_by(f64::total_cmp);
    if lag_s.is_empty() {
        println!("no records committed in the window");
        return;
    }
    let q = |p: f64| lag_s[((lag_s.len() - 1) as f64 * p).round() as usize];
    println!(
        "{} records in {} deltas: journal commit → delta committed p50 {:.2} s, p99 {:.2} s, max {:.2} s (budget 600 s)",
        lag_s.len(),
        commits.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}
