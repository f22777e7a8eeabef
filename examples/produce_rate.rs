//! How fast the broker takes acknowledged messages, without capture:
//! `cargo run --release --example produce_rate -- BROKERS N SIZE`.
use std::time::Instant;

use rdkafka::producer::FutureRecord;

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (brokers, n, size): (&str, usize, usize) =
        (&a[1], a[2].parse().unwrap(), a[3].parse().unwrap());
    let topic = format!("produce-rate-{}", std::process::id());
    let brokers = &vitrina::connections::KafkaEndpoint::new(brokers);
    vitrina::kafka::ensure_topics(brokers, std::slice::from_ref(&topic), 3)
        .await
        .unwrap();
    let p = vitrina::kafka::producer(brokers, 5, "lz4", 1_000_000).unwrap();
    // Hex of a xorshift stream: compresses about as badly as hashed events.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let payload: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"0123456789abcdef"[(x & 15) as usize]
        })
        .collect();
    let t0 = Instant::now();
    let mut futs = Vec::with_capacity(n);
    for i in 0..n {
        let key = (i % 5000).to_string();
        loop {
            match p.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(f) => {
                    futs.push(f);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            }
        }
    }
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{n} messages of {size} B acknowledged in {s:.3} s: {:.0} msg/s (topic {topic})",
        n as f64 / s
    );
}
