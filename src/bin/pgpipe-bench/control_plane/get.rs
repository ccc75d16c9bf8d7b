//! 4. GetPipe latency, idle and under appends.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use pgpipe::proto::GetPipeRequest;

use crate::control_plane::{Params, create_req, server_with_pipe};
use crate::pgpipe_server::toggle;
use crate::report::{Lat, Row, fmt_rate, lat, ms, progress, row, x};
use crate::{Client, Res};

struct GetResult {
    lat: Lat,
    rps: f64,
    bg_rate: f64,
}

async fn get_load(p: &Params, base: &Path, background: bool) -> Res<GetResult> {
    let (server, mut ctl) = server_with_pipe(base, "target").await?;
    for b in 0..p.background_appenders {
        ctl.create_pipe(create_req(&format!("bg-{b:02}"), 3))
            .await?;
    }
    let chans = server.channels(p.get_callers.div_ceil(4)).await?;
    let bg_chan = server.channel().await?;
    let warm = Instant::now() + Duration::from_millis(300);
    let deadline = warm + Duration::from_secs_f64(p.get_secs);
    let bg_tasks: Vec<_> = if background {
        (0..p.background_appenders)
            .map(|b| {
                let mut c = Client::new(bg_chan.clone());
                tokio::spawn(async move {
                    let name = format!("bg-{b:02}");
                    let mut n = 0u64;
                    let mut pause = true;
                    while Instant::now() < deadline {
                        toggle(&mut c, &name, pause).await?;
                        pause = !pause;
                        if Instant::now() >= warm {
                            n += 1;
                        }
                    }
                    Ok::<_, Box<dyn Error + Send + Sync>>(n)
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut callers = Vec::new();
    for i in 0..p.get_callers {
        let mut c = Client::new(chans[i / 4].clone());
        callers.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                c.get_pipe(GetPipeRequest {
                    name: "target".into(),
                    id: String::new(),
                })
                .await?;
                if t >= warm {
                    lats.push(t.elapsed());
                }
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(lats)
        }));
    }
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await??);
    }
    let mut bg = 0;
    for t in bg_tasks {
        bg += t.await??;
    }
    drop(chans);
    drop(bg_chan);
    server.stop().await?;
    Ok(GetResult {
        rps: all.len() as f64 / p.get_secs,
        bg_rate: bg as f64 / p.get_secs,
        lat: lat(all),
    })
}

pub(crate) async fn bench_get(p: &Params, base: &Path) -> Res<Vec<Row>> {
    progress("4. GetPipe: no background appends");
    let idle = get_load(p, base, false).await?;
    progress(format!(
        "4. GetPipe: with {} background Pause/Resume callers",
        p.background_appenders
    ));
    let busy = get_load(p, base, true).await?;
    let c = p.get_callers;
    let vs = format!(
        "p50 {}, p99 {}; {:.0}% of idle RPS",
        x(ms(busy.lat.p50) / ms(idle.lat.p50)),
        x(ms(busy.lat.p99) / ms(idle.lat.p99)),
        100.0 * busy.rps / idle.rps
    );
    let idle_res = format!("{}  ({} RPS)", idle.lat.show(), fmt_rate(idle.rps));
    let busy_res = format!(
        "{}  ({} RPS; bg {} appends/s)",
        busy.lat.show(),
        fmt_rate(busy.rps),
        fmt_rate(busy.bg_rate)
    );
    Ok(vec![
        idle.lat
            .into_row(row(
                "4",
                &format!("GetPipe, {c} concurrent callers, no appends"),
                true,
                idle_res,
                String::new(),
            ))
            .val("rps", idle.rps),
        busy.lat
            .into_row(row(
                "4",
                &format!(
                    "GetPipe, {c} callers + {} gRPC appenders in background",
                    p.background_appenders
                ),
                false,
                busy_res,
                vs,
            ))
            .val("rps", busy.rps)
            .val("bg_appends_per_s", busy.bg_rate),
    ])
}
