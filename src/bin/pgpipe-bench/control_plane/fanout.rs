//! 3. WatchPipe fan-out to many watchers.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use pgpipe::proto::{PausePipeRequest, ResumePipeRequest, WatchPipeRequest};
use tokio::sync::mpsc;

use crate::control_plane::{Params, server_with_pipe};
use crate::report::{Lat, Row, fmt_ms, lat, ms, progress, row, x};
use crate::{Client, Res};

struct FanoutResult {
    per_delivery: Lat,
    last_watcher: Lat,
    rpc: Lat,
    connect: Duration,
}

async fn fanout(p: &Params, base: &Path, watchers: usize) -> Res<FanoutResult> {
    let name = "fanout";
    let (server, mut ctl) = server_with_pipe(base, name).await?;
    let nchan = watchers.div_ceil(p.watchers_per_channel);
    let chans = server.channels(nchan).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut client = Client::new(chans[i / p.watchers_per_channel].clone());
        let tx = tx.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = client
                .watch_pipe(WatchPipeRequest {
                    name: name.into(),
                    after_cursor: None,
                })
                .await?
                .into_inner();
            s.message().await?;
            let _ = ready.send(());
            while let Some(m) = s.message().await? {
                let _ = tx.send((m.cursor, Instant::now()));
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await?
            .ok_or("a watcher failed to start")?;
    }
    let connect = t.elapsed();
    let mut per = Vec::new();
    let mut last = Vec::new();
    let mut rpc = Vec::new();
    for round in 0..p.watch_rounds {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        let pipe = if round % 2 == 0 {
            ctl.pause_pipe(PausePipeRequest { name: name.into() })
                .await?
                .into_inner()
                .pipe
        } else {
            ctl.resume_pipe(ResumePipeRequest { name: name.into() })
                .await?
                .into_inner()
                .pipe
        };
        rpc.push(t0.elapsed());
        let cursor = pipe.map(|p| p.cursor).ok_or("no pipe in response")?;
        let mut got = 0;
        let mut round_max = Duration::ZERO;
        while got < watchers {
            let (c, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await?
                .ok_or("watchers ended")?;
            if c != cursor {
                continue;
            }
            let d = at.saturating_duration_since(t0);
            round_max = round_max.max(d);
            per.push(d);
            got += 1;
        }
        last.push(round_max);
    }
    for t in &tasks {
        t.abort();
    }
    drop(chans);
    server.stop().await?;
    Ok(FanoutResult {
        per_delivery: lat(per),
        last_watcher: lat(last),
        rpc: lat(rpc),
        connect,
    })
}

pub(crate) async fn bench_fanout(p: &Params, base: &Path) -> Res<Vec<Row>> {
    progress("3. fan-out: 1 watcher");
    let one = fanout(p, base, 1).await?;
    progress(format!("3. fan-out: {} watchers", p.watchers));
    let many = fanout(p, base, p.watchers).await?;
    let n = p.watchers;
    let chans = n.div_ceil(p.watchers_per_channel);
    let rounds = p.watch_rounds;
    let vs = format!(
        "p50 {}, max {} 1 watcher",
        x(ms(many.per_delivery.p50) / ms(one.per_delivery.p50)),
        x(ms(many.per_delivery.max) / ms(one.per_delivery.max))
    );
    let one_res = one.per_delivery.show();
    let one_rpc = one.rpc.show();
    let many_res = many.per_delivery.show();
    let last_res = many.last_watcher.show();
    let last_vs = format!("PausePipe RPC alone: p50 {}", fmt_ms(many.rpc.p50));
    Ok(vec![
        one.per_delivery.into_row(row(
            "3",
            &format!("WatchPipe, 1 watcher: PausePipe sent -> event received ({rounds} rounds)"),
            true,
            one_res,
            String::new(),
        )),
        one.rpc.into_row(row(
            "3",
            "  same run: the PausePipe RPC round trip alone",
            true,
            one_rpc,
            String::new(),
        )),
        many.per_delivery
            .into_row(row(
                "3",
                &format!(
                    "WatchPipe, {n} watchers ({chans} conns x {}): each delivery",
                    p.watchers_per_channel
                ),
                false,
                many_res,
                vs,
            ))
            .val("connect_all_ms", ms(many.connect)),
        many.last_watcher.into_row(row(
            "3",
            &format!("  same run: until the last of {n} watchers has it"),
            false,
            last_res,
            last_vs,
        )),
    ])
}
