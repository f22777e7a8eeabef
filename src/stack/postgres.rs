//! The local PostgreSQL cluster: Debian's server binaries, a data directory
//! of our own, `wal_level=logical`, loopback only.
//!
//! Invariants:
//! - `start` is idempotent: a running cluster is left alone.
//! - The server never runs as root: when vitrina is root, `initdb`, `pg_ctl`
//!   and the server run as `stack.pg_os_user` and the cluster directory is
//!   handed to that user.
//! - Settings vitrina owns live in `vitrina.conf` inside the data directory,
//!   rewritten at each start; `postgresql.conf` only includes it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{self, chown_tree, is_root, os_user, pid_alive};
use super::StackError;
use crate::config::StackConfig;

/// The superuser `initdb` creates; also the user vitrina connects as.
pub const SUPERUSER: &str = "vitrina";

pub struct LocalPostgres {
    pub bin_dir: PathBuf,
    pub root: PathBuf,
    run_as: Option<(u32, u32)>,
    max_slot_wal_keep_size_mb: i64,
    ready_timeout: Duration,
}

impl LocalPostgres {
    pub fn new(cfg: &StackConfig, root: PathBuf) -> Result<Self, StackError> {
        let bin_dir = find_bin_dir(cfg)?;
        let run_as = if is_root() {
            Some(os_user(&cfg.pg_os_user)?)
        } else {
            None
        };
        Ok(LocalPostgres {
            bin_dir,
            root,
            run_as,
            max_slot_wal_keep_size_mb: cfg.pg_max_slot_wal_keep_size_mb,
            ready_timeout: Duration::from_secs(cfg.ready_timeout_s),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join(program));
        c.current_dir(&self.root)
            .env("HOME", &self.root)
            .env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, mut c: Command, what: &str) -> Result<String, StackError> {
        let out = c.output().map_err(|e| StackError::Spawn {
            what: what.to_string(),
            source: e,
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(StackError::Failed {
                what: what.to_string(),
                output: text,
                log: self.log_path(),
            });
        }
        Ok(text)
    }

    pub fn initialized(&self) -> bool {
        self.data_dir().join("PG_VERSION").is_file()
    }

    /// The server's pid when it runs (from `postmaster.pid`).
    pub fn running_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// The port the running server listens on (line 4 of `postmaster.pid`).
    pub fn running_port(&self) -> Option<u16> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().nth(3)?.trim().parse().ok()
    }

    fn prepare_dirs(&self) -> Result<(), StackError> {
        for d in [self.root.clone(), self.socket_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| StackError::Io {
                path: d.clone(),
                source: e,
            })?;
        }
        if let Some((uid, gid)) = self.run_as {
            chown_tree(&self.root, uid, gid).map_err(|e| StackError::Io {
                path: self.root.clone(),
                source: e,
            })?;
        }
        Ok(())
    }

    pub fn init(&self) -> Result<(), StackError> {
        self.prepare_dirs()?;
        if self.initialized() {
            return Ok(());
        }
        let mut c = self.cmd("initdb");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync"]);
        self.run(c, "initdb")?;
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| StackError::Io {
            path: conf.clone(),
            source: e,
        })?;
        text.push_str("\n# settings owned by vitrina, rewritten at each start\ninclude_if_exists = 'vitrina.conf'\n");
        std::fs::write(&conf, text).map_err(|e| StackError::Io {
            path: conf.clone(),
            source: e,
        })?;
        Ok(())
    }

    fn write_settings(&self, port: u16) -> Result<(), StackError> {
        let path = self.data_dir().join("vitrina.conf");
        let text = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = logical\n\
             max_replication_slots = 64\n\
             max_wal_senders = 64\n\
             max_connections = 300\n\
             max_slot_wal_keep_size = {keep}\n\
             shared_buffers = '512MB'\n\
             max_wal_size = '4GB'\n\
             checkpoint_timeout = '15min'\n\
             wal_sender_timeout = '60s'\n\
             log_min_messages = warning\n\
             log_line_prefix = '%m [%p] %d '\n",
            sock = self.socket_dir().display(),
            keep = if self.max_slot_wal_keep_size_mb < 0 {
                "-1".to_string()
            } else {
                format!("'{}MB'", self.max_slot_wal_keep_size_mb)
            },
        );
        std::fs::write(&path, text).map_err(|e| StackError::Io {
            path: path.clone(),
            source: e,
        })?;
        if let Some((uid, gid)) = self.run_as {
            let _ = std::os::unix::fs::chown(&path, Some(uid), Some(gid));
        }
        Ok(())
    }

    /// Starts the server on `port` unless it already runs; returns the port
    /// it listens on.
    pub fn start(&self, port: u16) -> Result<u16, StackError> {
        self.init()?;
        if self.running_pid().is_some() {
            if let Some(p) = self.running_port() {
                return Ok(p);
            }
        }
        self.write_settings(port)?;
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t"])
            .arg(self.ready_timeout.as_secs().to_string())
            .arg("start");
        self.run(c, "pg_ctl start")?;
        let ok = process::wait_until(self.ready_timeout, || process::port_accepts(port));
        if !ok {
            return Err(StackError::NotReady {
                what: format!("postgres on 127.0.0.1:{port}"),
                log: self.log_path(),
                tail: process::tail(&self.log_path(), 20),
            });
        }
        Ok(port)
    }

    /// Creates database `name` on the running server unless it exists.
    pub fn create_database(&self, port: u16, name: &str) -> Result<(), StackError> {
        let mut c = self.cmd("createdb");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SUPERUSER,
            name,
        ]);
        match self.run(c, &format!("createdb {name}")) {
            Err(StackError::Failed { output, .. }) if output.contains("already exists") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// `pg_ctl stop -m fast`, waiting at most `timeout_s`, with no fallback:
    /// an error when the server did not stop in time.
    pub fn stop_fast(&self, timeout_s: u64) -> Result<(), StackError> {
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t"])
            .arg(timeout_s.to_string())
            .arg("stop");
        self.run(c, "pg_ctl stop -m fast").map(|_| ())
    }

    pub fn stop(&self) -> Result<bool, StackError> {
        if self.running_pid().is_none() {
            return Ok(false);
        }
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        if self.run(c, "pg_ctl stop").is_err() {
            // A replication client that does not read can hold a fast
            // shutdown; the local cluster is ours to stop.
            self.stop_immediate()?;
        }
        Ok(true)
    }

    /// `pg_ctl stop -m immediate`: the server quits without a checkpoint, as
    /// in a crash, and recovers from its WAL at the next start.
    pub fn stop_immediate(&self) -> Result<(), StackError> {
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        self.run(c, "pg_ctl stop -m immediate").map(|_| ())
    }
}

/// Newest `/usr/lib/postgresql/<v>/bin`, else `pg_config --bindir`, else the
/// directory of `initdb` on PATH.
fn find_bin_dir(cfg: &StackConfig) -> Result<PathBuf, StackError> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = &cfg.pg_bin_dir {
        return if has_tools(d) {
            Ok(d.clone())
        } else {
            Err(StackError::MissingBinary {
                what: format!("initdb and pg_ctl in stack.pg_bin_dir = {}", d.display()),
                hint: "point stack.pg_bin_dir at a PostgreSQL bin directory, or unset it",
            })
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&d) {
            return Ok(d);
        }
    }
    if let Some(initdb) = process::find_executable(Path::new("initdb")) {
        if let Some(d) = initdb.parent() {
            if has_tools(d) {
                return Ok(d.to_path_buf());
            }
        }
    }
    Err(StackError::MissingBinary {
        what: "PostgreSQL server binaries (initdb, pg_ctl)".into(),
        hint:
            "run scripts/bootstrap (it runs `apt-get install postgresql`), or set stack.pg_bin_dir",
    })
}
