//! How fast the broker serves a topic from its start, without the
//! projector: `cargo run --release --example consume_rate -- BROKERS TOPIC`.
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (brokers, topic) = (&a[1], &a[2]);
    let kafka = vitrina::connections::KafkaEndpoint::new(brokers);
    let ends = vitrina::kafka::end_offsets_blocking(&kafka, std::slice::from_ref(topic)).unwrap();
    let total: i64 = ends.values().sum();
    eprintln!("{} partitions", ends.len());
    let c: BaseConsumer = kafka
        .client_config()
        .set("group.id", "consume-rate")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in ends.keys() {
        tpl.add_partition_offset(t, *p, Offset::Beginning).unwrap();
    }
    let t0 = Instant::now();
    c.assign(&tpl).unwrap();
    let mut n = 0i64;
    while n < total {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            n += 1;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "read {n} of {total}"
        );
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{total} messages read in {s:.3} s: {:.0} msg/s",
        total as f64 / s
    );
}
