//! HTTP to the RDM upload service: `POST` a file, `GET` a request's status.
//!
//! ```text
//!   POST /{version}/datamarts/{datamart}/tables/{table}/{upload|delete}   text/csv → "request id"
//!   GET  /{version}/requests/{id}/status                                  → {"code": n, "description": "…"}
//! ```
//!
//! Errors sort into three kinds ([`RdmError`]): the service unreachable or
//! failing (connection, timeout, 5xx, 429) is transient and retried with
//! backoff by the caller; a refused token (401, 403) is definite and stops
//! the client; any other 4xx answers the file itself and is its rejection.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{RdmConfig, Secret};
use crate::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum RdmError {
    #[error("the RDM upload service at {url} is unreachable or failing: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("the RDM upload service refused vitrina's credentials (HTTP {status} on {url})\nhint: check rdm.token or rdm.token_file (a bearer token the service issued for this source system)")]
    Unauthorized { url: String, status: u16 },
    #[error("the RDM upload service answered {url} with HTTP {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the RDM upload service answered {url} with something that is not {expected}: {body}")]
    Malformed {
        url: String,
        expected: &'static str,
        body: String,
    },
    #[error("rdm TLS settings: {0}")]
    Tls(String),
}

impl Classify for RdmError {
    fn kind(&self) -> ErrorKind {
        match self {
            RdmError::Unavailable { .. } => ErrorKind::Transient,
            // A garbled answer from a proxy in between is as likely as a
            // broken service; asking again is safe (a status poll reads, a
            // resent file is byte-identical).
            RdmError::Malformed { .. } => ErrorKind::Transient,
            RdmError::Unauthorized { .. } | RdmError::Refused { .. } | RdmError::Tls(_) => {
                ErrorKind::Definite
            }
        }
    }
}

/// A request's status as the service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStatus {
    pub code: i64,
    pub description: String,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    version: String,
    datamart: String,
    token: Option<Secret>,
}

/// At most this much of an answer's body goes into an error or a dead letter.
const BODY_LIMIT: usize = 2000;

fn truncate(mut s: String) -> String {
    if s.len() > BODY_LIMIT {
        let mut end = BODY_LIMIT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Client {
    pub fn new(cfg: &RdmConfig) -> Result<Client, RdmError> {
        let tls = tls_config(cfg)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(10_000)))
            .user_agent(concat!("vitrina/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RdmError::Tls(e.to_string()))?;
        Ok(Client {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            version: cfg.api_version.clone(),
            datamart: cfg.datamart.clone(),
            token: cfg.token.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t.expose()),
            None => r,
        }
    }

    /// Sends one file; the service's request id.
    pub async fn upload(
        &self,
        table: &str,
        operation: super::Operation,
        body: String,
    ) -> Result<String, RdmError> {
        let url = format!(
            "{}/{}/datamarts/{}/tables/{table}/{}",
            self.base,
            self.version,
            self.datamart,
            operation.as_str()
        );
        let response = self
            .request(reqwest::Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        let body = read(&url, response).await?;
        // The id is a JSON string; a bare id is taken as it is.
        let id = match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(serde_json::Value::String(s)) => s,
            _ => body.trim().to_string(),
        };
        if id.is_empty() || id.len() > 200 || id.contains(['/', '?', '#', ' ']) {
            return Err(RdmError::Malformed {
                url,
                expected: "a request id",
                body: truncate(body),
            });
        }
        Ok(id)
    }

    /// The status of request `id`.
    pub async fn status(&self, id: &str) -> Result<RequestStatus, RdmError> {
        let url = format!("{}/{}/requests/{id}/status", self.base, self.version);
        let response = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let body = read(&url, response).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|_| RdmError::Malformed {
                url: url.clone(),
                expected: "a JSON status",
                body: truncate(body.clone()),
            })?;
        let code = v.get("code").and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
        });
        let Some(code) = code else {
            return Err(RdmError::Malformed {
                url,
                expected: "a status with a numeric `code`",
                body: truncate(body),
            });
        };
        let description = match v.get("description") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        Ok(RequestStatus {
            code,
            description: truncate(description),
        })
    }
}

/// The body of a 2xx answer, or the error its status means.
async fn read(
    url: &str,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<String, RdmError> {
    let unavailable = |reason: String| RdmError::Unavailable {
        url: url.to_string(),
        reason,
    };
    let response = response.map_err(|e| unavailable(describe(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| unavailable(describe(&e)))?;
    if status.is_success() {
        return Ok(body);
    }
    let code = status.as_u16();
    Err(match code {
        401 | 403 => RdmError::Unauthorized {
            url: url.to_string(),
            status: code,
        },
        408 | 429 | 500..=599 => unavailable(format!("HTTP {code}: {}", truncate(body))),
        _ => RdmError::Refused {
            url: url.to_string(),
            status: code,
            body: truncate(body),
        },
    })
}

/// A reqwest error with its causes (reqwest's own text omits them).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// rustls with the public web roots, plus `rdm.ca_file` when set.
fn tls_config(cfg: &RdmConfig) -> Result<rustls::ClientConfig, RdmError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let bad = |m: String| RdmError::Tls(format!("rdm.ca_file {}: {m}", path.display()));
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("holds no certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RdmError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
