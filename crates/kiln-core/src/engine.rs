//! Runs builds: launch, provision (with pause_before, retries and timeouts), clean shutdown and
//! export, publish, post-process. Each build runs on its own thread; resources are RAII guards, so
//! whatever happens (error, timeout, Ctrl-C) they are released in reverse order of acquisition.

use crate::events::{EventKind, Sink};
use crate::{
    Artifact, BaseRef, BuildMeta, Builder, Cancel, Communicator, DiskInfo, Emitter, Error, Machine,
    Output, PostProcessor, Provisioner, Publish, Result, StepCx, StoredImage,
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
    /// The first retry's wait (`max_retries`); each later one doubles it, up to 30 times it.
    pub retry_wait: Duration,
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
    let cached = artifact.as_ref().is_some_and(|a| a.cached);
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

/// A job's cache key and the inputs it was computed from (they go into the manifest).
struct Keyed {
    key: String,
    inputs: serde_json::Value,
}

/// One provisioner that ran, for the manifest.
type StepRecord = serde_json::Value;

/// The phases in order; each takes and returns typed values. A builder without a disk
/// (`publish() == None`) has no key, store or publish phase: it provisions and post-processes.
fn build(job: &Job, opts: &RunOptions, em: &Emitter, cancel: &Cancel) -> Result<Artifact> {
    let started = crate::now_rfc3339();
    job.builder.preflight(opts.force)?;
    for p in &job.provisioners {
        p.step.preflight()?;
    }
    let publish = job.builder.publish();
    let keyed = match &publish {
        Some(p) => {
            let k = key(job, opts, em, cancel)?;
            if let Some(a) = lookup(job, opts, em, cancel, &k, p)? {
                post_process(job, opts, em, cancel, &BTreeMap::new(), &a)?;
                return Ok(a);
            }
            if p.dir.exists() && !opts.force {
                return Err(Error::failed(format!(
                    "output directory {} already exists: remove it or rerun with -force",
                    p.dir.display()
                )));
            }
            Some(k)
        }
        None => None,
    };
    cancel.check()?;
    em.phase("launch");
    let machine = job.builder.launch(em, cancel)?;
    let vars = machine.vars().clone();
    let (machine, records) = provision(job, opts, em, cancel, machine, keyed.as_ref(), &vars)?;
    cancel.check()?;
    em.phase("shutdown");
    let tmp = opts.store.temp_dir()?;
    let built = machine.shutdown(em, cancel, tmp.path())?;
    cancel.check()?;
    let artifact = match (built.output, publish, keyed) {
        (
            Output::Disk {
                path,
                format,
                virtual_size,
            },
            Some(p),
            Some(k),
        ) => {
            let disk = Disk {
                path,
                format,
                virtual_size,
            };
            let image = store(job, opts, em, &k, &p, &disk, &built.meta, records, &started)?;
            drop(tmp);
            share(opts, em, &k, &image);
            let files = publish_phase(opts, em, cancel, &image, &p)?;
            Artifact {
                builder_type: job.builder.kind().to_string(),
                files,
                id: image.id.clone(),
                disk: Some(DiskInfo {
                    format: disk.format,
                    virtual_size: disk.virtual_size,
                }),
                image: Some(image),
                cached: false,
                meta: built.meta,
            }
        }
        (Output::Disk { .. }, _, _) => {
            return Err(Error::failed(format!(
                "the {} builder made a disk but names no output_directory for it",
                job.builder.kind()
            )))
        }
        (Output::Nothing, _, _) => Artifact {
            builder_type: job.builder.kind().to_string(),
            files: Vec::new(),
            id: String::new(),
            disk: None,
            image: None,
            cached: false,
            meta: built.meta,
        },
        (Output::Files { id, files }, _, _) => Artifact {
            builder_type: job.builder.kind().to_string(),
            files,
            id,
            disk: None,
            image: None,
            cached: false,
            meta: built.meta,
        },
        (Output::Remote { id }, _, _) => Artifact {
            builder_type: job.builder.kind().to_string(),
            files: Vec::new(),
            id,
            disk: None,
            image: None,
            cached: false,
            meta: built.meta,
        },
    };
    post_process(job, opts, em, cancel, &vars, &artifact)?;
    Ok(artifact)
}

/// The disk a builder left in the store's temp dir.
struct Disk {
    path: PathBuf,
    format: String,
    virtual_size: u64,
}

/// Phase `key`: the cache key from the builder's and provisioners' inputs.
fn key(job: &Job, opts: &RunOptions, em: &Emitter, cancel: &Cancel) -> Result<Keyed> {
    em.phase("key");
    let secret = match &opts.cache_secret {
        Some(s) => s.clone(),
        None => {
            if !job.secrets.is_empty() && opts.remote.is_some() {
                em.warn("the shared cache cannot match this build on another machine: it has sensitive values, which enter the cache key as HMACs under this store's own secret; set KILN_CACHE_SECRET (or KILN_CACHE_SECRET_FILE) to the same value on every runner");
            }
            opts.store.secret()?
        }
    };
    let inputs = resolve_markers(cache_key_inputs(job, em, cancel)?, &job.secrets, &secret)?;
    let key = cache_key(&inputs, &job.secrets, &secret);
    em.debug(format!("cache key {key}"));
    Ok(Keyed { key, inputs })
}

/// Phase `lookup`: an image with the same key in the store, or else in the shared cache,
/// verified and published; `None` when the job must build.
fn lookup(
    job: &Job,
    opts: &RunOptions,
    em: &Emitter,
    cancel: &Cancel,
    k: &Keyed,
    p: &Publish,
) -> Result<Option<Artifact>> {
    if opts.force {
        return Ok(None);
    }
    let local = opts
        .store
        .lookup_key(&k.key)?
        .map(|id| (id, "has the same inputs"));
    let hit = match (local, &opts.remote) {
        (Some(h), _) => Some(h),
        (None, Some(remote)) => match remote.fetch(&k.key, &opts.store, em) {
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
    let Some((id, why)) = hit else {
        return Ok(None);
    };
    em.say(format!(
        "up to date: image {} {why} (cache key {}); nothing to build",
        kiln_store::short(&id),
        &k.key[..19.min(k.key.len())]
    ));
    // Verify on read: a reused image is rehashed before it is handed out. (A just-built one
    // is not: commit_image hashed it moments ago.)
    if let Some(problem) = opts
        .store
        .verify(std::slice::from_ref(&id))?
        .into_iter()
        .next()
    {
        return Err(Error::failed(format!(
            "image store: {problem}; rebuild with -force"
        )));
    }
    let (image, disk, meta) = stored_image(&opts.store, &id)?;
    let files = publish_disk(&opts.store, &image, p, false, em, cancel)?;
    Ok(Some(Artifact {
        builder_type: job.builder.kind().to_string(),
        files,
        id,
        disk,
        image: Some(image),
        cached: true,
        meta,
    }))
}

/// Phase `provision`: every provisioner in order (pause_before, retries, timeouts); a failure
/// goes through -on-error and ends the build.
fn provision(
    job: &Job,
    opts: &RunOptions,
    em: &Emitter,
    cancel: &Cancel,
    mut machine: Box<dyn Machine>,
    keyed: Option<&Keyed>,
    vars: &BTreeMap<String, String>,
) -> Result<(Box<dyn Machine>, Vec<StepRecord>)> {
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
        if let Err(e) = run_provisioner(p, machine.as_mut(), job, opts, em, cancel, vars) {
            return Err(on_failure(e, machine, job, opts, em, cancel, vars));
        }
        records.push(serde_json::json!({
            "type": p.step.kind(),
            "name": p.label,
            "inputs": keyed.map_or(serde_json::Value::Null, |k| k.inputs["provisioners"][i]["inputs"].clone()),
            "exitStatus": 0,
            "seconds": (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        }));
    }
    Ok((machine, records))
}

/// Phase `store`: the disk blob, the kiln manifest (config blob) and the OCI manifest, and the
/// index entry, in one commit.
#[allow(clippy::too_many_arguments)]
fn store(
    job: &Job,
    opts: &RunOptions,
    em: &Emitter,
    k: &Keyed,
    p: &Publish,
    disk: &Disk,
    meta: &BuildMeta,
    records: Vec<StepRecord>,
    started: &str,
) -> Result<StoredImage> {
    em.phase("store");
    let mut config = serde_json::json!({
        "schemaVersion": 1,
        "mediaType": kiln_store::CONFIG_TYPE,
        "name": job.name,
        "cacheKey": k.key,
        "disk": {"name": p.file_name, "format": disk.format, "virtualSize": disk.virtual_size},
        "base": {"source": meta.base.as_ref().map(|b| &b.source), "digest": meta.base.as_ref().map(|b| &b.digest)},
        "template": job.template_meta,
        "builder": {
            "type": job.builder.kind(),
            "inputs": k.inputs["builder"],
            "qemuVersion": meta.qemu_version,
            "accelerator": meta.accelerator,
            "sshHostKey": meta.ssh_host_key,
        },
        "provisioners": records,
        "kiln": {"version": env!("CARGO_PKG_VERSION")},
        "startedAt": started,
        "finishedAt": crate::now_rfc3339(),
        "host": {"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()},
    });
    // A last guard: nothing sensitive is ever written into the store.
    let text = kiln_template::redact(&job.secrets, &config.to_string());
    config = serde_json::from_str(&text).map_err(|e| Error::other("manifest", e))?;
    let media = format!("application/vnd.kiln.disk.{}", disk.format);
    let (id, disk_ref) = opts.store.commit_image(&kiln_store::NewImage {
        disk: &disk.path,
        disk_media_type: &media,
        disk_title: &p.file_name,
        config: &config,
        cache_key: Some(&k.key),
        tag: Some(&job.tag),
        created: &crate::now_rfc3339(),
    })?;
    em.say(format!(
        "stored image {} (disk {}, {} bytes)",
        kiln_store::short(&id),
        kiln_store::short(&disk_ref.digest),
        disk_ref.size
    ));
    Ok(StoredImage {
        id,
        disk_digest: disk_ref.digest,
        disk_size: disk_ref.size,
    })
}

/// Uploads a new image to the shared cache (--cache-to); a failure is a warning.
fn share(opts: &RunOptions, em: &Emitter, k: &Keyed, image: &StoredImage) {
    if let Some(remote) = &opts.remote {
        if let Err(e) = remote.publish(&k.key, &image.id, &opts.store, em) {
            em.warn(format!(
                "the image was built but not uploaded to the shared cache: {e}"
            ));
        }
    }
}

/// Phase `publish` of a new image. Cancelled once the commit is done: the image is whole in
/// the store, but nothing is published (publish_disk checks again right before its rename).
fn publish_phase(
    opts: &RunOptions,
    em: &Emitter,
    cancel: &Cancel,
    image: &StoredImage,
    p: &Publish,
) -> Result<Vec<PathBuf>> {
    let stored_but_cancelled = || {
        em.say(format!(
            "cancelled after the store commit: image {} is whole in the store (see `kiln images`); nothing was published to {}",
            kiln_store::short(&image.id),
            p.dir.display()
        ));
        Error::Cancelled
    };
    if cancel.is_cancelled() {
        return Err(stored_but_cancelled());
    }
    em.phase("publish");
    match publish_disk(&opts.store, image, p, opts.force, em, cancel) {
        Err(Error::Cancelled) => Err(stored_but_cancelled()),
        r => r,
    }
}

/// A stored image's disk layer, its disk (format, virtual size) and build facts, read from its
/// manifest and kiln config.
fn stored_image(store: &Store, id: &str) -> Result<(StoredImage, Option<DiskInfo>, BuildMeta)> {
    let m = store.read_json(id)?;
    let layer = &m["layers"][0];
    let digest = layer["digest"]
        .as_str()
        .ok_or_else(|| Error::failed(format!("image {id} has no disk layer")))?
        .to_string();
    let image = StoredImage {
        id: id.to_string(),
        disk_digest: digest,
        disk_size: layer["size"].as_u64().unwrap_or(0),
    };
    let config = m["config"]["digest"]
        .as_str()
        .and_then(|d| store.read_json(d).ok())
        .unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let disk = text(&config["disk"]["format"]).map(|format| DiskInfo {
        format,
        virtual_size: config["disk"]["virtualSize"].as_u64().unwrap_or(0),
    });
    let meta = BuildMeta {
        base: match (
            text(&config["base"]["source"]),
            text(&config["base"]["digest"]),
        ) {
            (Some(source), Some(digest)) => Some(BaseRef { source, digest }),
            _ => None,
        },
        accelerator: text(&config["builder"]["accelerator"]),
        qemu_version: text(&config["builder"]["qemuVersion"]),
        ssh_host_key: text(&config["builder"]["sshHostKey"]),
    };
    Ok((image, disk, meta))
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

/// Puts the image's disk into output_directory (a copy, through a staging dir renamed into
/// place); returns the published files. An existing output_directory that already holds this
/// disk is left alone. The caller has verified the image.
fn publish_disk(
    store: &Store,
    image: &StoredImage,
    p: &Publish,
    force: bool,
    em: &Emitter,
    cancel: &Cancel,
) -> Result<Vec<PathBuf>> {
    let blob = store.blob_path(&image.disk_digest)?;
    let out_dir = &p.dir;
    let target = out_dir.join(&p.file_name);
    if out_dir.exists() {
        let same = target.is_file()
            && kiln_store::hash_file(&target).is_ok_and(|(d, _)| d == image.disk_digest);
        if same {
            em.say(format!("{} already holds this image", out_dir.display()));
            return Ok(vec![target]);
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
    let staged = staging.join(&p.file_name);
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
        id: image.id.clone(),
    });
    Ok(vec![target])
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
                let wait = (opts.retry_wait * (1u32 << attempt.min(5))).min(opts.retry_wait * 30);
                em.warn(format!(
                    "{} failed ({e}); retry {attempt}/{} in {}s",
                    p.label,
                    p.max_retries,
                    wait.as_secs_f64()
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

/// The engine's phases with a fake builder, machine, communicator and provisioner (the store is
/// a real one in a temp dir): cache hits, retries, timeouts, -on-error modes, and cancellation
/// in every phase, each checked for what a user relies on: what is in the store, what is in
/// output_directory, and that the guest is gone.
#[cfg(test)]
mod phases {
    use super::*;
    use crate::{Built, Source};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    /// Where a fake cancels the run.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum At {
        Never,
        Launch,
        Provision,
        Shutdown,
        /// After the store commit (from the shared cache's upload, which runs right after it).
        Stored,
    }

    #[derive(Default)]
    struct Counters {
        launches: AtomicUsize,
        live_machines: AtomicUsize,
        provisions: AtomicUsize,
        cleanups: AtomicUsize,
    }

    struct FakeBuilder {
        c: Arc<Counters>,
        out: PathBuf,
        at: At,
        input: String,
    }

    struct FakeMachine {
        c: Arc<Counters>,
        at: At,
        comm: FakeComm,
        vars: BTreeMap<String, String>,
    }

    impl Drop for FakeMachine {
        fn drop(&mut self) {
            self.c.live_machines.fetch_sub(1, SeqCst);
        }
    }

    /// Runs "sleep:MS" commands, honouring the step timeout as the SSH communicator does.
    struct FakeComm {
        timeout: Option<Duration>,
    }

    impl Communicator for FakeComm {
        fn exec(&mut self, cmd: &str, _: &mut dyn FnMut(&str)) -> Result<i32> {
            let ms: u64 = cmd
                .strip_prefix("sleep:")
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            let work = Duration::from_millis(ms);
            match self.timeout {
                Some(t) if t < work => {
                    std::thread::sleep(t);
                    Err(Error::failed("operation timed out"))
                }
                _ => {
                    std::thread::sleep(work);
                    Ok(0)
                }
            }
        }
        fn upload(&mut self, _: &Source<'_>, _: &str, _: u32) -> Result<()> {
            Ok(())
        }
        fn download(&mut self, _: &str, _: &mut dyn std::io::Write) -> Result<()> {
            Ok(())
        }
        fn set_timeout(&mut self, t: Option<Duration>) {
            self.timeout = t;
        }
        fn reset(&mut self) {}
    }

    impl Builder for FakeBuilder {
        fn kind(&self) -> &str {
            "fake"
        }
        fn preflight(&self, _: bool) -> Result<()> {
            Ok(())
        }
        fn publish(&self) -> Option<Publish> {
            Some(Publish {
                dir: self.out.clone(),
                file_name: "disk.img".into(),
            })
        }
        fn key_inputs(&self, _: &Emitter, _: &Cancel) -> Result<serde_json::Value> {
            Ok(serde_json::json!({ "input": self.input }))
        }
        fn launch(&self, _: &Emitter, cancel: &Cancel) -> Result<Box<dyn Machine>> {
            self.c.launches.fetch_add(1, SeqCst);
            self.c.live_machines.fetch_add(1, SeqCst);
            let m = FakeMachine {
                c: self.c.clone(),
                at: self.at,
                comm: FakeComm { timeout: None },
                vars: BTreeMap::new(),
            };
            if self.at == At::Launch {
                cancel.cancel();
                return Err(Error::Cancelled);
            }
            Ok(Box::new(m))
        }
    }

    impl Machine for FakeMachine {
        fn communicator(&mut self) -> Option<&mut dyn Communicator> {
            Some(&mut self.comm)
        }
        fn vars(&self) -> &BTreeMap<String, String> {
            &self.vars
        }
        fn access(&self) -> String {
            "fake guest".into()
        }
        fn shutdown(self: Box<Self>, _: &Emitter, cancel: &Cancel, dest: &Path) -> Result<Built> {
            let path = dest.join("disk.img");
            std::fs::write(&path, b"a disk").map_err(|e| Error::io("fake disk", e))?;
            if self.at == At::Shutdown {
                cancel.cancel();
            }
            Ok(Built {
                output: Output::Disk {
                    path,
                    format: "raw".into(),
                    virtual_size: 6,
                },
                meta: BuildMeta {
                    accelerator: Some("fake".into()),
                    ..BuildMeta::default()
                },
            })
        }
    }

    /// Fails its first `fail` runs; runs `cmd` on the communicator; cancels when told to.
    struct FakeProv {
        c: Arc<Counters>,
        fail: AtomicUsize,
        cmd: String,
        cancel_run: AtomicBool,
        cleanup: bool,
    }

    impl Provisioner for FakeProv {
        fn kind(&self) -> &str {
            "fake-step"
        }
        fn key_inputs(&self) -> Result<serde_json::Value> {
            Ok(serde_json::json!({ "cmd": self.cmd }))
        }
        fn provision(&self, comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
            if self.cleanup {
                self.c.cleanups.fetch_add(1, SeqCst);
                return Ok(());
            }
            self.c.provisions.fetch_add(1, SeqCst);
            if self.cancel_run.load(SeqCst) {
                cx.cancel.cancel();
                return Err(Error::Cancelled);
            }
            if self.fail.load(SeqCst) > 0 {
                self.fail.fetch_sub(1, SeqCst);
                return Err(Error::failed("step failed"));
            }
            let comm = comm.ok_or_else(|| Error::failed("no communicator"))?;
            match comm.exec(&self.cmd, &mut |_| {})? {
                0 => Ok(()),
                n => Err(Error::failed(format!("exit {n}"))),
            }
        }
    }

    struct CancelAfterCommit(Cancel);

    impl RemoteCache for CancelAfterCommit {
        fn fetch(&self, _: &str, _: &Store, _: &Emitter) -> Result<Option<String>> {
            Ok(None)
        }
        fn publish(&self, _: &str, _: &str, _: &Store, _: &Emitter) -> Result<()> {
            self.0.cancel();
            Ok(())
        }
    }

    struct Env {
        dir: PathBuf,
        store: Arc<Store>,
        c: Arc<Counters>,
    }

    impl Drop for Env {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn env(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("kiln-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Arc::new(Store::open(&dir.join("store")).expect("store"));
        Env {
            dir,
            store,
            c: Arc::new(Counters::default()),
        }
    }

    struct Spec {
        at: At,
        input: &'static str,
        fail: usize,
        retries: u32,
        cmd: &'static str,
        timeout: Option<Duration>,
        cleanup: bool,
        on_error: OnError,
        force: bool,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                at: At::Never,
                input: "a",
                fail: 0,
                retries: 0,
                cmd: "sleep:0",
                timeout: None,
                cleanup: false,
                on_error: OnError::Cleanup,
                force: false,
            }
        }
    }

    fn step<T: ?Sized>(
        label: &str,
        step: Box<T>,
        retries: u32,
        timeout: Option<Duration>,
    ) -> StepSpec<T> {
        StepSpec {
            label: label.into(),
            pause_before: None,
            max_retries: retries,
            timeout,
            keep_input_artifact: None,
            step,
        }
    }

    fn run_one(e: &Env, s: Spec, cancel: &Cancel) -> Outcome {
        let prov = |cleanup: bool| FakeProv {
            c: e.c.clone(),
            fail: AtomicUsize::new(s.fail),
            cmd: s.cmd.into(),
            cancel_run: AtomicBool::new(s.at == At::Provision),
            cleanup,
        };
        let job = Job {
            name: "fake".into(),
            builder: Box::new(FakeBuilder {
                c: e.c.clone(),
                out: e.dir.join("out"),
                at: s.at,
                input: s.input.into(),
            }),
            provisioners: vec![step(
                "fake-step",
                Box::new(prov(false)) as Box<dyn Provisioner>,
                s.retries,
                s.timeout,
            )],
            error_cleanup: s.cleanup.then(|| {
                step(
                    "cleanup",
                    Box::new(prov(true)) as Box<dyn Provisioner>,
                    0,
                    None,
                )
            }),
            post: Vec::new(),
            secrets: Arc::new(Vec::new()),
            template_dir: e.dir.clone(),
            template_meta: serde_json::json!({}),
            tag: "fake".into(),
        };
        let opts = RunOptions {
            parallel: 1,
            on_error: s.on_error,
            force: s.force,
            interactive: false,
            ask: None,
            pause: None,
            remote: (s.at == At::Stored)
                .then(|| Arc::new(CancelAfterCommit(cancel.clone())) as Arc<dyn RemoteCache>),
            cache_required: false,
            cache_secret: None,
            store: e.store.clone(),
            retry_wait: Duration::from_millis(1),
        };
        let sink: Sink = Arc::new(|_| {});
        run(vec![job], &opts, sink, cancel).remove(0)
    }

    fn images(e: &Env) -> usize {
        e.store.images().expect("index").len()
    }

    /// Nothing but the published directory (or nothing at all) beside the store.
    fn leftovers(e: &Env) -> Vec<String> {
        std::fs::read_dir(&e.dir)
            .expect("dir")
            .flatten()
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "store" && n != "out")
            .collect()
    }

    #[test]
    fn a_build_stores_and_publishes_and_the_same_inputs_are_a_cache_hit() {
        let e = env("hit");
        let first = run_one(&e, Spec::default(), &Cancel::new());
        assert!(first.ok && !first.cached, "{:?}", first.error);
        let a = first.artifact.as_ref().expect("artifact");
        assert_eq!(a.files, vec![e.dir.join("out/disk.img")]);
        assert_eq!(
            std::fs::read(&a.files[0]).ok().as_deref(),
            Some(&b"a disk"[..])
        );
        assert_eq!(
            a.disk,
            Some(DiskInfo {
                format: "raw".into(),
                virtual_size: 6
            })
        );
        assert_eq!(a.meta.accelerator.as_deref(), Some("fake"));
        assert_eq!(images(&e), 1);
        let second = run_one(&e, Spec::default(), &Cancel::new());
        assert!(second.ok && second.cached, "{:?}", second.error);
        assert_eq!(e.c.launches.load(SeqCst), 1, "a cache hit boots nothing");
        let b = second.artifact.expect("artifact");
        assert_eq!(b.id, a.id);
        // The stored manifest's facts come back on a hit.
        assert_eq!(b.meta.accelerator.as_deref(), Some("fake"));
        assert_eq!(
            b.disk,
            Some(DiskInfo {
                format: "raw".into(),
                virtual_size: 6
            })
        );
        // Other inputs, another image; -force rebuilds the same inputs.
        let third = run_one(
            &e,
            Spec {
                input: "b",
                force: true,
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(third.ok && !third.cached);
        let fourth = run_one(
            &e,
            Spec {
                input: "b",
                force: true,
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(fourth.ok && !fourth.cached);
        assert_eq!(e.c.launches.load(SeqCst), 3);
        assert_eq!(e.c.live_machines.load(SeqCst), 0);
        assert!(leftovers(&e).is_empty(), "{:?}", leftovers(&e));
    }

    #[test]
    fn an_existing_output_directory_is_refused_without_force() {
        let e = env("outdir");
        std::fs::create_dir_all(e.dir.join("out")).expect("out");
        std::fs::write(e.dir.join("out/other"), b"x").expect("file");
        let o = run_one(&e, Spec::default(), &Cancel::new());
        assert!(!o.ok);
        assert!(o.error.unwrap_or_default().contains("already exists"));
        assert_eq!(e.c.launches.load(SeqCst), 0);
    }

    #[test]
    fn retries_rerun_a_failing_step_and_give_up_after_max_retries() {
        let e = env("retry");
        let o = run_one(
            &e,
            Spec {
                fail: 2,
                retries: 2,
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(o.ok, "{:?}", o.error);
        assert_eq!(e.c.provisions.load(SeqCst), 3);
        let e = env("retry-fail");
        let o = run_one(
            &e,
            Spec {
                fail: 3,
                retries: 2,
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(!o.ok && !o.cancelled);
        assert_eq!(o.error.as_deref(), Some("step failed"));
        assert_eq!(e.c.provisions.load(SeqCst), 3);
        assert_eq!(images(&e), 0, "a failed build stores nothing");
        assert!(
            !e.dir.join("out").exists(),
            "a failed build publishes nothing"
        );
        assert_eq!(e.c.live_machines.load(SeqCst), 0, "the guest is stopped");
    }

    #[test]
    fn a_step_past_its_timeout_fails_naming_the_timeout() {
        let e = env("timeout");
        let o = run_one(
            &e,
            Spec {
                cmd: "sleep:2000",
                timeout: Some(Duration::from_millis(50)),
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(!o.ok);
        let err = o.error.unwrap_or_default();
        assert!(err.contains("fake-step timed out after 50ms"), "{err}");
        assert_eq!(images(&e), 0);
        assert_eq!(e.c.live_machines.load(SeqCst), 0);
    }

    #[test]
    fn on_error_cleanup_runs_the_error_cleanup_provisioner_then_stops_the_guest() {
        let e = env("cleanup");
        let o = run_one(
            &e,
            Spec {
                fail: 1,
                cleanup: true,
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(!o.ok);
        assert_eq!(e.c.cleanups.load(SeqCst), 1);
        assert_eq!(e.c.live_machines.load(SeqCst), 0);
        // run-cleanup-provisioner runs it too; plain cleanup without one just stops the guest.
        let e = env("cleanup-mode");
        let o = run_one(
            &e,
            Spec {
                fail: 1,
                cleanup: true,
                on_error: OnError::RunCleanupProvisioner,
                ..Spec::default()
            },
            &Cancel::new(),
        );
        assert!(!o.ok);
        assert_eq!(e.c.cleanups.load(SeqCst), 1);
        assert_eq!(images(&e), 0);
    }

    #[test]
    fn on_error_abort_keeps_the_guest_until_cancelled() {
        let e = env("abort");
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let counters = e.c.clone();
        let watcher = std::thread::spawn(move || {
            // Wait until the step has failed and the guest is being kept.
            let t = Instant::now();
            while counters.provisions.load(SeqCst) == 0 && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(100));
            let alive = counters.live_machines.load(SeqCst);
            c2.cancel();
            alive
        });
        let o = run_one(
            &e,
            Spec {
                fail: 1,
                on_error: OnError::Abort,
                ..Spec::default()
            },
            &cancel,
        );
        assert_eq!(
            watcher.join().ok(),
            Some(1),
            "the guest ran while kiln waited"
        );
        assert!(!o.ok && o.cancelled);
        assert_eq!(
            e.c.live_machines.load(SeqCst),
            0,
            "and was stopped on Ctrl-C"
        );
        assert_eq!(images(&e), 0);
    }

    #[test]
    fn cancelling_in_any_phase_publishes_nothing_and_stops_the_guest() {
        for at in [At::Launch, At::Provision, At::Shutdown, At::Stored] {
            let e = env(&format!("cancel-{at:?}"));
            let cancel = Cancel::new();
            let o = run_one(
                &e,
                Spec {
                    at,
                    ..Spec::default()
                },
                &cancel,
            );
            assert!(!o.ok && o.cancelled, "{at:?}: {:?}", o.error);
            assert!(!e.dir.join("out").exists(), "{at:?}: nothing published");
            assert_eq!(
                e.c.live_machines.load(SeqCst),
                0,
                "{at:?}: the guest is gone"
            );
            // A commit that finished stays whole in the store; before it, nothing is stored.
            let want = usize::from(at == At::Stored);
            assert_eq!(images(&e), want, "{at:?}");
            assert!(leftovers(&e).is_empty(), "{at:?}: {:?}", leftovers(&e));
            // The store's temp dirs are gone too.
            let tmp = std::fs::read_dir(e.dir.join("store/tmp"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(tmp, 0, "{at:?}: store temp dirs left");
        }
    }
}
