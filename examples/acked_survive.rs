//! Whether every acknowledged message is still on the broker after a crash
//! of its storage: `cargo run --release --example acked_survive -- BROKERS
//! TOPIC N RATE` produces N messages (key = sequence number) at RATE per
//! second with capture's producer settings (idempotent, acks=all), each
//! produce error counted and the message sent again. Crash the broker or its
//! storage meanwhile and restart it; when every message is acknowledged it
//! reads the topic from its start and reports acknowledged offsets whose
//! message is missing or different, duplicates, and the partition ends.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (brokers, topic, n, rate): (&str, &str, usize, f64) =
        (&a[1], &a[2], a[3].parse().unwrap(), a[4].parse().unwrap());
    let ep = &vitrina::connections::KafkaEndpoint::new(brokers);
    vitrina::kafka::ensure_topics(ep, &[topic.to_string()], 3)
        .await
        .unwrap();
    let p = vitrina::kafka::producer(ep, 5, "lz4", 1_000_000).unwrap();
    // A consumer tailing the topic meanwhile, as the projector does: what it
    // was served must still be there afterwards.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = {
        let (ep, topic, stop) = (ep.clone(), topic.to_string(), stop.clone());
        std::thread::spawn(move || {
            let c = assigned(&ep, &topic, "acked-survive-tail");
            let mut served = HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    served.insert((m.partition(), m.offset()), key_of(&m));
                }
            }
            served
        })
    };
    let t0 = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let key = i.to_string();
        let f = p
            .send_result(FutureRecord::to(topic).key(&key).payload(&key))
            .map_err(|(e, _)| e)
            .unwrap();
        pending.push((i, f));
    }
    let mut acked: HashMap<(i32, i64), usize> = HashMap::new();
    let mut errors = 0;
    for (i, f) in pending {
        let mut f = f;
        loop {
            match f.await {
                Ok(Ok(d)) => {
                    acked.insert((d.partition, d.offset), i);
                    break;
                }
                _ => {
                    errors += 1;
                    let key = i.to_string();
                    f = p
                        .send_result(FutureRecord::to(topic).key(&key).payload(&key))
                        .map_err(|(e, _)| e)
                        .unwrap();
                }
            }
        }
    }
    println!(
        "{} acknowledged in {:.1} s, {errors} produce errors resent",
        acked.len(),
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = tail.join().unwrap();
    let c = assigned(ep, topic, "acked-survive");
    let mut found: HashMap<(i32, i64), usize> = HashMap::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            found.insert((m.partition(), m.offset()), key_of(&m));
            idle = Instant::now();
        }
    }
    let missing = acked
        .iter()
        .filter(|(at, i)| found.get(at) != Some(i))
        .count();
    let unserved = served
        .iter()
        .filter(|(at, i)| found.get(at) != Some(i))
        .count();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for i in found.values() {
        *seen.entry(*i).or_default() += 1;
    }
    let dups = seen.values().filter(|c| **c > 1).count();
    let ends: Vec<i64> = (0..3)
        .map(|part| {
            found
                .keys()
                .filter(|(p, _)| *p == part)
                .map(|(_, o)| o + 1)
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!(
        "read {} messages; acknowledged but missing or different: {missing}; served to the tailing consumer ({}) but missing or different: {unserved}; keys on the topic more than once: {dups}; ends {ends:?}",
        found.len(),
        served.len()
    );
    let listed: Vec<i64> = (0..3)
        .map(|part| {
            c.fetch_watermarks(topic, part, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .collect();
    let true_ends = vitrina::kafka::end_offsets_blocking(ep, &[topic.to_string()]).unwrap();
    let true_ends: Vec<i64> = (0..3)
        .map(|part| true_ends[&(topic.to_string(), part)])
        .collect();
    println!(
        "ListOffsets(Latest) answers {listed:?}; vitrina's end_offsets_blocking {true_ends:?}"
    );
}

fn assigned(ep: &vitrina::connections::KafkaEndpoint, topic: &str, group: &str) -> BaseConsumer {
    let c: BaseConsumer = ep
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition_offset(topic, part, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

fn key_of(m: &rdkafka::message::BorrowedMessage) -> usize {
    std::str::from_utf8(m.key().unwrap())
        .unwrap()
        .parse()
        .unwrap()
}
