//! Runs builds: launch, provision (with pause_before, retries and timeouts), clean shutdown and
//! export, publish, post-process. Each build runs on its own thread; resources are RAII guards, so
//! whatever happens (error, timeout, Ctrl-C) they are released in reverse order of acquisition.

use crate::events::{EventKind, Sink};
use crate::{
    Artifact, Builder, Cancel, Communicator, Emitter, Error, Machine, PostProcessor, Provisioner,
    Result, StepCx,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Cleanup,
    Abort,
    Ask,
    RunCleanupProvisioner,
}

/// A provisioner or post-processor with Packer's common options.
pub struct StepSpec<T: ?Sized> {
    pub label: String,
    pub pause_before: Option<Duration>,
    pub max_retries: u32,
    pub timeout: Option<Duration>,
    pub step: Box<T>,
}

pub struct Job {
    pub name: String,
    pub builder: Box<dyn Builder>,
    pub provisioners: Vec<StepSpec<dyn Provisioner>>,
    pub error_cleanup: Option<StepSpec<dyn Provisioner>>,
    pub post: Vec<Vec<StepSpec<dyn PostProcessor>>>,
    pub secrets: Arc<Vec<String>>,
    pub template_dir: PathBuf,
}

/// Asks the person at the terminal what to do after a failure: 'c'leanup, 'a'bort, 'r'etry.
pub type AskFn = Arc<dyn Fn(&str) -> char + Send + Sync>;

pub struct RunOptions {
    /// 0 = no limit.
    pub parallel: usize,
    pub on_error: OnError,
    pub force: bool,
    pub interactive: bool,
    pub ask: Option<AskFn>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub ok: bool,
    pub cancelled: bool,
    pub error: Option<String>,
    pub artifact: Option<Artifact>,
    pub seconds: f64,
}

/// Runs every job, at most `parallel` at a time; returns one outcome per job, in job order.
pub fn run(jobs: Vec<Job>, opts: &RunOptions, sink: Sink, cancel: &Cancel) -> Vec<Outcome> {
    let n = jobs.len();
    let workers = if opts.parallel == 0 {
        n
    } else {
        opts.parallel.min(n)
    }
    .max(1);
    let queue: Mutex<VecDeque<(usize, Job)>> = Mutex::new(jobs.into_iter().enumerate().collect());
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; n]);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((i, job)) = next else { break };
                let out = run_job(job, opts, sink.clone(), cancel);
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(out);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

fn run_job(job: Job, opts: &RunOptions, sink: Sink, cancel: &Cancel) -> Outcome {
    let em = Emitter::new(job.name.clone(), sink, job.secrets.clone());
    let start = Instant::now();
    em.emit(EventKind::BuildStarted);
    let result = build(&job, opts, &em, cancel);
    let seconds = start.elapsed().as_secs_f64();
    let cancelled =
        matches!(result, Err(Error::Cancelled)) || (result.is_err() && cancel.is_cancelled());
    let (ok, error, artifact) = match result {
        Ok(a) => (true, None, Some(a)),
        Err(e) => (false, Some(em.redact(&e.to_string())), None),
    };
    em.emit(EventKind::BuildFinished {
        timings: em.timings(),
        ok,
        cancelled,
        error: error.clone(),
        seconds,
        artifact: artifact.as_ref().map(|a| a.id.clone()),
    });
    Outcome {
        name: job.name,
        ok,
        cancelled,
        error,
        artifact,
        seconds,
    }
}

fn build(job: &Job, opts: &RunOptions, em: &Emitter, cancel: &Cancel) -> Result<Artifact> {
    job.builder.preflight(opts.force)?;
    cancel.check()?;
    em.phase("launch");
    let mut machine = job.builder.launch(em, cancel)?;
    let vars = machine.vars().clone();
    em.phase("provision");
    let total = job.provisioners.len();
    for (i, p) in job.provisioners.iter().enumerate() {
        em.emit(EventKind::Step {
            index: i + 1,
            total,
            kind: p.label.clone(),
        });
        let r = run_provisioner(p, machine.as_mut(), job, opts, em, cancel, &vars);
        if let Err(e) = r {
            return Err(on_failure(e, machine, job, opts, em, cancel, &vars));
        }
    }
    cancel.check()?;
    em.phase("shutdown");
    let mut artifact = machine.shutdown(em, cancel)?;
    if let Err(e) = cancel
        .check()
        .and_then(|()| publish(&mut artifact, opts.force))
    {
        if let Some((staging, _)) = artifact.staging.take() {
            let _ = std::fs::remove_dir_all(staging);
        }
        return Err(e);
    }
    em.emit(EventKind::Artifact {
        files: artifact
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        id: artifact.id.clone(),
    });
    if !job.post.is_empty() {
        em.phase("post-process");
    }
    let input = artifact.clone();
    for chain in &job.post {
        let mut current = input.clone();
        for p in chain {
            cancel.check()?;
            if let Some(d) = p.pause_before {
                cancel.sleep(d)?;
            }
            em.say(format!("running post-processor: {}", p.label));
            let cx = step_cx(job, opts, em, cancel, &vars);
            current = p.step.process(&current, &cx)?;
        }
    }
    Ok(artifact)
}

fn step_cx<'a>(
    job: &'a Job,
    opts: &RunOptions,
    em: &'a Emitter,
    cancel: &'a Cancel,
    vars: &'a BTreeMap<String, String>,
) -> StepCx<'a> {
    StepCx {
        em,
        cancel,
        build_name: &job.name,
        builder_type: job.builder.kind(),
        vars,
        template_dir: &job.template_dir,
        interactive: opts.interactive,
    }
}

fn run_provisioner(
    p: &StepSpec<dyn Provisioner>,
    machine: &mut dyn Machine,
    job: &Job,
    opts: &RunOptions,
    em: &Emitter,
    cancel: &Cancel,
    vars: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(d) = p.pause_before {
        em.say(format!("pausing {d:?} before the next provisioner"));
        cancel.sleep(d)?;
    }
    let mut attempt = 0;
    loop {
        cancel.check()?;
        em.say(format!("provisioning with {}", p.label));
        let cx = step_cx(job, opts, em, cancel, vars);
        let mut comm = machine.communicator();
        if let Some(c) = comm.as_deref_mut() {
            c.set_timeout(p.timeout);
        }
        let started = Instant::now();
        let r = p
            .step
            .provision(comm.map(|c| c as &mut dyn Communicator), &cx);
        if let Some(c) = machine.communicator() {
            c.set_timeout(None);
        }
        let r = match (r, p.timeout) {
            (Err(e), Some(t)) if started.elapsed() >= t && !cancel.is_cancelled() => Err(
                Error::failed(format!("{} timed out after {t:?}: {e}", p.label)),
            ),
            (r, _) => r,
        };
        match r {
            Ok(()) => return Ok(()),
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(_) if cancel.is_cancelled() => return Err(Error::Cancelled),
            Err(e) if attempt < p.max_retries => {
                attempt += 1;
                let wait = Duration::from_secs((1u64 << attempt.min(5)).min(30));
                em.warn(format!(
                    "{} failed ({e}); retry {attempt}/{} in {}s",
                    p.label,
                    p.max_retries,
                    wait.as_secs()
                ));
                cancel.sleep(wait)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies -on-error; returns the error to report.
fn on_failure(
    e: Error,
    machine: Box<dyn Machine>,
    job: &Job,
    opts: &RunOptions,
    em: &Emitter,
    cancel: &Cancel,
    vars: &BTreeMap<String, String>,
) -> Error {
    if matches!(e, Error::Cancelled) || cancel.is_cancelled() {
        return Error::Cancelled;
    }
    let mut mode = opts.on_error;
    if mode == OnError::Ask {
        mode = match (&opts.ask, opts.interactive) {
            (Some(ask), true) => match ask(&format!("build {} failed: {e}", job.name)) {
                'a' => OnError::Abort,
                _ => OnError::Cleanup,
            },
            _ => OnError::Cleanup,
        };
    }
    let mut machine = machine;
    if mode == OnError::RunCleanupProvisioner
        || (mode == OnError::Cleanup && job.error_cleanup.is_some())
    {
        if let Some(p) = &job.error_cleanup {
            em.say(format!("running error-cleanup-provisioner {}", p.label));
            if let Err(ce) = run_provisioner(p, machine.as_mut(), job, opts, em, cancel, vars) {
                em.warn(format!("error-cleanup-provisioner failed: {ce}"));
            }
        }
    }
    if mode == OnError::Abort {
        // QEMU never outlives kiln, so "abort" keeps the guest running while kiln waits.
        em.error(format!("build failed: {e}"));
        em.error(format!("-on-error=abort: the guest is kept running for inspection; press Ctrl-C to stop it. {}", machine.access()));
        while !cancel.is_cancelled() {
            let _ = cancel.sleep(Duration::from_secs(3600));
        }
        drop(machine);
    } else {
        em.say("build failed: stopping the guest and removing its files");
        drop(machine);
    }
    e
}

/// Moves the staged output into its final place.
fn publish(a: &mut Artifact, force: bool) -> Result<()> {
    let Some((staging, target)) = a.staging.clone() else {
        return Ok(());
    };
    let _ = std::fs::remove_file(staging.join("kiln.pid"));
    if target.exists() {
        if !force {
            return Err(Error::failed(format!(
                "output directory {} appeared while building; rerun with -force to replace it",
                target.display()
            )));
        }
        std::fs::remove_dir_all(&target)
            .map_err(|e| Error::io(format!("cannot remove {} (-force)", target.display()), e))?;
    }
    std::fs::rename(&staging, &target).map_err(|e| {
        Error::io(
            format!("cannot move the image into {}", target.display()),
            e,
        )
    })?;
    a.staging = None;
    a.files = a
        .files
        .iter()
        .map(|f| {
            f.strip_prefix(&staging)
                .map(|r| target.join(r))
                .unwrap_or_else(|_| f.clone())
        })
        .collect();
    Ok(())
}
