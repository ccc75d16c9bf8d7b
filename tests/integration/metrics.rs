//! The Prometheus endpoint (`--metrics-listen`): the exposition parses,
//! every family is there with HELP and TYPE, row counters follow a snapshot
//! and CDC, the watcher gauge follows streams, and nothing listens without
//! the flag.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use futures::StreamExt;
use pgpipe::metrics::FAMILIES;
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::*;
use pgpipe::server::{self, ServeConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A server in this process with the metrics endpoint on its own port.
struct Served {
    grpc: SocketAddr,
    metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(engine: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = listener.local_addr().unwrap();
        let maddr = metrics.local_addr().unwrap();
        let cfg = ServeConfig {
            listen: grpc,
            data_dir: dir.path().join("data"),
            token: None,
            engine,
            tls: None,
            metrics_listen: Some(maddr),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve_on_listeners(listener, Some(metrics), cfg, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        wait_serving(&format!("http://{grpc}")).await;
        Self {
            grpc,
            metrics: maddr,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        connect(&format!("http://{}", self.grpc)).await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }
}

async fn scrape_text(addr: SocketAddr) -> String {
    let (status, head, body) = http(&addr.to_string(), "GET", "/metrics").await.unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let body = scrape_text(addr).await;
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("exposition does not parse: {e}\n{body}"))
}

fn value(v: &prometheus_parse::Value) -> f64 {
    use prometheus_parse::Value::*;
    match v {
        Counter(x) | Gauge(x) | Untyped(x) => *x,
        Histogram(_) | Summary(_) => f64::NAN,
    }
}

/// The value of the sample `metric` with exactly these labels (among
/// others), if present.
fn sample(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| value(&x.value))
}

/// Polls the endpoint until `metric{labels}` reaches `want`.
async fn wait_value(
    addr: SocketAddr,
    metric: &str,
    labels: &[(&str, &str)],
    want: f64,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = sample(&scrape(addr).await, metric, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{metric}{labels:?} is {got:?}, want {want}\n{}",
            scrape_text(addr).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_endpoint_parses_and_has_every_family_with_help_and_type() {
    let srv = Served::start(false).await;
    let mut c = srv.client().await;
    c.create_pipe(create_req("shown")).await.unwrap();

    let body = scrape_text(srv.metrics).await;
    let parsed = scrape(srv.metrics).await;
    for (name, kind, _) in FAMILIES {
        assert!(parsed.docs.contains_key(name), "no HELP for {name}\n{body}");
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE for {name}\n{body}"
        );
    }
    assert_eq!(
        sample(&parsed, "pgpipe_pipes", &[("status", "setup")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&parsed, "pgpipe_pipes", &[("status", "running")]),
        Some(0.0)
    );
    assert!(sample(&parsed, "pgpipe_event_log_events", &[]).unwrap() >= 1.0);
    assert!(sample(&parsed, "pgpipe_event_log_size_bytes", &[]).unwrap() > 0.0);
    assert_eq!(sample(&parsed, "pgpipe_watchers", &[]), Some(0.0));

    // Only /metrics, and only reads.
    assert_eq!(
        http(&srv.metrics.to_string(), "GET", "/").await.unwrap().0,
        404
    );
    assert_eq!(
        http(&srv.metrics.to_string(), "POST", "/metrics")
            .await
            .unwrap()
            .0,
        405
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watcher_gauge_follows_streams_opening_and_closing() {
    let srv = Served::start(false).await;
    let mut c = srv.client().await;
    c.create_pipe(create_req("watched")).await.unwrap();
    let w = Duration::from_secs(10);

    let mut pipe_stream = watch_pipe(&mut c, "watched", None).await;
    pipe_stream.next().await.unwrap().unwrap();
    wait_value(srv.metrics, "pgpipe_watchers", &[], 1.0, w).await;

    let mut events = c
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    events.next().await.unwrap().unwrap();
    wait_value(srv.metrics, "pgpipe_watchers", &[], 2.0, w).await;

    // A client closing its stream (no further event comes) is noticed.
    drop(pipe_stream);
    wait_value(srv.metrics, "pgpipe_watchers", &[], 1.0, w).await;
    drop(events);
    wait_value(srv.metrics, "pgpipe_watchers", &[], 0.0, w).await;

    // A stream that ends by itself (its pipe deleted) is uncounted too.
    let mut ending = watch_pipe(&mut c, "watched", None).await;
    ending.next().await.unwrap().unwrap();
    wait_value(srv.metrics, "pgpipe_watchers", &[], 1.0, w).await;
    delete_pipe(&mut c, "watched").await;
    while let Some(m) = ending.next().await {
        m.unwrap();
    }
    wait_value(srv.metrics, "pgpipe_watchers", &[], 0.0, w).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_counters_follow_a_snapshot_cdc_and_a_resync() {
    let schema = unique("metrics");
    let pg = pg().await;
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text);
         INSERT INTO {schema}.items SELECT g, 'n' || g FROM generate_series(1, 3000) g;"
    ))
    .await
    .unwrap();
    let srv = Served::start(true).await;
    let mut c = srv.client().await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.items");
    c.create_pipe(pipe_req(&name, &schema, &[&table]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let w = Duration::from_secs(60);
    let labels = |kind| {
        [
            ("pipe", name.as_str()),
            ("table", table.as_str()),
            ("kind", kind),
        ]
    };
    wait_value(
        srv.metrics,
        "pgpipe_rows_applied_total",
        &labels("snapshot"),
        3000.0,
        w,
    )
    .await;

    pg.batch_execute(&format!(
        "INSERT INTO {schema}.items SELECT g, 'new' FROM generate_series(3001, 3050) g;
         UPDATE {schema}.items SET name = 'upd' WHERE id <= 20;
         DELETE FROM {schema}.items WHERE id > 3040;"
    ))
    .await
    .unwrap();
    wait_value(
        srv.metrics,
        "pgpipe_rows_applied_total",
        &labels("insert"),
        50.0,
        w,
    )
    .await;
    wait_value(
        srv.metrics,
        "pgpipe_rows_applied_total",
        &labels("update"),
        20.0,
        w,
    )
    .await;
    wait_value(
        srv.metrics,
        "pgpipe_rows_applied_total",
        &labels("delete"),
        10.0,
        w,
    )
    .await;

    let s = scrape(srv.metrics).await;
    let applied = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "pgpipe_cdc_batch_apply_duration_seconds_count"
                && x.labels.get("pipe") == Some(name.as_str())
        })
        .map(|x| value(&x.value));
    assert!(
        applied.is_some_and(|n| n >= 1.0),
        "no batch observed: {applied:?}"
    );
    assert_eq!(
        sample(&s, "pgpipe_pipes", &[("status", "running")]),
        Some(1.0)
    );
    let lag_s = sample(&s, "pgpipe_cdc_lag_seconds", &[("pipe", &name)]);
    assert!(
        lag_s.is_some_and(|l| (0.0..600.0).contains(&l)),
        "lag seconds {lag_s:?}"
    );
    // The lag gauge is set at the first CDC progress report (within ~5 s).
    let deadline = tokio::time::Instant::now() + w;
    while sample(
        &scrape(srv.metrics).await,
        "pgpipe_cdc_lag_bytes",
        &[("pipe", &name)],
    )
    .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lag gauge for {name}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A resync copies the table again and times its steps.
    c.resync_pipe(ResyncPipeRequest {
        name: name.clone(),
        overrides: vec![],
        tables: vec![],
        ..Default::default()
    })
    .await
    .unwrap();
    // Resync's snapshot adds the 3040 live rows.
    wait_value(
        srv.metrics,
        "pgpipe_rows_applied_total",
        &labels("snapshot"),
        6040.0,
        w,
    )
    .await;
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let s = scrape(srv.metrics).await;
    for step in ["setup", "prepare_tables", "snapshot", "swap"] {
        let d = sample(
            &s,
            "pgpipe_resync_step_duration_seconds",
            &[("pipe", &name), ("step", step)],
        );
        assert!(
            d.is_some_and(|d| d >= 0.0),
            "no duration for step {step}: {d:?}"
        );
    }
    delete_pipe(&mut c, &name).await;
    // A deleted pipe's gauges go; its counters stay.
    let s = scrape(srv.metrics).await;
    assert_eq!(sample(&s, "pgpipe_cdc_lag_bytes", &[("pipe", &name)]), None);
    assert_eq!(
        sample(
            &s,
            "pgpipe_resync_step_duration_seconds",
            &[("pipe", &name)]
        ),
        None
    );
    assert_eq!(
        sample(&s, "pgpipe_rows_applied_total", &labels("insert")),
        Some(50.0)
    );
    srv.stop().await;
}

/// `pgpipe serve` without `--metrics-listen` opens no metrics port; with
/// the environment variable it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_is_absent_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::peers::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    {
        let p = Proc::spawn(&dir.path().join("off"), &[]);
        wait_serving(&p.url()).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "something listens on {addr} without the flag"
        );
        let mut c = PipeServiceClient::connect(p.url()).await.unwrap();
        c.list_pipes(ListPipesRequest::default()).await.unwrap();
    }
    let addr_s = addr.to_string();
    let p = Proc::spawn(
        &dir.path().join("on"),
        &[("PGPIPE_METRICS_LISTEN", &addr_s)],
    );
    wait_serving(&p.url()).await;
    let s = scrape(addr).await;
    assert!(s.docs.contains_key("pgpipe_pipes"));
}
