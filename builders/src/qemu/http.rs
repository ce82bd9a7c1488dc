//! The HTTP server a guest fetches `http_directory` / `http_content` from (cloud-init seeds,
//! preseed and kickstart files). Plain std: GET and HEAD, one thread, stopped on drop.

use kiln_core::{Emitter, Error, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct HttpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(
        bind: &str,
        port_min: u16,
        port_max: u16,
        dir: Option<PathBuf>,
        content: BTreeMap<String, String>,
        em: Emitter,
    ) -> Result<HttpServer> {
        let mut listener = None;
        for port in port_min..=port_max.max(port_min) {
            if let Ok(l) = TcpListener::bind((bind, port)) {
                listener = Some(l);
                break;
            }
        }
        let listener = listener.ok_or_else(|| Error::failed(format!("no free port for the HTTP server on {bind} between {port_min} and {port_max} (http_port_min/http_port_max)")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("http server", e))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("http server", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        serve(stream, dir.as_deref(), &content, &em);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(HttpServer {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, dir: Option<&Path>, content: &BTreeMap<String, String>, em: &Emitter) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let (status, body) = match method {
        "GET" | "HEAD" => match lookup(path, dir, content) {
            Some(b) => ("200 OK", b),
            None => ("404 Not Found", b"not found\n".to_vec()),
        },
        _ => ("405 Method Not Allowed", Vec::new()),
    };
    em.debug(format!("http: {method} {path} -> {status}"));
    let mut w = &stream;
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = w.write_all(&body);
    }
}

fn lookup(path: &str, dir: Option<&Path>, content: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    if let Some(c) = content
        .get(path)
        .or_else(|| content.get(path.trim_start_matches('/')))
    {
        return Some(c.as_bytes().to_vec());
    }
    let dir = dir?;
    let rel = Path::new(path.trim_start_matches('/'));
    // Never serve outside http_directory.
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = dir.join(rel);
    let mut f = std::fs::File::open(&full).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut v = Vec::new();
    f.read_to_end(&mut v).ok()?;
    Some(v)
}
