//! A TCP proxy in front of a server that can make its open connections go
//! silent: the network dropping packets without a reset (a dead NAT entry,
//! a cable pulled), which neither side sees as a closed socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct Proxy {
    pub port: u16,
    /// Bumped by `black_hole`: connections of older generations go silent.
    generation: Arc<AtomicU64>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream>.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (g, t) = (generation.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut set = t.lock().unwrap();
                set.spawn(pump(cr, sw, born, g.clone()));
                set.spawn(pump(sr, cw, born, g.clone()));
            }
        });
        Proxy {
            port,
            generation,
            tasks,
        }
    }

    /// Every connection open now stops carrying bytes, in both directions,
    /// without being closed (not even when the server closes its side).
    /// Connections made afterwards work.
    pub fn black_hole(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(mut set) = self.tasks.lock() {
            set.abort_all();
        }
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, born: u64, g: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if g.load(Ordering::SeqCst) != born {
            // Silent for good: both halves are held open, nothing moves.
            std::future::pending::<()>().await;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}
