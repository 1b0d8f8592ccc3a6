//! A local TCP port on the workstation's loopback whose every connection is forwarded
//! through SSH (direct-tcpip) to a port on a host, for as long as the [`Tunnel`] lives.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::host::Remote;

/// A running forward; dropping it closes the listener and every forwarded connection.
pub struct Tunnel {
    port: u16,
    task: JoinHandle<()>,
}

impl Tunnel {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target:port` as seen
    /// from `remote`.
    pub async fn start(
        remote: Arc<dyn Remote>,
        target: &str,
        port: u16,
    ) -> std::io::Result<Tunnel> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local = listener.local_addr()?.port();
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut local_conn, _)) = listener.accept().await else {
                    break;
                };
                let remote = remote.clone();
                let target = target.clone();
                conns.spawn(async move {
                    match remote.connect_tcp(&target, port).await {
                        Ok(mut far) => {
                            let _ = tokio::io::copy_bidirectional(&mut local_conn, &mut far).await;
                        }
                        Err(e) => tracing::debug!("tunnel to {target}:{port}: {e}"),
                    }
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Tunnel { port: local, task })
    }

    pub fn local_port(&self) -> u16 {
        self.port
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}
