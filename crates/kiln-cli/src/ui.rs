//! Showing events: plain lines attributable to their build (`==> build: message`), as Packer
//! prints them when not on a terminal.

use kiln_core::{Event, EventKind, Level};
use std::io::Write;
use std::sync::{Arc, Mutex};

pub struct Ui {
    pub debug: bool,
    pub timestamps: bool,
    lock: Mutex<()>,
}

impl Ui {
    pub fn new(debug: bool, timestamps: bool) -> Arc<Ui> {
        Arc::new(Ui {
            debug,
            timestamps,
            lock: Mutex::new(()),
        })
    }

    pub fn handle(&self, e: &Event) {
        let b = &e.build;
        let line = match &e.kind {
            EventKind::BuildStarted => format!("==> {b}: build started"),
            EventKind::Phase(p) => {
                if !self.debug {
                    return;
                }
                format!("==> {b}: phase: {p}")
            }
            EventKind::Step { index, total, kind } => {
                format!("==> {b}: provisioner {index}/{total}: {kind}")
            }
            EventKind::Message { level, text } => match level {
                Level::Debug if !self.debug => return,
                Level::Debug => format!("    {b}: (debug) {text}"),
                Level::Info => format!("==> {b}: {text}"),
                Level::Warn => format!("==> {b}: warning: {text}"),
                Level::Error => format!("==> {b}: error: {text}"),
            },
            EventKind::Output(l) => format!("    {b}: {l}"),
            EventKind::Waiting(w) => format!("==> {b}: {w}"),
            EventKind::Artifact { files, id } => {
                format!("==> {b}: image written: {} ({id})", files.join(", "))
            }
            EventKind::BuildFinished {
                ok,
                cancelled,
                error,
                seconds,
                timings,
                ..
            } => {
                if *ok {
                    let t: Vec<String> = timings
                        .iter()
                        .map(|(p, s)| format!("{p} {s:.2}s"))
                        .collect();
                    format!(
                        "==> {b}: build finished in {seconds:.1}s ({})",
                        t.join(", ")
                    )
                } else if *cancelled {
                    format!("==> {b}: build interrupted after {seconds:.1}s; cleaned up")
                } else {
                    let err = error.clone().unwrap_or_default();
                    let mut lines = err.lines();
                    let first = lines.next().unwrap_or("");
                    let rest: Vec<String> = lines.map(|l| format!("    {b}: {l}")).collect();
                    let mut s = format!("==> {b}: build failed after {seconds:.1}s: {first}");
                    if !rest.is_empty() {
                        s.push('\n');
                        s.push_str(&rest.join("\n"));
                    }
                    s
                }
            }
        };
        let _g = self.lock.lock();
        let mut out = std::io::stdout().lock();
        for l in line.lines() {
            if self.timestamps {
                let secs = e
                    .time
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let _ = writeln!(out, "{} {l}", kiln_template::timefmt::rfc3339(secs));
            } else {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
    }
}
