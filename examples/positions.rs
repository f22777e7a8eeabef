//! Prints where a partition's event positions go backwards in log order
//! (a probe of capture's publishing order: the ProStore feed assumes they
//! do not, except for re-sends), at most five; with `KEY=<key>` also every
//! event of that key with its offset.
//!
//!     cargo run --example positions -- BROKERS TOPIC PARTITION
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let kafka = vitrina::connections::KafkaEndpoint::new(&a[1]);
    let r = vitrina::kafka::read_partition_blocking(
        &kafka,
        &a[2],
        a[3].parse().unwrap(),
        0,
        std::time::Duration::from_secs(20),
    )
    .unwrap();
    let reg = vitrina::events::codec::Registry::new();
    let mut last = (0u64, 0u64);
    let mut n = 0;
    for (o, _, v) in r {
        if let Ok(vitrina::events::Message::Event(e)) = reg.decode_message(&v.unwrap_or_default()) {
            let p = (e.source.commit_lsn, e.source.lsn);
            if p < last && n < 5 {
                n += 1;
                println!("{o}: {:?} key {} {p:?} after {last:?}", e.op, e.key);
            }
            if std::env::var("KEY").is_ok_and(|k| k == e.key) {
                println!("{o}: {:?} key {} {p:?}", e.op, e.key);
            }
            last = last.max(p);
        }
    }
}
