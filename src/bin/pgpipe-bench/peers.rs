//! The dev env's Postgres and ClickHouse: connections, and their CPU use.

use std::time::{Duration, Instant};

use crate::Res;
use crate::machine::{all_pids, cpu_secs, proc_cpu, proc_ppid, rss_mb};

/// The dev env's peers, to charge CPU time to each side: Postgres' postmaster
/// (its children's time lands in its cutime when they exit) and the
/// ClickHouse front's process.
pub(crate) struct Peers {
    postmaster: Option<u32>,
    chfront: Option<u32>,
}

/// CPU seconds used so far by pgpipe (this process), Postgres and ClickHouse.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSplit {
    pub(crate) pgpipe: f64,
    pub(crate) pg: f64,
    pub(crate) ch: f64,
}

impl Peers {
    pub(crate) async fn find(pg: &tokio_postgres::Client, ch_url: &str) -> Peers {
        let backend = pg
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()
            .map(|r| r.get::<_, i32>(0) as u32);
        let postmaster = backend.and_then(proc_ppid);
        let port = url::Url::parse(ch_url).ok().and_then(|u| u.port());
        let chfront = port.and_then(|port| {
            all_pids().into_iter().find(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                args.iter().any(|a| a.ends_with(b"chfront.py"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"--port" && w[1] == port.to_string().as_bytes())
            })
        });
        Peers {
            postmaster,
            chfront,
        }
    }

    pub(crate) fn now(&self) -> CpuSplit {
        let pg = self.postmaster.map_or(0.0, |pm| {
            let (own, reaped) = proc_cpu(pm);
            let live: f64 = all_pids()
                .into_iter()
                .filter(|p| proc_ppid(*p) == Some(pm))
                .map(|p| proc_cpu(p).0)
                .sum();
            own + reaped + live
        });
        CpuSplit {
            pgpipe: cpu_secs(),
            pg,
            ch: self.chfront.map_or(0.0, |p| proc_cpu(p).0),
        }
    }
}

impl std::ops::Sub for CpuSplit {
    type Output = CpuSplit;
    fn sub(self, o: CpuSplit) -> CpuSplit {
        CpuSplit {
            pgpipe: self.pgpipe - o.pgpipe,
            pg: self.pg - o.pg,
            ch: self.ch - o.ch,
        }
    }
}

impl CpuSplit {
    pub(crate) fn show(&self) -> String {
        format!(
            "CPU s: pgpipe {:.2}, Postgres {:.2}, ClickHouse {:.2}",
            self.pgpipe, self.pg, self.ch
        )
    }
}

pub(crate) fn dev_env() -> Res<(String, String)> {
    match (
        std::env::var("PGPIPE_TEST_PG_URL"),
        std::env::var("PGPIPE_TEST_CH_URL"),
    ) {
        (Ok(pg), Ok(ch)) if !pg.is_empty() && !ch.is_empty() => Ok((pg, ch)),
        _ => Err(
            "PGPIPE_TEST_PG_URL / PGPIPE_TEST_CH_URL unset: run dev/env up and source .dev/env.sh"
                .into(),
        ),
    }
}

pub(crate) fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub(crate) async fn pg_connect(url: &str) -> Res<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Compressed like pgpipe's own client would be for this URL (LZ4 only
/// across a network), so baseline (b) sends what pgpipe sends.
pub(crate) fn ch_client(url: &str) -> clickhouse::Client {
    let loopback = url::Url::parse(url).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    });
    let c = clickhouse::Client::default().with_url(url);
    if loopback {
        c.with_compression(clickhouse::Compression::None)
    } else {
        c
    }
}

pub(crate) async fn ch_exec(ch: &clickhouse::Client, sql: &str) -> Res<()> {
    ch.query(sql).execute().await?;
    Ok(())
}

pub(crate) async fn ch_count(ch: &clickhouse::Client, table: &str) -> Res<u64> {
    Ok(ch
        .query(&format!("SELECT toUInt64(count()) FROM {table}"))
        .fetch_one::<u64>()
        .await?)
}

/// Waits (up to a minute) until ClickHouse has no merge running, so that
/// one measurement's background merges do not slow the next one down.
pub(crate) async fn settle(ch: &clickhouse::Client) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let running = ch
            .query("SELECT toUInt64(count()) FROM system.merges")
            .fetch_one::<u64>()
            .await?;
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Footprint of one scenario: peak RSS (reset at the start, Linux's
/// clear_refs) and CPU seconds of this process, which hosts the service.
pub(crate) struct Footprint<'p> {
    peers: &'p Peers,
    cpu0: CpuSplit,
}

impl Footprint<'_> {
    pub(crate) fn start(peers: &Peers) -> Footprint<'_> {
        // "5" resets the peak RSS (VmHWM) to the current RSS.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Footprint {
            peers,
            cpu0: peers.now(),
        }
    }

    /// (CPU seconds used by each side, peak RSS of this process in MB)
    /// since start.
    pub(crate) fn end(&self) -> (CpuSplit, f64) {
        (self.peers.now() - self.cpu0, rss_mb().1)
    }
}
