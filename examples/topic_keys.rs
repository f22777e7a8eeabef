//! Debug aid: decode every event of a topic and print key, op, offset.
//! `cargo run --example topic_keys -- BROKERS TOPIC`
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vitrina::events::codec::Registry;
use vitrina::events::Message as M;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a[1])
        .set("group.id", "topic-keys")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(&a[2]), std::time::Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for p in md.topics()[0].partitions() {
        let (_, hi) = c
            .fetch_watermarks(&a[2], p.id(), std::time::Duration::from_secs(5))
            .unwrap();
        left += hi;
        tpl.add_partition_offset(&a[2], p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let reg = Registry::new();
    while left > 0 {
        if let Some(Ok(m)) = c.poll(std::time::Duration::from_secs(2)) {
            left -= 1;
            if let Ok(M::Event(e)) = reg.decode_message(m.payload().unwrap_or_default()) {
                println!(
                    "{} {} {:?} p{} o{}",
                    e.key,
                    e.event_id,
                    e.op,
                    m.partition(),
                    m.offset()
                );
            }
        } else {
            break;
        }
    }
}
