//! Connecting to PostgreSQL with tokio-postgres: one place that spawns the
//! connection task and turns connection failures into errors that say where.

use tokio_postgres::{Client, NoTls};

use crate::error::{pg_kind, Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {}\nhint: is the server up (`vitrina status`)? are the host, port, user and password of its section (journal or showcase) right?", describe_error(.source))]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}: {}", describe_error(.source))]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Classify for PgError {
    fn kind(&self) -> ErrorKind {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => pg_kind(source),
        }
    }
}

impl PgError {
    pub fn query(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let what = what.into();
        move |source| PgError::Query { what, source }
    }
}

/// The server's message, code, detail and hint when there is one (the plain
/// `Display` of tokio-postgres says only "db error").
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        cfg.get_dbname().unwrap_or("(default database)")
    )
}

/// Connects and spawns the connection task on the current runtime.
pub async fn connect(cfg: &tokio_postgres::Config) -> Result<Client, PgError> {
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|source| PgError::Connect {
            target: describe(cfg),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `database` if it does not exist (connecting to `postgres`).
pub async fn ensure_database(
    admin: &tokio_postgres::Config,
    database: &str,
) -> Result<bool, PgError> {
    let mut cfg = admin.clone();
    cfg.dbname("postgres");
    let client = connect(&cfg).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(PgError::query("looking up the database"))?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", ident(database)))
        .await
    {
        Ok(()) => Ok(true),
        // Lost a race with another creator: fine.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(PgError::Query {
            what: format!("creating database {database}"),
            source: e,
        }),
    }
}
