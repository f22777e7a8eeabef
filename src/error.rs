//! One error model for every stage: each error says whether it is
//! **transient** (the same call may succeed later: retry with backoff) or
//! **definite** (retrying cannot help: stop with the message, or dead-letter
//! the input). Retry policies read [`Classify::kind`], never a message.
//!
//! Invariants:
//! - The kind is decided where the error is made, from structured data
//!   (SQLSTATE classes, librdkafka codes, pg_walstream's own split), in one
//!   `match` per error type.
//! - Messages a user sees keep the primary / detail / hint form; this module
//!   adds nothing to them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A fault of the moment (a server restarting, a broker away, a network
    /// blip, a serialization conflict): retry with backoff.
    Transient,
    /// A fault of the input or the setup (a missing privilege, a wrong
    /// password, a bad mapping): stop with the message.
    Definite,
}

/// Errors that know their [`ErrorKind`].
pub trait Classify {
    fn kind(&self) -> ErrorKind;

    fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

/// The kind of a tokio-postgres error: lost or refused connections and the
/// SQLSTATE classes of passing trouble are transient, the rest definite.
pub fn pg_kind(e: &tokio_postgres::Error) -> ErrorKind {
    match e.code() {
        Some(code) => sqlstate_kind(code.code()),
        // A certificate the configured CA does not vouch for, or a TLS
        // setting the server refuses, stays wrong until someone fixes it.
        None if is_tls_failure(e) => ErrorKind::Definite,
        // No server error: the connection failed, closed or timed out.
        None => ErrorKind::Transient,
    }
}

/// Whether rustls refused the handshake somewhere in `e`'s chain.
pub fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// SQLSTATE classes: 08 connection exception, 40 transaction rollback
/// (serialization failure, deadlock), 53 insufficient resources, 57P0x
/// operator intervention (admin shutdown, crash shutdown, cannot connect
/// now), 55P03 lock not available, 58 system error.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    let transient = code.starts_with("08")
        || code.starts_with("40")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || code == "55P03"
        || code.starts_with("58");
    if transient {
        ErrorKind::Transient
    } else {
        ErrorKind::Definite
    }
}

/// The kind of an rdkafka error, sorted by librdkafka's codes as Vector
/// does: the broker's absence, timeouts and full queues pass; bad
/// configuration, authorization and oversize messages do not.
pub fn kafka_kind(e: &rdkafka::error::KafkaError) -> ErrorKind {
    use rdkafka::error::KafkaError as K;
    match e {
        K::ClientConfig(..)
        | K::ClientCreation(_)
        | K::Subscription(_)
        | K::SetPartitionOffset(_) => ErrorKind::Definite,
        other => match other.rdkafka_error_code() {
            Some(code) => rdkafka_code_kind(code),
            None => ErrorKind::Transient,
        },
    }
}

/// A fatal error of the idempotent producer (`_FATAL`: a sequence gap, a
/// fenced producer id) ends that producer, not the stage: a fresh producer
/// resumes safely, since capture confirms nothing it has not seen
/// acknowledged and re-sends from the confirmed position. Hence transient.
fn rdkafka_code_kind(code: rdkafka::types::RDKafkaErrorCode) -> ErrorKind {
    use rdkafka::types::RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::InvalidConfig
        | C::InvalidArgument
        | C::UnsupportedVersion
        | C::UnsupportedFeature
        | C::Conflict
        | C::Fenced
        | C::InvalidRecord
        | C::PolicyViolation
        | C::InvalidTopic => ErrorKind::Definite,
        _ => ErrorKind::Transient,
    }
}

/// Exponential backoff with a cap; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Runs `attempt` until it succeeds, fails definitely, or `cancel` fires.
/// A transient failure is logged with `what` and retried after the
/// backoff; an attempt that ran longer than `healthy_after` resets it (a
/// stage that streamed for an hour and then lost its server starts again
/// at the short delay).
pub async fn supervise<T, E, F, Fut>(
    what: &'static str,
    mut backoff: Backoff,
    healthy_after: Duration,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: Classify + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        let started = std::time::Instant::now();
        match attempt().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_transient() && !cancel.is_cancelled() => {
                if started.elapsed() >= healthy_after {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                metrics::counter!(crate::observability::STAGE_RESTARTS, "stage" => what)
                    .increment(1);
                tracing::warn!(stage = what, error = %e, retry_in_s = delay.as_secs_f64(), "transient failure; restarting");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_sort_into_kinds() {
        assert_eq!(sqlstate_kind("57P01"), ErrorKind::Transient); // admin_shutdown
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Transient); // connection_failure
        assert_eq!(sqlstate_kind("40001"), ErrorKind::Transient); // serialization_failure
        assert_eq!(sqlstate_kind("53300"), ErrorKind::Transient); // too_many_connections
        assert_eq!(sqlstate_kind("42501"), ErrorKind::Definite); // insufficient_privilege
        assert_eq!(sqlstate_kind("28P01"), ErrorKind::Definite); // invalid_password
        assert_eq!(sqlstate_kind("42P01"), ErrorKind::Definite); // undefined_table
    }

    #[test]
    fn kafka_codes_sort_into_kinds() {
        use rdkafka::error::KafkaError as K;
        use rdkafka::types::RDKafkaErrorCode as C;
        assert_eq!(
            kafka_kind(&K::MessageProduction(C::AllBrokersDown)),
            ErrorKind::Transient
        );
        assert_eq!(
            kafka_kind(&K::MessageProduction(C::QueueFull)),
            ErrorKind::Transient
        );
        assert_eq!(
            kafka_kind(&K::MessageProduction(C::MessageSizeTooLarge)),
            ErrorKind::Definite
        );
        assert_eq!(
            kafka_kind(&K::MessageProduction(C::TopicAuthorizationFailed)),
            ErrorKind::Definite
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[derive(Debug)]
    struct E(ErrorKind);
    impl Classify for E {
        fn kind(&self) -> ErrorKind {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    #[tokio::test]
    async fn supervise_retries_transient_and_stops_on_definite() {
        let cancel = CancellationToken::new();
        let b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let mut n = 0;
        let r = supervise("t", b.clone(), Duration::from_secs(60), &cancel, || {
            n += 1;
            let k = n;
            async move {
                if k < 3 {
                    Err(E(ErrorKind::Transient))
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), Some(3));
        let mut m = 0;
        let r: Result<Option<()>, E> = supervise("t", b, Duration::from_secs(60), &cancel, || {
            m += 1;
            async { Err(E(ErrorKind::Definite)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(m, 1, "a definite error is not retried");
    }
}
