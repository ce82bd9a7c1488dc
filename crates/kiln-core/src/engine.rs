//! Runs builds: launch, provision (with pause_before, retries and timeouts), clean shutdown and
//! export, publish, post-process. Each build runs on its own thread; resources are RAII guards, so
//! whatever happens (error, timeout, Ctrl-C) they are released in reverse order of acquisition.

use crate::events::{EventKind, Sink};
use crate::{
    Artifact, Builder, Cancel, Communicator, Emitter, Error, Machine, PostProcessor, Provisioner,
    Result, StepCx,
};
use kiln_store::Store;
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
    /// keep_input_artifact as the template set it (post-processors).
    pub keep_input_artifact: Option<bool>,
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
    /// What the template contributes to the image manifest (files and their digests, variables).
    pub template_meta: serde_json::Value,
    /// The tag the image gets in the store.
    pub tag: String,
}

/// A cache of images shared between machines (an OCI registry).
pub trait RemoteCache: Send + Sync {
    /// Downloads the image recorded under `key` into `store`, if the remote has one; its id.
    fn fetch(&self, key: &str, store: &Store, em: &Emitter) -> Result<Option<String>>;
    /// Uploads image `id` under `key` (a no-op without --cache-to).
    fn publish(&self, key: &str, id: &str, store: &Store, em: &Emitter) -> Result<()>;
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
    /// -debug: asked before each provisioner runs.
    pub pause: Option<AskFn>,
    /// A build cache shared through a registry (--cache-from / --cache-to).
    pub remote: Option<Arc<dyn RemoteCache>>,
    /// --cache-required: a shared cache that cannot be read fails the build (else: warn, build).
    pub cache_required: bool,
    /// The team's shared cache secret (KILN_CACHE_SECRET): keys the HMACs of sensitive values
    /// in cache keys, so every runner computes the same key. Without it, the store's own secret.
    pub cache_secret: Option<Vec<u8>>,
    pub store: Arc<Store>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub ok: bool,
    pub cancelled: bool,
    pub error: Option<String>,
    pub artifact: Option<Artifact>,
    pub seconds: f64,
    /// Whether the image came from the store without building.
    pub cached: bool,
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
    let cached = artifact
        .as_ref()
        .is_some_and(|a| a.data.get("cached").is_some_and(|c| c == "true"));
    Outcome {
        name: job.name,
        ok,
        cancelled,
        error,
        artifact,
        seconds,
        cached,
    }
}

fn build(job: &Job, opts: &RunOptions, em: &Emitter, cancel: &Cancel) -> Result<Artifact> {
    let started = crate::now_rfc3339();
    job.builder.preflight(opts.force)?;
    let (out_dir, vm_name) = job.builder.output();
    em.phase("key");
    let secret = match &opts.cache_secret {
        Some(s) => s.clone(),
        None => {
            if !job.secrets.is_empty() && opts.remote.is_some() {
                em.warn("the shared cache cannot match this build on another machine: it has sensitive values, which enter the cache key as HMACs under this store's own secret; set KILN_CACHE_SECRET (or KILN_CACHE_SECRET_FILE) to the same value on every runner");
            }
            opts.store.secret().map_err(store_err)?
        }
    };
    let key_inputs = resolve_markers(cache_key_inputs(job, em, cancel)?, &job.secrets, &secret)?;
    let key = cache_key(&key_inputs, &job.secrets, &secret);
    em.debug(format!("cache key {key}"));
    if !opts.force {
        // The local store first, then the shared cache.
        let local = opts
            .store
            .lookup_key(&key)
            .map_err(store_err)?
            .map(|id| (id, "has the same inputs"));
        let hit = match (local, &opts.remote) {
            (Some(h), _) => Some(h),
            (None, Some(remote)) => match remote.fetch(&key, &opts.store, em) {
                Ok(found) => found.map(|id| {
                    let _ = opts.store.tag(&id, &job.tag);
                    (id, "was downloaded from the shared cache")
                }),
                Err(e) if !opts.cache_required && !matches!(e, Error::Cancelled) => {
                    em.warn(format!(
                        "{e}; building without it (--cache-required makes this an error)"
                    ));
                    None
                }
                Err(e) => return Err(e),
            },
            (None, None) => None,
        };
        if let Some((id, why)) = hit {
            em.say(format!(
                "up to date: image {} {why} (cache key {}); nothing to build",
                kiln_store::short(&id),
                &key[..19.min(key.len())]
            ));
            // Verify on read: a reused image is rehashed before it is handed out. (A just-built
            // one is not: commit_image hashed it moments ago.)
            if let Some(problem) = opts
                .store
                .verify(std::slice::from_ref(&id))
                .map_err(store_err)?
                .into_iter()
                .next()
            {
                return Err(Error::failed(format!(
                    "image store: {problem}; rebuild with -force"
                )));
            }
            let mut artifact = materialize(
                &opts.store,
                &id,
                &out_dir,
                &vm_name,
                job.builder.kind(),
                false,
                em,
                cancel,
            )?;
            artifact.data.insert("cached".into(), "true".into());
            post_process(job, opts, em, cancel, &BTreeMap::new(), &artifact)?;
            return Ok(artifact);
        }
    }
    if out_dir.exists() && !opts.force {
        return Err(Error::failed(format!(
            "output directory {} already exists: remove it or rerun with -force",
            out_dir.display()
        )));
    }
    cancel.check()?;
    em.phase("launch");
    let mut machine = job.builder.launch(em, cancel)?;
    let vars = machine.vars().clone();
    em.phase("provision");
    let total = job.provisioners.len();
    let mut records = Vec::new();
    for (i, p) in job.provisioners.iter().enumerate() {
        em.emit(EventKind::Step {
            index: i + 1,
            total,
            kind: p.label.clone(),
        });
        if let Some(pause) = &opts.pause {
            pause(&format!(
                "{}: next is provisioner {}/{total} {} ({})",
                job.name,
                i + 1,
                p.label,
                machine.access()
            ));
            cancel.check()?;
        }
        let t = Instant::now();
        let r = run_provisioner(p, machine.as_mut(), job, opts, em, cancel, &vars);
        if let Err(e) = r {
            return Err(on_failure(e, machine, job, opts, em, cancel, &vars));
        }
        records.push(serde_json::json!({
            "type": p.step.kind(),
            "name": p.label,
            "inputs": key_inputs["provisioners"][i]["inputs"],
            "exitStatus": 0,
            "seconds": (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        }));
    }
    cancel.check()?;
    em.phase("shutdown");
    let tmp = opts.store.temp_dir().map_err(store_err)?;
    let artifact = machine.shutdown(em, cancel, tmp.path())?;
    cancel.check()?;
    em.phase("store");
    let disk = artifact
        .files
        .first()
        .cloned()
        .ok_or_else(|| Error::failed("the builder produced no disk"))?;
    let format = artifact
        .data
        .get("format")
        .cloned()
        .unwrap_or_else(|| "qcow2".into());
    let mut config = serde_json::json!({
        "schemaVersion": 1,
        "mediaType": kiln_store::CONFIG_TYPE,
        "name": job.name,
        "cacheKey": key,
        "disk": {"name": vm_name, "format": format, "virtualSize": artifact.data.get("virtual_size").and_then(|v| v.parse::<u64>().ok())},
        "base": {"source": artifact.data.get("base_source"), "digest": artifact.data.get("base_sha256").map(|d| format!("sha256:{d}"))},
        "template": job.template_meta,
        "builder": {
            "type": job.builder.kind(),
            "inputs": key_inputs["builder"],
            "qemuVersion": artifact.data.get("qemu_version"),
            "accelerator": artifact.data.get("accelerator"),
            "sshHostKey": artifact.data.get("ssh_host_key"),
        },
        "provisioners": records,
        "kiln": {"version": env!("CARGO_PKG_VERSION")},
        "startedAt": started,
        "finishedAt": crate::now_rfc3339(),
        "host": {"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()},
    });
    // A last guard: nothing sensitive is ever written into the store.
    let text = kiln_template::redact(&job.secrets, &config.to_string());
    config = serde_json::from_str(&text).map_err(|e| Error::failed(format!("manifest: {e}")))?;
    let media = format!("application/vnd.kiln.disk.{format}");
    let (id, disk_ref) = opts
        .store
        .commit_image(&kiln_store::NewImage {
            disk: &disk,
            disk_media_type: &media,
            disk_title: &vm_name,
            config: &config,
            cache_key: Some(&key),
            tag: Some(&job.tag),
            created: &crate::now_rfc3339(),
        })
        .map_err(store_err)?;
    drop(tmp);
    em.say(format!(
        "stored image {} (disk {}, {} bytes)",
        kiln_store::short(&id),
        kiln_store::short(&disk_ref.digest),
        disk_ref.size
    ));
    if let Some(remote) = &opts.remote {
        if let Err(e) = remote.publish(&key, &id, &opts.store, em) {
            em.warn(format!(
                "the image was built but not uploaded to the shared cache: {e}"
            ));
        }
    }
    // Cancelled once the commit is done: the image is whole in the store, but nothing is
    // published (materialize checks again right before its rename).
    let stored_but_cancelled = || {
        em.say(format!(
            "cancelled after the store commit: image {} is whole in the store (see `kiln images`); nothing was published to {}",
            kiln_store::short(&id),
            out_dir.display()
        ));
        Error::Cancelled
    };
    if cancel.is_cancelled() {
        return Err(stored_but_cancelled());
    }
    em.phase("publish");
    let mut published = match materialize(
        &opts.store,
        &id,
        &out_dir,
        &vm_name,
        job.builder.kind(),
        opts.force,
        em,
        cancel,
    ) {
        Err(Error::Cancelled) => return Err(stored_but_cancelled()),
        r => r?,
    };
    published.data.extend(artifact.data);
    post_process(job, opts, em, cancel, &vars, &published)?;
    Ok(published)
}

fn store_err(e: kiln_store::StoreError) -> Error {
    Error::failed(format!("image store: {e}"))
}

/// What decides whether an image must be rebuilt: the builder's disk-affecting inputs and every
/// provisioner with the content digests of the files it uses.
fn cache_key_inputs(job: &Job, em: &Emitter, cancel: &Cancel) -> Result<serde_json::Value> {
    let mut provs = Vec::new();
    for p in &job.provisioners {
        provs.push(serde_json::json!({"type": p.step.kind(), "inputs": p.step.key_inputs()?}));
    }
    Ok(serde_json::json!({
        "epoch": CACHE_EPOCH,
        "builder": {"type": job.builder.kind(), "inputs": job.builder.key_inputs(em, cancel)?},
        "provisioners": provs,
    }))
}

/// Replaces each `text_digest` marker with the text's sha256 (hex), or `hmac:<hex>` under the
/// cache secret when the text holds a sensitive value; and each path marker
/// (`config::key::PATH_DIGEST`) with the content digest of the file or tree it names.
fn resolve_markers(
    v: serde_json::Value,
    secrets: &[String],
    key: &[u8],
) -> Result<serde_json::Value> {
    use serde_json::Value;
    Ok(match v {
        Value::Object(m) => {
            if m.len() == 1 {
                if let Some(Value::String(t)) = m.get(crate::TEXT_DIGEST) {
                    let secret = secrets
                        .iter()
                        .any(|s| !s.is_empty() && t.contains(s.as_str()));
                    return Ok(Value::String(if secret {
                        format!("hmac:{}", kiln_store::hmac_sha256(key, t.as_bytes()))
                    } else {
                        kiln_template::sha256_hex(t.as_bytes())
                    }));
                }
                if let Some(Value::String(p)) = m.get(crate::config::key::PATH_DIGEST) {
                    return Ok(Value::String(crate::digest_path(std::path::Path::new(p))?));
                }
            }
            Value::Object(
                m.into_iter()
                    .map(|(k, x)| Ok((k, resolve_markers(x, secrets, key)?)))
                    .collect::<Result<_>>()?,
            )
        }
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| resolve_markers(x, secrets, key))
                .collect::<Result<_>>()?,
        ),
        other => other,
    })
}

/// Bump when what goes into a key changes meaning.
/// `kiln-cache-2`: builder options enter the key as the builder's resolved settings (every
/// option that can change the disk, defaults applied), not a hand-kept list.
const CACHE_EPOCH: &str = "kiln-cache-2";

/// sha256 over canonical JSON (sorted keys). Sensitive values enter only as an HMAC under the
/// store's secret, so the key reveals nothing about them.
pub fn cache_key(inputs: &serde_json::Value, secrets: &[String], store_secret: &[u8]) -> String {
    fn canon(v: &serde_json::Value, secrets: &[String], key: &[u8], out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                    out.push(':');
                    canon(&m[*k], secrets, key, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canon(x, secrets, key, out);
                }
                out.push(']');
            }
            serde_json::Value::String(s) => {
                let mut s = s.clone();
                for secret in secrets.iter().filter(|x| !x.is_empty()) {
                    if s.contains(secret.as_str()) {
                        s = s.replace(
                            secret.as_str(),
                            &format!("hmac:{}", kiln_store::hmac_sha256(key, secret.as_bytes())),
                        );
                    }
                }
                out.push_str(&serde_json::Value::String(s).to_string());
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canon(inputs, secrets, store_secret, &mut text);
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Puts image `id`'s disk into output_directory (a copy, through a staging dir renamed into
/// place). An existing output_directory that already holds this disk is left alone. The caller
/// has verified the image.
#[allow(clippy::too_many_arguments)] // folded into a publish phase struct by the structure issue (11)
fn materialize(
    store: &Store,
    id: &str,
    out_dir: &std::path::Path,
    vm_name: &str,
    builder_type: &str,
    force: bool,
    em: &Emitter,
    cancel: &Cancel,
) -> Result<Artifact> {
    let m = store.read_json(id).map_err(store_err)?;
    let layer = &m["layers"][0];
    let digest = layer["digest"]
        .as_str()
        .ok_or_else(|| Error::failed(format!("image {id} has no disk layer")))?
        .to_string();
    let blob = store.blob_path(&digest).map_err(store_err)?;
    let target = out_dir.join(vm_name);
    let mut data = BTreeMap::new();
    data.insert(
        "disk_sha256".to_string(),
        digest.trim_start_matches("sha256:").to_string(),
    );
    data.insert(
        "disk_size".to_string(),
        layer["size"].as_u64().unwrap_or(0).to_string(),
    );
    data.insert("image_id".to_string(), id.to_string());
    let artifact = Artifact {
        builder_type: builder_type.to_string(),
        files: vec![target.clone()],
        id: id.to_string(),
        data,
    };
    if out_dir.exists() {
        let same =
            target.is_file() && kiln_store::hash_file(&target).is_ok_and(|(d, _)| d == digest);
        if same {
            em.say(format!("{} already holds this image", out_dir.display()));
            return Ok(artifact);
        }
        // An empty directory (e.g. a post-processor took the disk away) is simply refilled.
        let empty = std::fs::read_dir(out_dir).is_ok_and(|mut d| d.next().is_none());
        if !force && !empty {
            return Err(Error::failed(format!("output directory {} already exists and holds another image: remove it or rerun with -force", out_dir.display())));
        }
    }
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    crate::workdir::sweep_stale(parent);
    let name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.kiln-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)
        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
    let guard = crate::workdir::RemoveOnDrop::new(staging.clone());
    std::fs::write(staging.join("kiln.pid"), std::process::id().to_string())
        .map_err(|e| Error::io("cannot write to the staging directory", e))?;
    let staged = staging.join(vm_name);
    crate::workdir::copy_file(&blob, &staged)?;
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|e| Error::io("cannot chmod the output image", e))?;
    // Cancelled means nothing published: the last check is right before the rename.
    cancel.check()?;
    let _ = std::fs::remove_file(staging.join("kiln.pid"));
    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir)
            .map_err(|e| Error::io(format!("cannot remove {} (-force)", out_dir.display()), e))?;
    }
    std::fs::rename(&staging, out_dir).map_err(|e| {
        Error::io(
            format!("cannot move the image into {}", out_dir.display()),
            e,
        )
    })?;
    guard.disarm();
    em.emit(EventKind::Artifact {
        files: vec![target.display().to_string()],
        id: id.to_string(),
    });
    Ok(artifact)
}

fn post_process(
    job: &Job,
    opts: &RunOptions,
    em: &Emitter,
    cancel: &Cancel,
    vars: &BTreeMap<String, String>,
    artifact: &Artifact,
) -> Result<()> {
    if job.post.is_empty() {
        return Ok(());
    }
    em.phase("post-process");
    for chain in &job.post {
        let mut current = artifact.clone();
        for p in chain {
            cancel.check()?;
            if let Some(d) = p.pause_before {
                cancel.sleep(d)?;
            }
            em.say(format!("running post-processor: {}", p.label));
            let cx = step_cx(job, opts, em, cancel, vars);
            let next = p.step.process(&current, &cx)?;
            // As in Packer: a post-processor that replaces its input removes it unless
            // keep_input_artifact = true. The image itself stays in the store either way.
            if !p
                .keep_input_artifact
                .unwrap_or_else(|| p.step.keeps_input_by_default())
            {
                for f in current.files.iter().filter(|f| !next.files.contains(f)) {
                    let _ = std::fs::remove_file(f);
                }
            }
            current = next;
        }
    }
    Ok(())
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
            Err(e @ Error::Fatal(_)) => return Err(e),
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
        em.error(format!("{e}"));
        em.say("build failed: stopping the guest and removing its files");
        drop(machine);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_digests_are_sha256_unless_the_text_holds_a_secret() {
        let inputs = serde_json::json!({"scripts": [crate::text_digest("echo hi"), crate::text_digest("curl -u me:tok-123456 x")]});
        let secrets = vec!["tok-123456".to_string()];
        let a = resolve_markers(inputs.clone(), &secrets, b"key-a").expect("resolves");
        let b = resolve_markers(inputs.clone(), &secrets, b"key-b").expect("resolves");
        // Plain text: its sha256, the same everywhere (cache keys of old stores still match).
        assert_eq!(a["scripts"][0], kiln_template::sha256_hex(b"echo hi"));
        assert_eq!(a["scripts"][0], b["scripts"][0]);
        // Text with a secret: an HMAC under the cache secret, never the guessable sha256.
        let h = a["scripts"][1].as_str().unwrap_or_default();
        assert!(h.starts_with("hmac:"), "{h}");
        assert_ne!(a["scripts"][1], b["scripts"][1]);
        assert!(!a
            .to_string()
            .contains(&kiln_template::sha256_hex(b"curl -u me:tok-123456 x")));
        assert!(!a.to_string().contains("tok-123456"));
        // The cache key depends on the cache secret only through sensitive values.
        let plain = serde_json::json!({"s": crate::text_digest("echo hi")});
        let k1 = cache_key(
            &resolve_markers(plain.clone(), &secrets, b"key-a").expect("resolves"),
            &secrets,
            b"key-a",
        );
        let k2 = cache_key(
            &resolve_markers(plain, &secrets, b"key-b").expect("resolves"),
            &secrets,
            b"key-b",
        );
        assert_eq!(k1, k2);
    }
}
