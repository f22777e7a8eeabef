//! Where a keyed record goes: vitrina picks every partition itself, with
//! the partition counts it broadcasts TRUNCATEs and watermarks to, so a key
//! never reaches a partition those broadcasts miss (librdkafka's own
//! partitioner would follow its metadata, refreshed on its own schedule).
//! The partitioners are librdkafka's, bit for bit, for keyed records.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Ends;

/// `kafka.partitioner` for keyed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `murmur2_random` / `murmur2`: Apache Kafka's Java producer's,
    /// `(murmur2(key) & 0x7fffffff) % partitions`.
    Murmur2,
    /// `consistent_random` / `consistent`: librdkafka's old default,
    /// `crc32(key) % partitions`.
    Crc32,
    /// `fnv1a_random` / `fnv1a`: `fnv1a(key) % partitions`.
    Fnv1a,
}

impl Partitioner {
    /// The partitioner of a librdkafka `partitioner` name (`None`: one
    /// vitrina does not offer).
    pub fn of(name: &str) -> Option<Partitioner> {
        match name {
            "murmur2_random" | "murmur2" => Some(Partitioner::Murmur2),
            "consistent_random" | "consistent" => Some(Partitioner::Crc32),
            "fnv1a_random" | "fnv1a" => Some(Partitioner::Fnv1a),
            _ => None,
        }
    }

    /// The partition of `key` among `partitions` (at least 1).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let h = match self {
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
            Partitioner::Crc32 => crc32fast::hash(key),
            Partitioner::Fnv1a => fnv1a(key),
        };
        (h % n) as i32
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// 32-bit FNV-1a as librdkafka's `rd_fnv1a` gives it: the absolute value
/// of the hash read as a signed integer (Sarama's hash partitioner).
fn fnv1a(data: &[u8]) -> u32 {
    let h = data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ *b as u32).wrapping_mul(0x0100_0193)
    });
    (h as i32).wrapping_abs() as u32
}

/// Partition counts of `topics`, read every `every` on `ends`' client and
/// published when they change (a topic grows; Kafka never shrinks one).
/// A failed reading is logged and tried again at the next round.
pub fn watch_partitions(
    ends: std::sync::Arc<Ends>,
    topics: Vec<String>,
    first: HashMap<String, i32>,
    every: Duration,
    cancel: CancellationToken,
) -> watch::Receiver<HashMap<String, i32>> {
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match ends.partitions(&topics).await {
                Ok(counts) => publish_counts(&tx, counts),
                Err(e) => {
                    tracing::warn!(error = %e, "reading partition counts failed; trying again")
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Publishes `counts` where a topic has more partitions than `tx` holds.
pub fn publish_counts(tx: &watch::Sender<HashMap<String, i32>>, counts: HashMap<String, i32>) {
    tx.send_if_modified(|held| {
        let mut grew = false;
        for (t, n) in counts {
            let old = held.entry(t).or_insert(0);
            if n > *old {
                *old = n;
                grew = true;
            }
        }
        grew
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's own partitioners (C, not ours) on the same keys.
    #[test]
    fn keys_land_where_librdkafka_puts_them() {
        use rdkafka::bindings as rd;
        let keys: Vec<String> = (0..2_000)
            .map(|i| {
                format!(
                    "school-{}:{:x}",
                    i % 37,
                    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                )
            })
            .chain(["".to_string(), "a".into(), "ab".into(), "abc".into()])
            .collect();
        for n in [1, 3, 6, 7, 12] {
            for k in &keys {
                let (p, len) = (k.as_ptr() as *const std::ffi::c_void, k.len());
                // SAFETY: librdkafka's partitioners only read the key; the
                // topic handle and opaques are unused by these three.
                let (m, c, f) = unsafe {
                    (
                        rd::rd_kafka_msg_partitioner_murmur2(
                            std::ptr::null(),
                            p,
                            len,
                            n,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        ),
                        rd::rd_kafka_msg_partitioner_consistent(
                            std::ptr::null(),
                            p,
                            len,
                            n,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        ),
                        rd::rd_kafka_msg_partitioner_fnv1a(
                            std::ptr::null(),
                            p,
                            len,
                            n,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        ),
                    )
                };
                let b = k.as_bytes();
                assert_eq!(
                    Partitioner::Murmur2.partition(b, n),
                    m,
                    "murmur2 {k:?} of {n}"
                );
                assert_eq!(Partitioner::Crc32.partition(b, n), c, "crc32 {k:?} of {n}");
                assert_eq!(Partitioner::Fnv1a.partition(b, n), f, "fnv1a {k:?} of {n}");
            }
        }
    }

    #[test]
    fn growth_is_published_and_nothing_else() {
        let (tx, mut rx) = watch::channel(HashMap::from([("a".to_string(), 3)]));
        rx.borrow_and_update();
        publish_counts(&tx, HashMap::from([("a".to_string(), 3)]));
        assert!(!rx.has_changed().unwrap());
        publish_counts(&tx, HashMap::from([("a".to_string(), 2)]));
        assert!(!rx.has_changed().unwrap());
        publish_counts(&tx, HashMap::from([("a".to_string(), 5)]));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update()["a"], 5);
    }
}
