//! Applied offsets committed to a Kafka consumer group, for the standard
//! tools (`kafka-consumer-groups.sh`, Burrow, kminion): informational. The
//! showcase (and each stage's own manifest) stays the source of truth for
//! where a stage resumes; a commit comes after the stage's own, and one
//! that fails is counted and tried again with the next.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};

use super::{Context, KafkaError};
use crate::connections::KafkaEndpoint;

/// At most one commit per this interval (and one more when the offsets
/// stop moving).
const EVERY: Duration = Duration::from_secs(1);

/// What was last committed for a group, and when.
#[derive(Default)]
pub struct GroupCommits {
    last: HashMap<(String, i32), i64>,
    at: Option<Instant>,
}

impl GroupCommits {
    /// Commits `offsets` (next offset to read, per partition) through
    /// `consumer`, whose `group.id` names the group, when they moved and
    /// the last commit is [`EVERY`] old. Asynchronous: never waits for the
    /// broker. `metric_stage` labels the error counter.
    pub fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        offsets: &HashMap<(String, i32), i64>,
        metric_stage: &'static str,
    ) {
        if self.at.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        let moved: Vec<_> = offsets
            .iter()
            .filter(|(k, o)| self.last.get(*k) != Some(o))
            .collect();
        if moved.is_empty() {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for ((t, p), o) in &moved {
            if tpl
                .add_partition_offset(t, *p, rdkafka::Offset::Offset(**o))
                .is_err()
            {
                return;
            }
        }
        self.at = Some(Instant::now());
        match consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                for (k, o) in moved {
                    self.last.insert(k.clone(), *o);
                }
            }
            Err(e) => {
                metrics::counter!(crate::observability::GROUP_COMMIT_ERRORS, "stage" => metric_stage)
                    .increment(1);
                tracing::debug!(error = %e, "committing applied offsets to the consumer group failed; trying again with the next");
            }
        }
    }
}

/// A client of its own for a stage that reads without a consumer (the RDM
/// client reads ranges): group `group`, never subscribed.
pub struct GroupCommitter {
    consumer: BaseConsumer<Context>,
    commits: GroupCommits,
    stage: &'static str,
}

impl GroupCommitter {
    pub fn new(
        kafka: &KafkaEndpoint,
        group: &str,
        stage: &'static str,
    ) -> Result<GroupCommitter, KafkaError> {
        let consumer = kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create_with_context(Context)
            .map_err(|e| KafkaError::Client {
                brokers: kafka.brokers.clone(),
                source: e,
            })?;
        Ok(GroupCommitter {
            consumer,
            commits: GroupCommits::default(),
            stage,
        })
    }

    /// See [`GroupCommits::commit`].
    pub fn commit(&mut self, offsets: &HashMap<(String, i32), i64>) {
        // Serves the answers of earlier commits.
        let _ = self.consumer.poll(Duration::ZERO);
        self.commits.commit(&self.consumer, offsets, self.stage);
    }
}
