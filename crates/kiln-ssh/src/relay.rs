//! Byte relays over SSH channels, for a bastion (`ssh_bastion_*`): a thread owns the bastion's
//! session in non-blocking mode and copies between a `direct-tcpip` channel to the target and one
//! end of a local socket pair, whose other end carries the target's own SSH session. The relay
//! ends when either side closes or when it is dropped.

use std::io::{Read, Write};
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

/// Opens `direct-tcpip` to `host:port` through `bastion` (an authenticated session) and returns
/// the local end to hand to the target's session, and the relay that keeps it flowing.
pub fn through(
    bastion: ssh2::Session,
    host: &str,
    port: u16,
) -> Result<(UnixStream, Relay), String> {
    bastion.set_blocking(true);
    bastion.set_timeout(10_000);
    let mut ch = bastion
        .channel_direct_tcpip(host, port, None)
        .map_err(|e| format!("the bastion cannot reach {host}:{port}: {}", e.message()))?;
    let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    mine.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        bastion.set_timeout(0);
        bastion.set_blocking(false);
        let mut local = mine;
        let mut to_remote: Vec<u8> = Vec::new();
        let mut to_local: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut local_open = true;
        while !stop2.load(Ordering::SeqCst) {
            let mut moved = false;
            if local_open && to_remote.is_empty() {
                match local.read(&mut buf) {
                    Ok(0) => {
                        local_open = false;
                        let _ = ch.send_eof();
                    }
                    Ok(n) => {
                        to_remote.extend_from_slice(&buf[..n]);
                        moved = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => break,
                }
            }
            if !to_remote.is_empty() {
                match ch.write(&to_remote) {
                    Ok(n) => {
                        to_remote.drain(..n);
                        moved = moved || n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => break,
                }
            }
            if to_local.is_empty() {
                match ch.read(&mut buf) {
                    Ok(0) if ch.eof() => break,
                    Ok(0) => {}
                    Ok(n) => {
                        to_local.extend_from_slice(&buf[..n]);
                        moved = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => break,
                }
            }
            if !to_local.is_empty() {
                match local.write(&to_local) {
                    Ok(n) => {
                        to_local.drain(..n);
                        moved = moved || n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => break,
                }
            }
            if !moved {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = local.shutdown(std::net::Shutdown::Both);
        bastion.set_blocking(true);
        bastion.set_timeout(2_000);
        let _ = ch.close();
        let _ = bastion.disconnect(None, "kiln: done", None);
    });
    Ok((
        theirs,
        Relay {
            stop,
            thread: Some(thread),
        },
    ))
}
