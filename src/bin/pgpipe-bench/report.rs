//! The printed tables and the figures in them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Res;
use crate::machine::{Machine, machine, rss_mb};
use crate::peers::{ch_client, dev_env, pg_connect};

/// What a scenario starts from: the dev environment's databases, where its
/// data goes, the machine it runs on, and its clock.
pub(crate) struct Start {
    /// The dev env's Postgres.
    pub(crate) pg_url: String,
    /// The dev env's ClickHouse (HTTP).
    pub(crate) ch_url: String,
    /// Where data directories go.
    pub(crate) base: PathBuf,
    machine: Machine,
    started: Instant,
}

impl Start {
    /// The scenario's end: prints the header of its table; answers how long
    /// it ran, this process's peak RSS (MB) and the machine.
    pub(crate) fn finish(&self, scenario: &str, quick: bool) -> (Duration, f64, &Machine) {
        let total = self.started.elapsed();
        let peak = rss_mb().1;
        println!();
        print_header(scenario, quick, &self.machine);
        (total, peak, &self.machine)
    }

    /// How many cores the machine has.
    pub(crate) fn cores(&self) -> usize {
        self.machine.cores
    }
}

/// Where every scenario keeps its data and writes its results.
#[derive(clap::Args)]
pub(crate) struct Output {
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the temporary data directories go (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Output {
    /// The data directories' base (created) and the machine it is on.
    pub(crate) fn base(&self) -> Res<(PathBuf, Machine)> {
        let base = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)?;
        let m = machine(&base);
        Ok((base, m))
    }

    /// Starts a scenario: says what it runs (`what`, and on how many cores)
    /// and connects to Postgres and ClickHouse.
    pub(crate) async fn start(
        &self,
        what: String,
    ) -> Res<(Start, tokio_postgres::Client, clickhouse::Client)> {
        let (pg_url, ch_url) = dev_env()?;
        let (base, machine) = self.base()?;
        let started = Instant::now();
        progress(format!("{what}, on {} cores", machine.cores));
        let pg = pg_connect(&pg_url).await?;
        let ch = ch_client(&ch_url);
        let start = Start {
            pg_url,
            ch_url,
            base,
            machine,
            started,
        };
        Ok((start, pg, ch))
    }

    /// Writes `doc` to the --json file, if one was given.
    pub(crate) fn write_json(&self, doc: serde_json::Value) -> Res<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
            progress(format!("JSON written to {}", path.display()));
        }
        Ok(())
    }
}

/// One line of the table (and of the JSON copy).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    section: String,
    name: String,
    baseline: bool,
    result: String,
    vs: String,
    values: BTreeMap<String, f64>,
}

pub(crate) fn row(section: &str, name: &str, baseline: bool, result: String, vs: String) -> Row {
    Row {
        section: section.into(),
        name: name.into(),
        baseline,
        result,
        vs,
        values: BTreeMap::new(),
    }
}

impl Row {
    pub(crate) fn val(mut self, k: &str, v: f64) -> Self {
        self.values.insert(k.into(), v);
        self
    }
}

pub(crate) fn progress(msg: impl std::fmt::Display) {
    let (rss, peak) = rss_mb();
    eprintln!("[bench] {msg}  (rss {rss:.0} MB, peak {peak:.0} MB)");
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn fmt_ms(d: Duration) -> String {
    let m = ms(d);
    if m < 1.0 {
        format!("{:.0} µs", m * 1e3)
    } else if m < 10.0 {
        format!("{m:.2} ms")
    } else {
        format!("{m:.1} ms")
    }
}

/// A ratio, e.g. "0.031x", "2.4x".
pub(crate) fn x(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}x")
    } else if r < 10.0 {
        format!("{r:.2}x")
    } else {
        format!("{r:.0}x")
    }
}

pub(crate) fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) struct Lat {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    pub(crate) n: usize,
}

pub(crate) fn lat(mut v: Vec<Duration>) -> Lat {
    v.sort_unstable();
    Lat {
        p50: pct(&v, 0.50),
        p99: pct(&v, 0.99),
        max: v.last().copied().unwrap_or_default(),
        n: v.len(),
    }
}

impl Lat {
    pub(crate) fn show(&self) -> String {
        format!(
            "p50 {}  p99 {}  max {}",
            fmt_ms(self.p50),
            fmt_ms(self.p99),
            fmt_ms(self.max)
        )
    }

    pub(crate) fn into_row(self, r: Row) -> Row {
        r.val("p50_ms", ms(self.p50))
            .val("p99_ms", ms(self.p99))
            .val("max_ms", ms(self.max))
            .val("samples", self.n as f64)
    }
}

/// The first line of a scenario's output: what ran, where.
pub(crate) fn print_header(scenario: &str, quick: bool, m: &Machine) {
    println!(
        "pgpipe-bench {scenario}{}  |  {}  |  {} cores ({})  |  mem {}  |  kernel {}",
        if quick { " --quick" } else { "" },
        m.date_utc,
        m.cores,
        m.cpu,
        m.mem_total,
        m.kernel
    );
}

/// The rows as one text table, sections separated by rules.
pub(crate) fn print_grid(rows: &[Row]) {
    let heads = ["#", "measurement", "result", "vs baseline (same run)"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.section.clone(),
                format!("{}{}", if r.baseline { "[base] " } else { "" }, r.name),
                r.result.clone(),
                r.vs.clone(),
            ]
        })
        .collect();
    let mut w = heads.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: [&str; 4]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            let pad = w[i] - v.chars().count();
            s.push_str(&format!("| {v}{} ", " ".repeat(pad)));
        }
        s.push('|');
        s
    };
    let sep = {
        let mut s = String::new();
        for wi in w {
            s.push_str(&format!("|{}", "-".repeat(wi + 2)));
        }
        s.push('|');
        s
    };
    println!("{}", line(heads));
    println!("{sep}");
    let mut last_section = String::new();
    for c in &cells {
        let sec: String = c[0].chars().take_while(char::is_ascii_digit).collect();
        if !last_section.is_empty() && sec != last_section {
            println!("{sep}");
        }
        last_section = sec;
        println!("{}", line([&c[0], &c[1], &c[2], &c[3]]));
    }
}

pub(crate) fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

pub(crate) fn goal(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}
