//! An in-process pgpipe server and the client calls the scenarios share.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use pgpipe::proto::{GetPipeRequest, PausePipeRequest, ResumePipeRequest};
use pgpipe::server::{self, ServeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::machine::tempdir_in;
use crate::{Client, Res};

/// An in-process pgpipe server (control plane only) over loopback.
pub(crate) struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Res<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) async fn start(base: &Path) -> Res<Self> {
        Self::start_with(base, false).await
    }

    /// `engine`: also run the data plane (snapshots, CDC).
    pub(crate) async fn start_with(base: &Path, engine: bool) -> Res<Self> {
        let dir = tempdir_in(base)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cfg = ServeConfig {
            listen: addr,
            data_dir: dir.path().join("data"),
            token: None,
            engine,
            tls: None,
            metrics_listen: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve_on(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| -> Box<dyn Error + Send + Sync> { Box::new(e) })
        });
        let url = format!("http://{addr}");
        let s = Self {
            url,
            stop: Some(stop),
            task,
            _dir: dir,
        };
        s.wait_serving().await?;
        Ok(s)
    }

    async fn wait_serving(&self) -> Res<()> {
        for _ in 0..800 {
            if let Ok(ch) = self.channel().await {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                let r = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "pgpipe.v1.PipeService".into(),
                    })
                    .await;
                if r.is_ok_and(|r| r.into_inner().status == 1) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("the in-process server never reported SERVING".into())
    }

    /// A new HTTP/2 connection.
    pub(crate) async fn channel(&self) -> Res<Channel> {
        Ok(Channel::from_shared(self.url.clone())?.connect().await?)
    }

    pub(crate) async fn channels(&self, n: usize) -> Res<Vec<Channel>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.channel().await?);
        }
        Ok(v)
    }

    pub(crate) async fn stop(mut self) -> Res<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task).await???;
        Ok(())
    }
}

/// Pause/Resume toggling on one pipe: each call is one durable event.
pub(crate) async fn toggle(client: &mut Client, name: &str, pause: bool) -> Res<()> {
    if pause {
        client
            .pause_pipe(PausePipeRequest { name: name.into() })
            .await?;
    } else {
        client
            .resume_pipe(ResumePipeRequest { name: name.into() })
            .await?;
    }
    Ok(())
}

pub(crate) async fn get_pipe(c: &mut Client, name: &str) -> Res<pgpipe::proto::Pipe> {
    Ok(c.get_pipe(GetPipeRequest {
        name: name.into(),
        ..Default::default()
    })
    .await?
    .into_inner()
    .pipe
    .ok_or("GetPipe returned no pipe")?)
}

/// Waits until `name` is RUNNING with CDC started (and, if `not_id` is set,
/// is a different incarnation than `not_id`); returns its id.
pub(crate) async fn wait_cdc(c: &mut Client, name: &str, not_id: Option<&str>) -> Res<String> {
    let deadline = Instant::now() + Duration::from_secs(3_600);
    loop {
        let p = get_pipe(c, name).await?;
        let st = pgpipe::proto::PipeStatus::try_from(p.status)
            .unwrap_or(pgpipe::proto::PipeStatus::Unspecified);
        if st == pgpipe::proto::PipeStatus::Failed {
            return Err(format!("pipe {name} failed: {} ({})", p.error, p.failed_step).into());
        }
        if st == pgpipe::proto::PipeStatus::Running
            && p.cdc_started
            && not_id.is_none_or(|old| old != p.id)
        {
            return Ok(p.id);
        }
        if Instant::now() > deadline {
            return Err(format!("pipe {name}: not running after an hour").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
