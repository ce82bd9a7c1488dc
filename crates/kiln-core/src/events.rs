//! Events: the engine and plugins never print; they emit events, and the CLI decides how to show
//! them (plain lines, a terminal display, JSON). Every string passes through redaction of
//! sensitive values before it leaves the emitter.

use std::sync::{Arc, Mutex};
use std::time::Instant;
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    BuildStarted,
    /// A phase of the build: launch, provision, shutdown, export, post-process.
    Phase(String),
    /// Step `index` (1-based) of `total`: a provisioner or post-processor.
    Step {
        index: usize,
        total: usize,
        kind: String,
    },
    /// A message for the user.
    Message {
        level: Level,
        text: String,
    },
    /// A line a provisioner's command printed.
    Output(String),
    /// Why kiln is still waiting (for SSH): shown only when it changes.
    Waiting(String),
    /// Progress of a long transfer (`what`: "export", "download", ...), in bytes or percent.
    Progress {
        what: String,
        done: u64,
        total: u64,
    },
    Artifact {
        files: Vec<String>,
        id: String,
    },
    BuildFinished {
        /// Seconds per phase.
        timings: Vec<(String, f64)>,
        ok: bool,
        cancelled: bool,
        error: Option<String>,
        seconds: f64,
        artifact: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Event {
    pub build: String,
    pub time: SystemTime,
    pub kind: EventKind,
}

pub type Sink = Arc<dyn Fn(Event) + Send + Sync>;

/// Emits events for one build, masking sensitive values.
#[derive(Clone)]
pub struct Emitter {
    build: String,
    sink: Sink,
    secrets: Arc<Vec<String>>,
    /// When each phase started, for the timing summary.
    phases: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Emitter {
    pub fn new(build: impl Into<String>, sink: Sink, secrets: Arc<Vec<String>>) -> Self {
        Emitter {
            build: build.into(),
            sink,
            secrets,
            phases: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Seconds spent in each phase so far, in order (the last one up to now).
    pub fn timings(&self) -> Vec<(String, f64)> {
        let phases = self.phases.lock().map(|p| p.clone()).unwrap_or_default();
        let now = Instant::now();
        phases
            .iter()
            .enumerate()
            .map(|(i, (name, start))| {
                let end = phases.get(i + 1).map_or(now, |(_, s)| *s);
                (name.clone(), end.duration_since(*start).as_secs_f64())
            })
            .collect()
    }

    pub fn build(&self) -> &str {
        &self.build
    }

    pub fn redact(&self, s: &str) -> String {
        kiln_template::redact(&self.secrets, s)
    }

    /// Whether `s` contains a sensitive value of the template (so it must not reach a command
    /// line or a log).
    pub fn holds_secret(&self, s: &str) -> bool {
        self.secrets
            .iter()
            .any(|x| x.len() >= 2 && s.contains(x.as_str()))
    }

    pub fn emit(&self, kind: EventKind) {
        let kind = match kind {
            EventKind::Message { level, text } => EventKind::Message {
                level,
                text: self.redact(&text),
            },
            EventKind::Output(l) => EventKind::Output(self.redact(&l)),
            EventKind::Waiting(l) => EventKind::Waiting(self.redact(&l)),
            EventKind::BuildFinished {
                timings,
                ok,
                cancelled,
                error,
                seconds,
                artifact,
            } => EventKind::BuildFinished {
                timings,
                ok,
                cancelled,
                error: error.map(|e| self.redact(&e)),
                seconds,
                artifact,
            },
            other => other,
        };
        (self.sink)(Event {
            build: self.build.clone(),
            time: SystemTime::now(),
            kind,
        });
    }

    pub fn say(&self, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level: Level::Info,
            text: text.into(),
        });
    }
    pub fn debug(&self, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level: Level::Debug,
            text: text.into(),
        });
    }
    pub fn warn(&self, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level: Level::Warn,
            text: text.into(),
        });
    }
    pub fn error(&self, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level: Level::Error,
            text: text.into(),
        });
    }
    pub fn phase(&self, p: &str) {
        if let Ok(mut ph) = self.phases.lock() {
            ph.push((p.to_string(), Instant::now()));
        }
        self.emit(EventKind::Phase(p.to_string()));
    }
    pub fn output(&self, line: &str) {
        self.emit(EventKind::Output(line.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn sensitive_values_never_leave_the_emitter() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: Sink = Arc::new(move |e: Event| {
            if let Ok(mut v) = s.lock() {
                v.push(format!("{:?}", e.kind));
            }
        });
        let em = Emitter::new("b", sink, Arc::new(vec!["hunter2".to_string()]));
        em.say("password is hunter2");
        em.output("echo hunter2");
        let got = seen.lock().map(|v| v.join("\n")).unwrap_or_default();
        assert!(!got.contains("hunter2"), "{got}");
        assert!(got.contains("<sensitive>"), "{got}");
    }
}
