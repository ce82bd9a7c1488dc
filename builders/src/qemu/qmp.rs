//! A minimal QMP client: JSON lines over the monitor's Unix socket.

use kiln_core::{Error, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, waiting up to `wait` for qemu to create the socket; `alive` says whether qemu
    /// still runs (so a qemu that died at start fails fast).
    pub fn connect(path: &Path, wait: Duration, alive: &mut dyn FnMut() -> bool) -> Result<Qmp> {
        let end = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if !alive() {
                        return Err(Error::failed("qemu exited during start-up"));
                    }
                    if Instant::now() >= end {
                        return Err(Error::io(
                            format!("cannot connect to qemu's QMP socket {}", path.display()),
                            e,
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| Error::io("qmp socket", e))?;
        let writer = stream.try_clone().map_err(|e| Error::io("qmp socket", e))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::failed(format!(
                "unexpected QMP greeting: {greeting}"
            )));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::io("reading from QMP", e))?;
        if n == 0 {
            return Err(Error::failed("QMP connection closed (qemu exited)"));
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::other(format!("bad QMP message {line:?}"), e))
    }

    /// Runs a command and returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("writing to QMP", e))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(Error::failed(format!(
                    "QMP {cmd} failed: {}",
                    e.get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                )));
            }
        }
    }

    pub fn hmp(&mut self, line: &str) -> Result<String> {
        let r = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": line })),
        )?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }
}

/// The host port forwarded to `guest_port`, from `info usernet` output.
pub fn parse_usernet_port(text: &str, guest_port: u16) -> Option<u16> {
    text.lines()
        .filter(|l| l.contains("HOST_FORWARD"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // TCP[HOST_FORWARD]  FD  SRC-ADDR  SRC-PORT  DST-ADDR  DST-PORT ...
            let (src_port, dst_port) = (
                f.get(3)?.parse::<u16>().ok()?,
                f.get(5)?.parse::<u16>().ok()?,
            );
            (dst_port == guest_port && src_port != 0).then_some(src_port)
        })
}

/// Watches a QMP socket for the guest's first reset (an installer rebooting into the installed
/// disk) and calls `on_reset`; stops when `stop` is set or qemu goes away.
pub fn watch_reset(
    path: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    on_reset: Box<dyn Fn() + Send>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        let Ok(stream) = UnixStream::connect(&path) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        let _ = writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
        let mut line = String::new();
        while !stop.load(Ordering::SeqCst) {
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.contains("\"RESET\"") {
                        on_reset();
                        return;
                    }
                    line.clear();
                }
                Err(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_forwarded_port_from_info_usernet() {
        let out = "Hub -1 (user.0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]  15       127.0.0.1 35341       10.0.2.15    22     0     0\r\n";
        assert_eq!(parse_usernet_port(out, 22), Some(35341));
        assert_eq!(parse_usernet_port(out, 2222), None);
    }
}
