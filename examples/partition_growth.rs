//! What a broker's storage costs as one partition grows in small batches
//! (the shape of a live journal: a few changes per batch):
//! `cargo run --release --example partition_growth -- BROKERS BATCHES STEP`.
//!
//! Produces BATCHES single-message batches to a fresh one-partition topic,
//! each awaited (so each is its own batch object), and every STEP batches
//! measures the median produce→ack time of the last STEP and the time to
//! fetch the newest message from a fresh assignment (a consumer picking up
//! where it left off).
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (brokers, batches, step): (&str, usize, usize) =
        (&a[1], a[2].parse().unwrap(), a[3].parse().unwrap());
    let topic = format!("partition-growth-{}", std::process::id());
    let kafka = &vitrina::connections::KafkaEndpoint::new(brokers);
    vitrina::kafka::ensure_topics(kafka, std::slice::from_ref(&topic), 1)
        .await
        .unwrap();
    let p = vitrina::kafka::producer(kafka, 0, "lz4", 1_000_000).unwrap();
    let payload = vec![b'x'; 200];
    println!("batches  ack_p50_ms  fetch_newest_ms");
    let mut acks = Vec::with_capacity(step);
    for i in 0..batches {
        let t = Instant::now();
        p.send(
            FutureRecord::to(&topic).key("k").payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        acks.push(t.elapsed().as_secs_f64() * 1000.0);
        if (i + 1) % step == 0 {
            acks.sort_by(f64::total_cmp);
            let ack = acks[acks.len() / 2];
            acks.clear();
            let fetch = fetch_newest(kafka, &topic, i as i64);
            println!("{:>7}  {ack:>10.2}  {fetch:>15.1}", i + 1);
        }
    }
}

/// Milliseconds from assigning `offset` to receiving it.
fn fetch_newest(kafka: &vitrina::connections::KafkaEndpoint, topic: &str, offset: i64) -> f64 {
    let c: BaseConsumer = kafka
        .client_config()
        .set("group.id", "partition-growth")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    let t = Instant::now();
    c.assign(&tpl).unwrap();
    loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            if m.offset() >= offset {
                return t.elapsed().as_secs_f64() * 1000.0;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no message at {offset}"
        );
    }
}
