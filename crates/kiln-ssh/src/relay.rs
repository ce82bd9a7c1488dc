//! Byte relays over SSH channels: for a bastion (`ssh_bastion_*`), a `direct-tcpip` channel to
//! the target whose other end is a local socket pair carrying the target's own session; for
//! tunnels (`ssh_local_tunnels`, `ssh_remote_tunnels`), one channel per forwarded connection. A
//! thread owns the session in non-blocking mode and copies between channels and local sockets;
//! everything ends when the relay is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

trait Local: Read + Write + Send {
    fn close(&mut self);
}
impl Local for UnixStream {
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}
impl Local for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// One channel and the local socket it is joined to.
struct Pipe {
    ch: ssh2::Channel,
    local: Box<dyn Local>,
    to_remote: Vec<u8>,
    to_local: Vec<u8>,
    local_open: bool,
}

impl Pipe {
    fn new(ch: ssh2::Channel, local: Box<dyn Local>) -> Pipe {
        Pipe {
            ch,
            local,
            to_remote: Vec::new(),
            to_local: Vec::new(),
            local_open: true,
        }
    }

    /// Moves what can move without blocking: (whether bytes moved, whether the pipe lives on).
    fn pump(&mut self, buf: &mut [u8]) -> (bool, bool) {
        let mut moved = false;
        if self.local_open && self.to_remote.is_empty() {
            match self.local.read(buf) {
                Ok(0) => {
                    self.local_open = false;
                    let _ = self.ch.send_eof();
                }
                Ok(n) => {
                    self.to_remote.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return (moved, false),
            }
        }
        if !self.to_remote.is_empty() {
            match self.ch.write(&self.to_remote) {
                Ok(n) => {
                    self.to_remote.drain(..n);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return (moved, false),
            }
        }
        if self.to_local.is_empty() {
            match self.ch.read(buf) {
                Ok(0) if self.ch.eof() => return (moved, false),
                Ok(0) => {}
                Ok(n) => {
                    self.to_local.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return (moved, false),
            }
        }
        if !self.to_local.is_empty() {
            match self.local.write(&self.to_local) {
                Ok(n) => {
                    self.to_local.drain(..n);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return (moved, false),
            }
        }
        (moved, true)
    }

    fn close(mut self, sess: &ssh2::Session) {
        self.local.close();
        sess.set_blocking(true);
        sess.set_timeout(2_000);
        let _ = self.ch.close();
        sess.set_timeout(0);
        sess.set_blocking(false);
    }
}

/// Opens `direct-tcpip` to `host:port` through `bastion` (an authenticated session) and returns
/// the local end to hand to the target's session, and the relay that keeps it flowing.
pub fn through(
    bastion: ssh2::Session,
    host: &str,
    port: u16,
) -> Result<(UnixStream, Relay), String> {
    bastion.set_blocking(true);
    bastion.set_timeout(10_000);
    let ch = bastion
        .channel_direct_tcpip(host, port, None)
        .map_err(|e| format!("the bastion cannot reach {host}:{port}: {}", e.message()))?;
    let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    mine.set_nonblocking(true).map_err(|e| e.to_string())?;
    let relay = spawn(
        bastion,
        vec![Pipe::new(ch, Box::new(mine))],
        Vec::new(),
        Vec::new(),
        true,
    );
    Ok((theirs, relay))
}

/// `LOCAL_PORT:HOST:PORT` (local) or `REMOTE_PORT:HOST:PORT` (remote), as Packer writes them.
/// An IPv6 host is written in brackets (`8080:[::1]:80`) and returned without them.
pub fn parse_tunnel(spec: &str) -> Option<(u16, String, u16)> {
    let (listen, rest) = spec.split_once(':')?;
    let (host, port) = rest.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty())
        .then(|| Some((listen.parse().ok()?, host.to_string(), port.parse().ok()?)))?
}

/// Serves tunnels over `sess` (an authenticated session of their own): connections to each
/// local 127.0.0.1:LOCAL_PORT go to HOST:PORT as the guest sees it; connections to the guest's
/// REMOTE_PORT go to HOST:PORT as this machine sees it.
pub fn tunnels(
    sess: ssh2::Session,
    local: &[(u16, String, u16)],
    remote: &[(u16, String, u16)],
) -> Result<Relay, String> {
    let mut listeners = Vec::new();
    for (lport, host, port) in local {
        let l = TcpListener::bind(("127.0.0.1", *lport))
            .map_err(|e| format!("ssh_local_tunnels: cannot listen on 127.0.0.1:{lport}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        listeners.push((l, host.clone(), *port));
    }
    sess.set_blocking(true);
    sess.set_timeout(10_000);
    let mut forwards = Vec::new();
    for (rport, host, port) in remote {
        let (l, _) = sess
            .channel_forward_listen(*rport, Some("127.0.0.1"), None)
            .map_err(|e| {
                format!(
                    "ssh_remote_tunnels: the guest refused to listen on port {rport}: {}",
                    e.message()
                )
            })?;
        forwards.push((l, host.clone(), *port));
    }
    Ok(spawn(sess, Vec::new(), listeners, forwards, false))
}

type Listeners = Vec<(TcpListener, String, u16)>;
type Forwards = Vec<(ssh2::Listener, String, u16)>;

fn spawn(
    sess: ssh2::Session,
    mut pipes: Vec<Pipe>,
    listeners: Listeners,
    mut forwards: Forwards,
    end_with_pipes: bool,
) -> Relay {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        sess.set_timeout(0);
        sess.set_blocking(false);
        let mut buf = vec![0u8; 32 * 1024];
        while !stop2.load(Ordering::SeqCst) {
            let mut moved = false;
            for (l, host, port) in &listeners {
                if let Ok((c, _)) = l.accept() {
                    sess.set_blocking(true);
                    sess.set_timeout(10_000);
                    let ch = sess.channel_direct_tcpip(host, *port, None);
                    sess.set_timeout(0);
                    sess.set_blocking(false);
                    if let (Ok(ch), Ok(())) = (ch, c.set_nonblocking(true)) {
                        pipes.push(Pipe::new(ch, Box::new(c)));
                        moved = true;
                    }
                }
            }
            for (l, host, port) in &mut forwards {
                if let Ok(ch) = l.accept() {
                    match TcpStream::connect((host.as_str(), *port)) {
                        Ok(c) if c.set_nonblocking(true).is_ok() => {
                            pipes.push(Pipe::new(ch, Box::new(c)));
                            moved = true;
                        }
                        _ => {
                            let mut ch = ch;
                            let _ = ch.close();
                        }
                    }
                }
            }
            let mut i = 0;
            while i < pipes.len() {
                let (m, alive) = pipes[i].pump(&mut buf);
                moved |= m;
                if alive {
                    i += 1;
                } else {
                    pipes.swap_remove(i).close(&sess);
                }
            }
            if end_with_pipes && pipes.is_empty() {
                break;
            }
            if !moved {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for p in pipes {
            p.close(&sess);
        }
        drop(forwards);
        sess.set_blocking(true);
        sess.set_timeout(2_000);
        let _ = sess.disconnect(None, "kiln: done", None);
    });
    Relay {
        stop,
        thread: Some(thread),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tunnel;

    #[test]
    fn tunnel_specs_are_port_host_port() {
        assert_eq!(
            parse_tunnel("8080:localhost:80"),
            Some((8080, "localhost".into(), 80))
        );
        assert_eq!(
            parse_tunnel("8080:[::1]:80").map(|t| t.1),
            Some("::1".into())
        );
        assert_eq!(parse_tunnel("8080:80"), None);
        assert_eq!(parse_tunnel("x:h:80"), None);
        assert_eq!(parse_tunnel("1:h:99999"), None);
    }
}
