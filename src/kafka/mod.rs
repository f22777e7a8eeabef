//! Kafka plumbing shared by every stage, one module per job: the client
//! context and errors (here), topic names, topic administration, the
//! producer and the writers of bookkeeping records, readers of offsets and
//! records, and the broker workarounds.

use rdkafka::{config::RDKafkaLogLevel, ClientContext};

use crate::error::{kafka_kind, Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create a Kafka client for {brokers}: {source}\nhint: is the broker up (`vitrina status`)? is kafka.brokers right?")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create topic {topic}: {source}\nhint: the role needs CREATE on the cluster, or create the topic beforehand")]
    Topic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Create(Box<CreateRefused>),
    #[error("existing topics are not as vitrina needs them; nothing was changed:\n{0}\nhint: run the commands above (docs/operations.md, \"Provisioning topics for vitrina\"), then start again; `vitrina check kafka` prints this report without starting a stage")]
    TopicSettings(String),
    #[error("Kafka: {what}: {source}\nhint: is the broker up (`vitrina status`)? is kafka.brokers right?")]
    Metadata {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An operation of a client (consuming, producing a bookkeeping
    /// record, reading metadata) failed.
    #[error("Kafka: {what}: {source}")]
    Op {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka refused this client: {0}\nhint: no retry cures this; check [kafka.properties]: ssl.ca.location must name the CA that signed the broker's certificate (and the broker's name must match it), sasl.mechanism, sasl.username and sasl.password must be what the cluster expects")]
    Refused(String),
    #[error("Kafka task failed: {0}")]
    Task(String),
    #[error("Kafka: {0}\nhint: is the broker up and answering (`vitrina status`)?")]
    Timeout(String),
}

impl Classify for KafkaError {
    fn kind(&self) -> ErrorKind {
        match self {
            KafkaError::Client { source, .. }
            | KafkaError::Topic { source, .. }
            | KafkaError::Metadata { source, .. }
            | KafkaError::Op { source, .. } => kafka_kind(source),
            KafkaError::Create(c) => kafka_kind(&c.source),
            KafkaError::Refused(_) | KafkaError::Task(_) | KafkaError::TopicSettings(_) => {
                ErrorKind::Definite
            }
            KafkaError::Timeout(_) => ErrorKind::Transient,
        }
    }
}

/// Topics that could not be created, with the commands that create them.
#[derive(Debug, thiserror::Error)]
#[error("cannot create topic {topic}: {source}\nhint: a principal without CREATE needs the topics made beforehand; the operator runs:\n  {create}\n(`vitrina check kafka` lists what is missing)")]
pub struct CreateRefused {
    pub topic: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
    pub create: String,
}

impl KafkaError {
    /// `what` (an operation, said as "reading the event topics") failed.
    pub fn op(what: impl Into<String>, source: rdkafka::error::KafkaError) -> KafkaError {
        KafkaError::Op {
            what: what.into(),
            source,
        }
    }
}

/// The context of every client vitrina makes: librdkafka's log lines and
/// errors (a TLS handshake refused, a broker unreachable) go to vitrina's
/// log with the endpoint and librdkafka's reason.
#[derive(Clone, Default)]
pub struct Context;

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Context {}

/// librdkafka's log line, at its level.
/// `fetch.queue.backoff.ms` of the consumers that read the log in bulk
/// (projector, replay, ProStore feed). librdkafka stops fetching a
/// partition whose local queue is full and, by default, looks again only
/// a second later; a reader that drains its queue in batches then waits
/// on an empty queue (measured: a catch-up gather waiting its full 500 ms
/// every third batch of 50,000).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "20";

pub fn log_line(level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "rdkafka", facility = fac, "{message}")
        }
        L::Warning => tracing::warn!(target: "rdkafka", facility = fac, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "rdkafka", facility = fac, "{message}"),
        L::Debug => tracing::debug!(target: "rdkafka", facility = fac, "{message}"),
    }
}

/// A client-level error (the broker unreachable, a handshake refused).
/// A refusal no retry cures is recorded for [`refused`].
pub fn client_error(error: &rdkafka::error::KafkaError, reason: &str) {
    tracing::warn!(error = %error, reason, "kafka client error");
    if is_refusal(error, reason) {
        refusals().send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(reason.to_string());
            }
            first
        });
    }
}

/// Whether a client error is one that retrying cannot cure: the broker's
/// certificate not trusted, or SASL credentials refused. librdkafka gives
/// one code (`__SSL`) for every TLS failure; only its reason separates a
/// certificate refused from a connection dropped mid-handshake (a broker
/// restarting), which stays transient.
pub fn is_refusal(error: &rdkafka::error::KafkaError, reason: &str) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    // A connection that dropped during the handshake says so in its reason.
    let dropped = [
        "transport failure",
        "Disconnected",
        "timed out",
        "Connection refused",
    ]
    .iter()
    .any(|d| reason.contains(d));
    match error.rdkafka_error_code() {
        Some(C::Authentication | C::SaslAuthenticationFailed) => !dropped,
        Some(C::SSL) => reason.contains("certificate") && !dropped,
        _ => false,
    }
}

/// The first refusal this process met (one process is one stage).
fn refusals() -> &'static tokio::sync::watch::Sender<Option<String>> {
    static R: std::sync::OnceLock<tokio::sync::watch::Sender<Option<String>>> =
        std::sync::OnceLock::new();
    R.get_or_init(|| tokio::sync::watch::Sender::new(None))
}

/// Resolves when a Kafka client of this process has been refused (see
/// [`is_refusal`]): a stage races its run against it and stops with
/// [`KafkaError::Refused`], a definite error, instead of retrying for ever.
pub async fn refused() -> KafkaError {
    let mut rx = refusals().subscribe();
    let reason = rx
        .wait_for(|r| r.is_some())
        .await
        .map(|r| r.clone().unwrap_or_default());
    match reason {
        Ok(reason) => KafkaError::Refused(reason),
        // The sender is a static: never dropped.
        Err(_) => std::future::pending().await,
    }
}

mod admin;
mod group;
mod names;
mod partition;
mod produce;
pub mod quirks;
mod read;

pub use admin::*;
pub use group::*;
pub use names::*;
pub use partition::*;
pub use produce::*;
pub use quirks::{fetch_position, rewind, Order, FETCH_LOOKBACK};
pub use read::*;

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError as K;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn certificate_and_credential_refusals_are_told_from_dropped_connections() {
        let ssl = K::Global(C::SSL);
        assert!(is_refusal(
            &ssl,
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
        ));
        // A broker restarting mid-handshake: retry.
        assert!(!is_refusal(
            &ssl,
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: Disconnected"
        ));
        assert!(is_refusal(
            &K::Global(C::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error"
        ));
        // SASL over a connection that dropped: retry.
        assert!(!is_refusal(
            &K::Global(C::Authentication),
            "sasl_ssl://127.0.0.1:39391/bootstrap: SASL PLAIN mechanism handshake failed: Local: Broker transport failure: broker's supported mechanisms: (n/a) (after 0ms in state DOWN)"
        ));
        assert!(!is_refusal(
            &K::Global(C::AllBrokersDown),
            "1/1 brokers are down"
        ));
    }
}
