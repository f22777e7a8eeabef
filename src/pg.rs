//! Connecting to PostgreSQL with tokio-postgres: one place that spawns the
//! connection task and turns connection failures into errors that say where.

use tokio_postgres::{Client, NoTls};

use crate::error::{pg_kind, Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {}\nhint: is the server up (`vitrina status`)? are the host, port, user, password and TLS settings (sslmode, sslrootcert) of its section (journal or showcase) right?", describe_error(.source))]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot set up TLS for PostgreSQL at {target}: {source}")]
    Tls {
        target: String,
        #[source]
        source: TlsError,
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
            PgError::Tls { .. } => ErrorKind::Definite,
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

/// Runs a connection's task until it closes.
fn drive<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
}

/// Connects (with the target's TLS, if it has any) and spawns the
/// connection task on the current runtime.
pub async fn connect(target: &(impl Connectable + ?Sized)) -> Result<Client, PgError> {
    let cfg = target.pg_config();
    let fail = |source| PgError::Connect {
        target: describe(cfg),
        source,
    };
    let connector = match target.tls() {
        Some(t) => t.connector().map_err(|e| PgError::Tls {
            target: describe(cfg),
            source: e,
        })?,
        None => None,
    };
    let client = match connector {
        Some(tls) => {
            let mut cfg = cfg.clone();
            cfg.ssl_mode(match target.tls().map(TlsSettings::mode) {
                Some(SslMode::Prefer) => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            let (client, conn) = cfg.connect(tls).await.map_err(fail)?;
            drive(conn);
            client
        }
        None => {
            let (client, conn) = cfg.connect(NoTls).await.map_err(fail)?;
            drive(conn);
            client
        }
    };
    Ok(client)
}

/// Quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (the server's `standard_conforming_strings`
/// is on, as it is by default since PostgreSQL 9.1).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Creates `database` if it does not exist (connecting to `postgres`).
pub async fn ensure_database<C: Connectable + Clone>(
    admin: &C,
    database: &str,
) -> Result<bool, PgError> {
    let mut cfg = admin.clone();
    cfg.set_dbname("postgres");
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

/// How a connection uses TLS, libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verifying its certificate.
    Prefer,
    /// TLS, without verifying the server's certificate.
    Require,
    /// TLS; the server's certificate must chain to `sslrootcert`.
    VerifyCa,
    /// TLS; the certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS settings of one PostgreSQL endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: Option<SslMode>,
    pub root_cert: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {message}\nhint: check the file named by the section's {key}")]
    File {
        what: &'static str,
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("sslmode {mode} needs sslrootcert: the certificate authority that signed the server's certificate")]
    NoRootCert { mode: &'static str },
    #[error("TLS client configuration: {0}")]
    Config(String),
}

impl TlsSettings {
    pub fn mode(&self) -> SslMode {
        self.mode.unwrap_or(SslMode::Prefer)
    }

    /// The rustls connector for these settings (`None`: plain TCP).
    pub fn connector(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, TlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mode = self.mode();
        if mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match mode {
            SslMode::Disable => unreachable!(),
            SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(tls::NoVerify(provider))),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let path = self.root_cert.as_ref().ok_or(TlsError::NoRootCert {
                    mode: mode.as_str(),
                })?;
                let file_err = |message: String| TlsError::File {
                    what: "CA certificate",
                    key: "sslrootcert",
                    path: path.display().to_string(),
                    message,
                };
                let mut roots = rustls::RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|e| file_err(e.to_string()))?
                {
                    roots
                        .add(cert.map_err(|e| file_err(e.to_string()))?)
                        .map_err(|e| file_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(file_err("holds no certificate".into()));
                }
                let roots = std::sync::Arc::new(roots);
                if mode == SslMode::VerifyFull {
                    builder.with_root_certificates(roots)
                } else {
                    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                        roots, provider,
                    )
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(std::sync::Arc::new(tls::ChainOnly(
                            inner,
                        )))
                }
            }
        };
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect())
                    .map_err(|e| TlsError::File {
                        what: "client certificate",
                        key: "sslcert",
                        path: cert.display().to_string(),
                        message: e.to_string(),
                    })?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                    what: "client key",
                    key: "sslkey",
                    path: key.display().to_string(),
                    message: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|e| TlsError::Config(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// A connection target: a tokio-postgres configuration and its TLS.
/// Dereferences to the configuration, so code that only reads or edits
/// the configuration (the development tools) takes it as it is.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: TlsSettings,
}

impl std::ops::Deref for Target {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::ops::DerefMut for Target {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

/// Something [`connect`] can connect to.
pub trait Connectable {
    fn pg_config(&self) -> &tokio_postgres::Config;
    fn set_dbname(&mut self, database: &str);
    fn tls(&self) -> Option<&TlsSettings> {
        None
    }
}

impl Connectable for tokio_postgres::Config {
    fn pg_config(&self) -> &tokio_postgres::Config {
        self
    }
    fn set_dbname(&mut self, database: &str) {
        self.dbname(database);
    }
}

impl Connectable for Target {
    fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }
    fn set_dbname(&mut self, database: &str) {
        self.config.dbname(database);
    }
    fn tls(&self) -> Option<&TlsSettings> {
        Some(&self.tls)
    }
}

/// Certificate verifiers for the modes rustls has no builder for.
mod tls {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    /// `prefer` and `require`: encrypted, the server not verified (libpq's
    /// meaning of those modes).
    #[derive(Debug)]
    pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must lead to the CA; the name is not checked.
    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<rustls::client::WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(CertificateError::NotValidForName))
                | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    ..
                })) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}
