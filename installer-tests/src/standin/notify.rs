//! `sd_notify(READY=1)`: how k3s tells systemd a `Type=notify` unit has started.
//!
//! k3s sends `READY=1` once etcd and the apiserver are ready (`pkg/cli/server/server.go`), and an
//! agent-only node once its agent is up (`pkg/agent/run.go`), to the datagram socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract socket when it starts with `@`). Until then
//! `systemctl start` without `--no-block` blocks (the unit has `TimeoutStartSec=0`).

/// Send `READY=1` if `$NOTIFY_SOCKET` is set. Returns whether a notification was sent.
pub fn ready() -> std::io::Result<bool> {
    send("READY=1\n")
}

/// Send a raw notification message.
pub fn send(msg: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().to_string();
    if path.is_empty() {
        return Ok(false);
    }
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), &path)?;
    }
    Ok(true)
}
