//! The machine a run is on and this process's own footprint (Linux /proc).

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::Res;

/// Current and peak resident set size of this process, in MB (Linux).
pub(crate) fn rss_mb() -> (f64, f64) {
    let kb = |k: &str| {
        proc_field("/proc/self/status", k)
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS"), kb("VmHWM"))
}

/// CPU seconds (user + system) this process has used so far (Linux).
pub(crate) fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// (utime + stime, cutime + cstime) of a process, in seconds.
pub(crate) fn proc_cpu(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (t(11) + t(12), t(13) + t(14))
}

pub(crate) fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn tempdir_in(base: &Path) -> Res<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("pgpipe-bench-")
        .tempdir_in(base)?)
}

#[derive(Serialize)]
pub(crate) struct Machine {
    pub(crate) date_utc: String,
    pub(crate) cores: usize,
    pub(crate) cpu: String,
    pub(crate) mem_total: String,
    pub(crate) kernel: String,
    /// /proc/loadavg at start: other work on the machine skews the figures.
    pub(crate) loadavg_at_start: String,
    pub(crate) data_dir: String,
    pub(crate) data_fs: String,
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = pgpipe::sink::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn fs_type(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} ({dev} on {mnt})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn machine(base: &Path) -> Machine {
    Machine {
        date_utc: utc_now(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        mem_total: proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into()),
        data_dir: base.display().to_string(),
        data_fs: fs_type(base),
    }
}
