//! Reads one partition from an offset to its end and prints how many
//! records came back (a probe of the broker's Fetch answers).
//!
//!     cargo run --example read_from -- BROKERS TOPIC PARTITION OFFSET
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let kafka = vitrina::connections::KafkaEndpoint::new(&a[1]);
    let t0 = std::time::Instant::now();
    let r = vitrina::kafka::read_partition_blocking(
        &kafka,
        &a[2],
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
        std::time::Duration::from_secs(20),
    );
    match r {
        Ok(v) => println!(
            "{} records, first offset {:?}, in {:.2} s",
            v.len(),
            v.first().map(|x| x.0),
            t0.elapsed().as_secs_f64()
        ),
        Err(e) => println!("error: {e}"),
    }
}
