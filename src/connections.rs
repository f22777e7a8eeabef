//! Where the pipeline's services are: the journal database, the showcase
//! database and Kafka, each described by configuration and built here, in
//! one place.
//!
//! ```text
//!   [journal]  ──┐
//!   [showcase] ──┼── Connections::resolve ──▶ PgEndpoint (journal), PgEndpoint (showcase), KafkaEndpoint
//!   [kafka]    ──┘          ▲
//!                           └── LocalServices: what the local dev stack runs (a provider, not a dependency)
//! ```
//!
//! Invariants:
//! - A section with a `host` names an external server; a section without
//!   one is provided by the local stack, whose ports arrive as
//!   [`LocalServices`]. This module knows nothing else about the stack.
//! - Passwords stay in [`Secret`]: no `Debug`, `Display` or URL made here
//!   prints one.

use std::time::Duration;

use crate::config::{Config, DatabaseConfig, Secret};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionError {
    #[error("{section} database has no host and the local stack's PostgreSQL is not running\nhint: run `vitrina up`, or set {section}.host (and port, user, password) for an external server")]
    NoLocalPostgres { section: &'static str },
    #[error("no Kafka brokers: kafka.brokers is unset and the local stack's broker is not running\nhint: run `vitrina up`, or set kafka.brokers")]
    NoKafka,
}

/// What the local development stack runs, as its provider found it.
#[derive(Debug, Clone, Default)]
pub struct LocalServices {
    /// Host, port and superuser of the local PostgreSQL cluster.
    pub postgres: Option<(String, u16, String)>,
    /// Bootstrap servers of the local broker.
    pub kafka: Option<String>,
}

/// One PostgreSQL database and how to reach it.
#[derive(Debug, Clone)]
pub struct PgEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<Secret>,
    pub database: String,
    pub connect_timeout: Duration,
    /// Provided by the local development stack (not a region's server).
    pub local: bool,
    pub tls: crate::pg::TlsSettings,
}

impl PgEndpoint {
    fn resolve(
        section: &'static str,
        c: &DatabaseConfig,
        local: &LocalServices,
    ) -> Result<PgEndpoint, ConnectionError> {
        let (host, port, user, local_stack) = match &c.host {
            Some(h) => (h.clone(), c.port.unwrap_or(5432), c.user.clone(), false),
            None => {
                let (h, p, u) = local
                    .postgres
                    .clone()
                    .ok_or(ConnectionError::NoLocalPostgres { section })?;
                (h, p, u, true)
            }
        };
        Ok(PgEndpoint {
            host,
            port,
            user,
            password: c.password.clone(),
            database: c.database.clone(),
            connect_timeout: Duration::from_secs(c.connect_timeout_s.max(1)),
            local: local_stack,
            tls: crate::pg::TlsSettings {
                // The local stack's cluster has no certificate.
                mode: c
                    .sslmode
                    .or(local_stack.then_some(crate::pg::SslMode::Disable)),
                root_cert: c.sslrootcert.clone(),
                client_cert: c.sslcert.clone(),
                client_key: c.sslkey.clone(),
            },
        })
    }

    /// The password, for clients that take it from the environment
    /// (`PGPASSWORD` of pg_recvlogical).
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The same server and role, another database (`postgres` for admin work).
    pub fn with_database(&self, database: &str) -> PgEndpoint {
        PgEndpoint {
            database: database.to_string(),
            ..self.clone()
        }
    }

    /// A connection target: the tokio-postgres configuration and its TLS.
    pub fn config(&self) -> crate::pg::Target {
        crate::pg::Target {
            config: self.pg_config(),
            tls: self.tls.clone(),
        }
    }

    fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .connect_timeout(self.connect_timeout)
            .application_name("vitrina");
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }

    /// A libpq URL for a replication connection (pg_walstream); carries the
    /// password, so it is never logged.
    pub fn replication_url(&self, application_name: &str) -> String {
        let auth = match &self.password {
            Some(p) => format!(
                "{}:{}",
                percent_encode(&self.user),
                percent_encode(p.expose())
            ),
            None => percent_encode(&self.user),
        };
        let mut url = format!(
            "postgresql://{auth}@{}:{}/{}?replication=database&application_name={}&connect_timeout={}&sslmode={}",
            self.host,
            self.port,
            percent_encode(&self.database),
            percent_encode(application_name),
            self.connect_timeout.as_secs(),
            self.tls.mode().as_str()
        );
        if let Some(ca) = &self.tls.root_cert {
            url.push_str(&format!(
                "&sslrootcert={}",
                percent_encode(&ca.to_string_lossy())
            ));
        }
        url
    }

    /// A URL for people and tools like psql (password left out).
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    /// `host:port/database`, for messages.
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }
}

/// A Kafka cluster and the client settings every client shares.
#[derive(Debug, Clone)]
pub struct KafkaEndpoint {
    pub brokers: String,
    /// Consumer-group session timeout (librdkafka `session.timeout.ms`).
    pub session_timeout_ms: u32,
    /// `kafka.properties`: security and tuning for every client.
    pub properties: crate::config::KafkaProperties,
    /// Replicas of the topics vitrina creates, and the fewest it accepts.
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics, and the fewest it accepts.
    pub min_insync_replicas: i32,
    /// librdkafka `partitioner` of every producer.
    pub partitioner: String,
    /// The broker software (`kafka.broker`): its workarounds.
    pub broker: crate::config::Broker,
}

impl KafkaEndpoint {
    /// `brokers` with the default client settings.
    pub fn new(brokers: &str) -> KafkaEndpoint {
        KafkaEndpoint {
            brokers: brokers.to_string(),
            session_timeout_ms: crate::config::KafkaConfig::default().session_timeout_ms,
            properties: Default::default(),
            replication_factor: 1,
            min_insync_replicas: 1,
            partitioner: crate::config::KafkaConfig::default().partitioner,
            broker: crate::config::Broker::Kafka,
        }
    }

    /// The base configuration of every client (producer, consumer, admin).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties.0 {
            c.set(k, v);
        }
        c
    }
}

/// The three services, resolved from configuration and the local stack.
#[derive(Debug, Clone)]
pub struct Connections {
    journal: Result<PgEndpoint, ConnectionError>,
    showcase: Result<PgEndpoint, ConnectionError>,
    kafka: Option<KafkaEndpoint>,
}

impl Connections {
    /// External services from `cfg`, the rest from `local`. A service that
    /// is neither configured nor running locally is reported by its
    /// accessor, to the commands that need it (capture needs no showcase).
    pub fn resolve(cfg: &Config, local: &LocalServices) -> Connections {
        // A configured cluster gets production's durability; the local
        // stack's single broker cannot hold more than one replica.
        let (rf, min_isr) = match cfg.kafka.brokers {
            Some(_) => (3, 2),
            None => (1, 1),
        };
        let kafka = cfg
            .kafka
            .brokers
            .clone()
            .or_else(|| local.kafka.clone())
            .map(|brokers| KafkaEndpoint {
                brokers,
                session_timeout_ms: cfg.kafka.session_timeout_ms,
                properties: cfg.kafka.properties.clone(),
                replication_factor: cfg.kafka.replication_factor.unwrap_or(rf),
                min_insync_replicas: cfg.kafka.min_insync_replicas.unwrap_or(min_isr),
                partitioner: cfg.kafka.partitioner.clone(),
                broker: cfg.kafka.broker,
            });
        Connections {
            journal: PgEndpoint::resolve("journal", &cfg.journal, local),
            showcase: PgEndpoint::resolve("showcase", &cfg.showcase, local),
            kafka,
        }
    }

    /// The journal database, or an error that says how to provide it.
    pub fn journal(&self) -> Result<&PgEndpoint, ConnectionError> {
        self.journal.as_ref().map_err(Clone::clone)
    }

    /// The showcase database, or an error that says how to provide it.
    pub fn showcase(&self) -> Result<&PgEndpoint, ConnectionError> {
        self.showcase.as_ref().map_err(Clone::clone)
    }

    /// Kafka, or an error that says how to provide it.
    pub fn kafka(&self) -> Result<&KafkaEndpoint, ConnectionError> {
        self.kafka.as_ref().ok_or(ConnectionError::NoKafka)
    }
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded
/// (URL userinfo, paths, query values).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalServices {
        LocalServices {
            postgres: Some(("127.0.0.1".into(), 5999, "vitrina".into())),
            kafka: Some("127.0.0.1:9999".into()),
        }
    }

    #[test]
    fn journal_and_showcase_resolve_independently() {
        let mut cfg = Config::default();
        cfg.showcase.host = Some("showcase.example".into());
        cfg.showcase.user = "projector".into();
        cfg.showcase.password = Some(Secret::new("s3cret/with:specials"));
        let c = Connections::resolve(&cfg, &local());
        let (j, s) = (c.journal().unwrap(), c.showcase().unwrap());
        assert_eq!((j.host.as_str(), j.port), ("127.0.0.1", 5999));
        assert!(j.local && !s.local);
        assert_eq!(s.user, "projector");
        assert_eq!(s.port, 5432);
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!s.url().contains("s3cret"));
        assert!(s
            .replication_url("x")
            .contains("projector:s3cret%2Fwith%3Aspecials@"));
    }

    #[test]
    fn a_local_section_without_a_running_stack_says_how_to_start_it() {
        let c = Connections::resolve(&Config::default(), &LocalServices::default());
        let e = c.journal().unwrap_err();
        assert!(e.to_string().contains("vitrina up"), "{e}");
        let mut cfg = Config::default();
        cfg.journal.host = Some("j".into());
        let c = Connections::resolve(&cfg, &LocalServices::default());
        assert!(c.journal().is_ok(), "capture needs no showcase");
        assert!(c.showcase().is_err());
        assert!(c.kafka().is_err());
    }
}
