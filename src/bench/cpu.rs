//! CPU seconds of the processes a bench run involves, from `/proc`: where
//! a run's time went when capture, the broker and the journal's server
//! share one machine's cores.
//!
//! A process's total is its own user + system time, what its reaped
//! children used (the kernel adds them to the parent when it waits), and
//! the totals of its live children. So a PostgreSQL cluster's postmaster
//! accounts for every backend and walsender, finished or not, and this
//! process for a `pg_recvlogical` it waited for.

use std::collections::HashMap;

/// The parts of one run measured apart.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuSplit {
    /// This process: capture runs in it (its librdkafka threads included),
    /// and a waited-for `pg_recvlogical` counts here too.
    pub own_s: f64,
    /// The journal's PostgreSQL cluster (its walsender decoding the WAL).
    pub journal_s: f64,
    /// The broker, and the PostgreSQL cluster holding its log, if any.
    pub broker_s: f64,
}

impl CpuSplit {
    pub fn total(&self) -> f64 {
        self.own_s + self.journal_s + self.broker_s
    }
}

/// The processes to account for, by their root pid.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub journal: Option<i32>,
    pub broker: Vec<i32>,
}

impl Roots {
    /// CPU seconds so far of each part.
    pub fn now(&self) -> CpuSplit {
        let procs = Procs::read();
        let me = std::process::id() as i32;
        CpuSplit {
            own_s: procs.total(me),
            journal_s: self.journal.map_or(0.0, |p| procs.total(p)),
            broker_s: self.broker.iter().map(|p| procs.total(*p)).sum(),
        }
    }

    /// What each part used between `before` and now.
    pub fn since(&self, before: &CpuSplit) -> CpuSplit {
        let now = self.now();
        CpuSplit {
            own_s: now.own_s - before.own_s,
            journal_s: now.journal_s - before.journal_s,
            broker_s: now.broker_s - before.broker_s,
        }
    }
}

struct Stat {
    ppid: i32,
    /// utime + stime and cutime + cstime, in seconds.
    own: f64,
    reaped: f64,
}

/// One reading of every process's times and parent.
struct Procs(HashMap<i32, Stat>);

impl Procs {
    fn read() -> Procs {
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut all = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Procs(all);
        };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(s) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|text| parse_stat(&text, tick))
            {
                all.insert(pid, s);
            }
        }
        Procs(all)
    }

    fn total(&self, root: i32) -> f64 {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (pid, s) in &self.0 {
            children.entry(s.ppid).or_default().push(*pid);
        }
        let mut sum = 0.0;
        let mut todo = vec![root];
        while let Some(p) = todo.pop() {
            if let Some(s) = self.0.get(&p) {
                sum += s.own + s.reaped;
            }
            todo.extend(children.get(&p).into_iter().flatten().copied());
        }
        sum
    }
}

/// Fields 4 (ppid) and 14–17 (utime, stime, cutime, cstime) of
/// `/proc/PID/stat`, counted after the command name, which may hold spaces
/// and parentheses and ends at the last `)`.
fn parse_stat(text: &str, tick: f64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let num = |i: usize| f.get(i)?.parse::<f64>().ok();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        own: (num(11)? + num(12)?) / tick,
        reaped: (num(13)? + num(14)?) / tick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_tricky_command_name_parses() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 1 0 1000 1000 100";
        let s = parse_stat(line, 100.0).unwrap();
        assert_eq!(s.ppid, 17);
        assert!((s.own - 3.0).abs() < 1e-9, "{}", s.own);
        assert!((s.reaped - 0.5).abs() < 1e-9, "{}", s.reaped);
    }

    #[test]
    fn a_busy_child_is_counted_in_its_parent_once_it_is_reaped() {
        let roots = Roots::default();
        let before = roots.now();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let used = roots.since(&before);
        assert!(used.own_s > 0.05, "the shell's loop counted: {used:?}");
    }
}
