//! The operational HTTP endpoint of a long-running command: `/metrics`
//! (Prometheus text), `/healthz` (the main loop is turning) and `/readyz`
//! (the command does its job: capture streams, the projector is within its
//! SLA). A few dozen lines of HTTP/1.1 rather than a web framework: one
//! request per connection, GET only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Histogram buckets (seconds) shared by every latency histogram.
pub const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0,
];

/// Liveness and readiness of one stage, set by its loops and read by
/// `/healthz` and `/readyz`. Each stage owns one: capture and the projector
/// in one process do not overwrite each other's.
pub struct Health {
    /// Unix seconds of the main loop's last turn.
    beat: AtomicI64,
    /// Why the command is not ready, or None when it is.
    not_ready: Mutex<Option<String>>,
    /// A loop silent for longer than this is reported dead.
    stall_after: Duration,
}

impl Health {
    pub fn new(stall_after: Duration) -> Health {
        Health {
            beat: AtomicI64::new(chrono::Utc::now().timestamp()),
            not_ready: Mutex::new(Some("starting".into())),
            stall_after,
        }
    }

    /// The main loop turned.
    pub fn beat(&self) {
        self.beat
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    pub fn ready(&self) {
        *self.not_ready.lock().unwrap() = None;
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready.lock().unwrap().is_none()
    }

    pub fn not_ready(&self, why: impl Into<String>) {
        *self.not_ready.lock().unwrap() = Some(why.into());
    }

    fn live(&self) -> Result<(), String> {
        let silent = chrono::Utc::now().timestamp() - self.beat.load(Ordering::Relaxed);
        if silent as u64 > self.stall_after.as_secs() {
            Err(format!("main loop silent for {silent} s"))
        } else {
            Ok(())
        }
    }

    fn readiness(&self) -> Result<(), String> {
        self.live()?;
        match self.not_ready.lock().unwrap().as_ref() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

/// Installs the metrics recorder and serves `/metrics`, `/healthz` and
/// `/readyz` on `listen` (`host:port`; port 0 picks a free one). Returns
/// the address bound.
pub async fn serve(listen: &str, health: Arc<Health>) -> Result<SocketAddr, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("metrics_listen `{listen}` is not host:port: {e}"))?;
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {listen}: {e}\nhint: another process holds the port; set a free one in metrics_listen"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (handle, health) = (handle.clone(), health.clone());
            tokio::spawn(async move {
                let _ = respond(sock, &handle, &health).await;
            });
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn respond(
    mut sock: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    health: &Health,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", handle.render()),
        ("GET", "/healthz") => match health.live() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", "/readyz") => match health.readiness() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(reply.as_bytes()).await?;
    sock.shutdown().await
}
