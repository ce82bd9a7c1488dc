//! Showing events. Four modes:
//! - a terminal: one live line per build (spinner, phase, step, elapsed; a byte bar while a disk
//!   is exported), provisioner output scrolling above, each line prefixed with its build in a
//!   stable colour;
//! - plain lines (CI, pipes): `==> build: message`, as Packer prints them, optionally timestamped;
//! - `-machine-readable`: Packer's `timestamp,target,type,data…` lines;
//! - `--json`: one JSON object per event (docs/events.md).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_core::{Event, EventKind, Level};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    MachineReadable,
    Json,
}

pub struct Ui {
    mode: Mode,
    verbose: bool,
    timestamps: bool,
    color: bool,
    lock: Mutex<()>,
    mp: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    transfers: Mutex<HashMap<String, ProgressBar>>,
}

/// JSON event schema version (docs/events.md).
pub const EVENTS_VERSION: u32 = 1;

const COLORS: [u8; 6] = [36, 35, 33, 32, 34, 31];

impl Ui {
    pub fn new(mode: Mode, verbose: bool, timestamps: bool, color: bool) -> Arc<Ui> {
        let mp = (mode == Mode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Arc::new(Ui {
            mode,
            verbose,
            timestamps,
            color,
            lock: Mutex::new(()),
            mp,
            bars: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
        })
    }

    fn paint(&self, build: &str) -> String {
        if !self.color {
            return build.to_string();
        }
        let h = build
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        format!("\x1b[{}m{build}\x1b[0m", COLORS[h as usize % COLORS.len()])
    }

    fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn handle(&self, e: &Event) {
        match self.mode {
            Mode::Json => self.json(e),
            Mode::MachineReadable => self.machine(e),
            Mode::Tty => self.tty(e),
            Mode::Plain => {
                if let Some(l) = self.line(e) {
                    self.print(e, &l);
                }
            }
        }
    }

    /// The plain-text rendering of an event (None: not shown).
    fn line(&self, e: &Event) -> Option<String> {
        let b = self.paint(&e.build);
        Some(match &e.kind {
            EventKind::BuildStarted => format!("==> {b}: build started"),
            EventKind::Phase(p) => {
                if !self.verbose {
                    return None;
                }
                format!("==> {b}: phase: {p}")
            }
            EventKind::Step { index, total, kind } => {
                format!("==> {b}: provisioner {index}/{total}: {kind}")
            }
            EventKind::Message { level, text } => match level {
                Level::Debug if !self.verbose => return None,
                Level::Debug => format!("    {b}: (debug) {text}"),
                Level::Info => format!("==> {b}: {text}"),
                Level::Warn => format!("==> {b}: warning: {text}"),
                Level::Error => format!("==> {b}: error: {text}"),
            },
            EventKind::Output(l) => format!("    {b}: {l}"),
            EventKind::Waiting(w) => format!("==> {b}: {w}"),
            EventKind::Progress { .. } => return None,
            EventKind::Artifact { files, id } => {
                format!("==> {b}: image: {} ({id})", files.join(", "))
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
                    let mut s = format!(
                        "==> {b}: build failed after {seconds:.1}s: {}",
                        lines.next().unwrap_or("")
                    );
                    for l in lines {
                        s.push_str(&format!("\n    {b}: {l}"));
                    }
                    s
                }
            }
        })
    }

    fn print(&self, e: &Event, text: &str) {
        let _g = self.lock.lock();
        let mut out = std::io::stdout().lock();
        for l in text.lines() {
            if self.timestamps {
                let _ = writeln!(out, "{} {l}", rfc3339(e));
            } else {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
    }

    fn tty(&self, e: &Event) {
        let Some(mp) = &self.mp else { return };
        let bar = || -> Option<ProgressBar> {
            self.bars.lock().ok().and_then(|b| b.get(&e.build).cloned())
        };
        match &e.kind {
            EventKind::BuildStarted => {
                let pb = mp.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed:>4}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_prefix(self.bold(&self.paint(&e.build)));
                pb.set_message("starting");
                pb.enable_steady_tick(Duration::from_millis(100));
                if let Ok(mut b) = self.bars.lock() {
                    b.insert(e.build.clone(), pb);
                }
            }
            EventKind::Phase(p) => {
                if let Some(pb) = bar() {
                    pb.set_message(p.clone());
                }
            }
            EventKind::Step { index, total, kind } => {
                if let Some(pb) = bar() {
                    pb.set_message(format!("provisioner {index}/{total} {kind}"));
                }
            }
            EventKind::Waiting(w) => {
                if let Some(pb) = bar() {
                    pb.set_message(w.clone());
                }
            }
            EventKind::Progress { what, done, total } => {
                let key = format!("{}/{what}", e.build);
                let mut t = match self.transfers.lock() {
                    Ok(t) => t,
                    Err(_) => return,
                };
                let pb = t.entry(key.clone()).or_insert_with(|| {
                    let pb = mp.add(ProgressBar::new(*total));
                    pb.set_style(
                        ProgressStyle::with_template("  {prefix} [{bar:30}] {percent:>3}%")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    pb.set_prefix(format!("{} {what}", self.paint(&e.build)));
                    pb
                });
                pb.set_position(*done);
                if done >= total {
                    pb.finish_and_clear();
                    t.remove(&key);
                }
            }
            EventKind::BuildFinished { .. } => {
                if let Some(pb) = self.bars.lock().ok().and_then(|mut b| b.remove(&e.build)) {
                    pb.finish_and_clear();
                }
                if let Some(l) = self.line(e) {
                    let _ = mp.println(l);
                }
            }
            _ => {
                if let Some(l) = self.line(e) {
                    let _ = mp.println(l);
                }
            }
        }
    }

    fn machine(&self, e: &Event) {
        let ts = e
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let esc = |s: &str| {
            s.replace(',', "%!(PACKER_COMMA)")
                .replace('\n', "\\n")
                .replace('\r', "\\r")
        };
        let b = &e.build;
        let rows: Vec<String> = match &e.kind {
            EventKind::Artifact { files, id } => {
                let mut r = vec![
                    format!("{ts},{b},artifact-count,1"),
                    format!("{ts},{b},artifact,0,builder-id,kiln.qemu"),
                    format!("{ts},{b},artifact,0,id,{}", esc(id)),
                    format!("{ts},{b},artifact,0,string,{}", esc(&format!("image {id}"))),
                ];
                r.push(format!("{ts},{b},artifact,0,files-count,{}", files.len()));
                for (i, f) in files.iter().enumerate() {
                    r.push(format!("{ts},{b},artifact,0,file,{i},{}", esc(f)));
                }
                r.push(format!("{ts},{b},artifact,0,end"));
                r
            }
            EventKind::Output(l) => vec![format!(
                "{ts},{b},ui,message,{}",
                esc(&format!("    {b}: {l}"))
            )],
            EventKind::Message {
                level: Level::Error,
                text,
            } => vec![format!(
                "{ts},{b},ui,error,{}",
                esc(&format!("==> {b}: {text}"))
            )],
            EventKind::BuildFinished {
                ok: false, error, ..
            } => vec![format!(
                "{ts},{b},error,{}",
                esc(error.as_deref().unwrap_or(""))
            )],
            _ => match self.line(e) {
                Some(l) => vec![format!("{ts},{b},ui,say,{}", esc(&l))],
                None => Vec::new(),
            },
        };
        let _g = self.lock.lock();
        let mut out = std::io::stdout().lock();
        for r in rows {
            let _ = writeln!(out, "{r}");
        }
        let _ = out.flush();
    }

    fn json(&self, e: &Event) {
        use serde_json::json;
        let mut v = match &e.kind {
            EventKind::BuildStarted => json!({"type": "build-started"}),
            EventKind::Phase(p) => json!({"type": "phase", "phase": p}),
            EventKind::Step { index, total, kind } => {
                json!({"type": "step", "index": index, "total": total, "step": kind})
            }
            EventKind::Message { level, text } => match level {
                Level::Debug if !self.verbose => return,
                Level::Debug => json!({"type": "debug", "message": text}),
                Level::Info => json!({"type": "message", "message": text}),
                Level::Warn => json!({"type": "warning", "message": text}),
                Level::Error => json!({"type": "error", "message": text}),
            },
            EventKind::Output(l) => json!({"type": "output", "line": l}),
            EventKind::Waiting(w) => json!({"type": "waiting", "reason": w}),
            EventKind::Progress { what, done, total } => {
                json!({"type": "progress", "what": what, "done": done, "total": total})
            }
            EventKind::Artifact { files, id } => {
                json!({"type": "artifact", "id": id, "files": files})
            }
            EventKind::BuildFinished {
                ok,
                cancelled,
                error,
                seconds,
                artifact,
                timings,
            } => json!({
                "type": "build-finished", "ok": ok, "cancelled": cancelled, "error": error, "seconds": seconds,
                "artifact": artifact,
                "timings": timings.iter().map(|(p, s)| json!({"phase": p, "seconds": s})).collect::<Vec<_>>(),
            }),
        };
        v["v"] = json!(EVENTS_VERSION);
        v["time"] = json!(rfc3339_ms(e));
        v["build"] = json!(e.build);
        let _g = self.lock.lock();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A line that belongs to no build (the final summary).
    pub fn summary(&self, text: &str) {
        match self.mode {
            Mode::Json => {}
            Mode::MachineReadable => {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                for l in text.lines() {
                    crate::output::out(format_args!(
                        "{ts},,ui,say,{}",
                        l.replace(',', "%!(PACKER_COMMA)")
                    ));
                }
            }
            _ => {
                let _g = self.lock.lock();
                crate::output::out(text);
            }
        }
    }

    /// Runs `f` with the live display hidden (for prompts).
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.mp {
            Some(mp) => mp.suspend(f),
            None => f(),
        }
    }
}

fn rfc3339(e: &Event) -> String {
    let secs = e
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    kiln_template::timefmt::rfc3339(secs)
}

fn rfc3339_ms(e: &Event) -> String {
    let d = e
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = kiln_template::timefmt::rfc3339(d.as_secs() as i64);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), d.subsec_millis())
}
