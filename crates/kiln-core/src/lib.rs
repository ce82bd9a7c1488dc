//! The build engine: the seams between builders, communicators, provisioners and
//! post-processors, and the engine that runs a Plan's builds through them. Not for: printing
//! (the engine emits events) or template syntax (kiln-template's Plan is its input).

pub mod cancel;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod placeholders;
pub mod plugins;
pub mod process;
pub mod workdir;

/// Digest of a file, remembered across runs for large files: base images and kernels are hashed
/// for every cache key, and rehashing gigabytes would make a cache hit slow. The memo is keyed by
/// device, inode, size, mtime and ctime (nanoseconds); any write changes ctime, which no user can
/// set back.
fn file_digest(p: &Path, meta: &std::fs::Metadata) -> Result<String> {
    use sha2::Digest as _;
    use std::os::unix::fs::MetadataExt;
    let hash = |p: &Path| {
        kiln_store::hash_file(p)
            .map(|(d, _)| d)
            .map_err(Error::from)
    };
    if meta.len() < (1 << 20) {
        return hash(p);
    }
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kiln/hashes");
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let id = format!(
        "{}:{}:{}:{}.{}:{}.{}:{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        canon.display()
    );
    let name: String = sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let entry = dir.join(&name);
    if let Ok(d) = std::fs::read_to_string(&entry) {
        if d.starts_with("sha256:") && d.len() == 71 {
            return Ok(d);
        }
    }
    let d = hash(p)?;
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!("{name}.{}", std::process::id()));
        if std::fs::write(&tmp, &d).is_ok() {
            let _ = std::fs::rename(&tmp, &entry);
        }
    }
    Ok(d)
}

/// Hex digest of a file with any RustCrypto hash (sha256, sha512, md5, sha1, ...), streamed.
pub fn hash_file_hex<D: sha2::Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    kiln_template::timefmt::rfc3339(kiln_template::timefmt::now_unix())
}

/// Content digest of a file (`sha256:…`) or of a directory tree (paths, modes and contents).
/// The marker key of `text_digest`.
pub const TEXT_DIGEST: &str = "$kiln-text-digest";

/// A content digest of text (an inline script, inline content) for `key_inputs`. The engine
/// turns it into the text's sha256 — or, when the text holds a sensitive value, an HMAC under the
/// cache secret, so the stored config never carries a digest a secret can be guessed from.
pub fn text_digest(text: &str) -> serde_json::Value {
    serde_json::json!({ TEXT_DIGEST: text })
}

pub fn digest_path(p: &Path) -> Result<String> {
    digest_path_except(p, &[])
}

/// [`digest_path`] of a directory without the subtrees `skip` names (absolute paths, or relative
/// to the working directory as `p` is).
pub fn digest_path_except(p: &Path, skip: &[PathBuf]) -> Result<String> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
    if meta.is_file() {
        return file_digest(p, &meta);
    }
    let skip: Vec<PathBuf> = skip
        .iter()
        .filter_map(|s| std::fs::canonicalize(s).ok())
        .collect();
    let mut entries = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
            .flatten()
        {
            let path = e.path();
            if !skip.is_empty() && std::fs::canonicalize(&path).is_ok_and(|c| skip.contains(&c)) {
                continue;
            }
            let m = std::fs::metadata(&path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            let rel = path
                .strip_prefix(p)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if m.is_dir() {
                entries.push(format!("d {rel} {:o}", m.permissions().mode() & 0o7777));
                stack.push(path);
            } else {
                let (d, _) = kiln_store::hash_file(&path)?;
                entries.push(format!("f {rel} {:o} {d}", m.permissions().mode() & 0o7777));
            }
        }
    }
    entries.sort();
    let h = sha2::Sha256::digest(entries.join("\n").as_bytes());
    Ok(format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

pub use cancel::Cancel;
pub use error::{Error, IoContext, Result};
pub use events::{Emitter, Event, EventKind, Level, Sink};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// What to upload; it can be opened more than once, so a transfer can fall back to another method.
pub enum Source<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    /// Opens the content and returns it with its size.
    pub fn open(&self) -> Result<(Box<dyn Read + '_>, u64)> {
        match self {
            Source::File(p) => {
                let f = std::fs::File::open(p)
                    .map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
                let len = f
                    .metadata()
                    .map_err(|e| Error::io(format!("cannot stat {}", p.display()), e))?
                    .len();
                Ok((Box::new(f), len))
            }
            Source::Bytes(b) => Ok((Box::new(*b), b.len() as u64)),
        }
    }
}
use std::path::PathBuf;
use std::time::Duration;

/// A connection to a running guest.
pub trait Communicator: Send {
    /// Runs `cmd` in the guest, calling `out` with each line it prints (stdout and stderr merged);
    /// returns its exit status. `Error::Disconnected` when the connection drops.
    fn exec(&mut self, cmd: &str, out: &mut dyn FnMut(&str)) -> Result<i32>;
    /// Writes `src` to `remote` with file mode `mode`.
    fn upload(&mut self, src: &Source<'_>, remote: &str, mode: u32) -> Result<()>;
    /// Copies `remote` into `dst`.
    fn download(&mut self, remote: &str, dst: &mut dyn Write) -> Result<()>;
    /// Limits how long one operation may block (None = no limit).
    fn set_timeout(&mut self, t: Option<Duration>);
    /// Drops the connection so the next call connects again (after an expected disconnect).
    fn reset(&mut self);
    /// Where a tool on the host (ansible) reaches the guest itself, with this connection's
    /// credentials; `None` when the connection cannot be shared that way.
    fn endpoint(&self) -> Option<Endpoint> {
        None
    }
}

/// An SSH endpoint a host-side tool can connect to: the address kiln connected to (the host
/// port forward for qemu guests) and how it authenticated. No secret is in it: a password is only
/// said to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The private key file kiln authenticates with (the user's, or the build's temporary key).
    pub private_key_file: Option<PathBuf>,
    /// Keys come from the SSH agent.
    pub agent_auth: bool,
    /// The connection uses a password.
    pub password: bool,
}

/// What a step may know about the build it runs in.
pub struct StepCx<'a> {
    pub em: &'a Emitter,
    pub cancel: &'a Cancel,
    pub build_name: &'a str,
    pub builder_type: &'a str,
    /// Run-time placeholder values: HTTPIP, HTTPPort, SSHHost, SSHPort, Name, ...
    pub vars: &'a BTreeMap<String, String>,
    /// Directory of the template (relative paths in options resolve against the working directory,
    /// as in Packer).
    pub template_dir: &'a std::path::Path,
    /// Whether stdin is a terminal (for breakpoint).
    pub interactive: bool,
}

/// A running guest, produced by a builder.
pub trait Machine: Send {
    /// None when the communicator is `none`.
    fn communicator(&mut self) -> Option<&mut dyn Communicator>;
    fn vars(&self) -> &BTreeMap<String, String>;
    /// How a person reaches the guest (for -on-error=abort and -debug).
    fn access(&self) -> String;
    /// Shuts the guest down cleanly and exports its disk (if it has one) into `dest`, a temp
    /// dir inside the store.
    fn shutdown(self: Box<Self>, em: &Emitter, cancel: &Cancel, dest: &Path) -> Result<Built>;
}

/// A base image kiln resolved for a builder before it runs (an `oci://` reference pulled into
/// the store): the builder boots `path` and verifies it against `digest`. Builders get it through
/// their table row's `base_option` (the option that may name an `oci://` base).
#[derive(Debug, Clone)]
pub struct ResolvedBase {
    pub path: PathBuf,
    /// `sha256:…` of the disk.
    pub digest: String,
    /// What the template named, and the image it resolved to (for the manifest).
    pub source: String,
}

/// What a builder leaves when its guest is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A local disk image (in the store's temp dir until the engine stores it).
    Disk {
        path: PathBuf,
        format: String,
        /// The disk's size as the guest sees it, in bytes.
        virtual_size: u64,
    },
    /// No disk (a builder that provisions an existing machine, such as `null`).
    Nothing,
    /// Something that lives elsewhere, named by its id (a cloud image).
    Remote { id: String },
    /// Files the builder wrote where the user asked (the `file` builder's target); not stored.
    Files { id: String, files: Vec<PathBuf> },
}

/// The base a build started from, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BaseRef {
    /// What the template named (a path, a URL, an `oci://` reference and its image).
    pub source: String,
    /// `sha256:…` of the base's content.
    pub digest: String,
}

/// How the builder built: facts for the image manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMeta {
    pub base: Option<BaseRef>,
    pub accelerator: Option<String>,
    pub qemu_version: Option<String>,
    /// The guest's SSH host key fingerprint, pinned for the build.
    pub ssh_host_key: Option<String>,
}

/// What `Machine::shutdown` returns: the output and how it was made.
#[derive(Debug, Clone)]
pub struct Built {
    pub output: Output,
    pub meta: BuildMeta,
}

/// A stored image, as the engine knows it after the store commit or a cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The image manifest's digest.
    pub id: String,
    /// The disk layer's digest (`sha256:…`) and size.
    pub disk_digest: String,
    pub disk_size: u64,
}

/// A disk's format (`qcow2`, `raw`) and its size as the guest sees it, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub format: String,
    pub virtual_size: u64,
}

/// What a build produced, as post-processors and the CLI see it.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub builder_type: String,
    /// Files in their final place after `publish` (a post-processor may replace them).
    pub files: Vec<PathBuf>,
    /// The image id in the store, or a remote id; empty when there is nothing.
    pub id: String,
    /// The disk's format and virtual size, when the build made a disk.
    pub disk: Option<DiskInfo>,
    pub image: Option<StoredImage>,
    /// Set on a cache hit, where `meta` is what the stored manifest recorded.
    pub cached: bool,
    pub meta: BuildMeta,
}

impl Artifact {
    /// Facts as flat strings, for Packer's manifest `custom_data` (`kiln_` + name).
    pub fn facts(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(d) = &self.disk {
            m.insert("format".into(), d.format.clone());
            m.insert("virtual_size".into(), d.virtual_size.to_string());
        }
        if let Some(i) = &self.image {
            m.insert("image_id".into(), i.id.clone());
            m.insert(
                "disk_sha256".into(),
                i.disk_digest.trim_start_matches("sha256:").to_string(),
            );
            m.insert("disk_size".into(), i.disk_size.to_string());
        }
        if let Some(b) = &self.meta.base {
            m.insert("base_source".into(), b.source.clone());
            m.insert("base_digest".into(), b.digest.clone());
        }
        for (k, v) in [
            ("accelerator", &self.meta.accelerator),
            ("qemu_version", &self.meta.qemu_version),
            ("ssh_host_key", &self.meta.ssh_host_key),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone());
            }
        }
        m.insert("cached".into(), self.cached.to_string());
        m
    }
}

/// Where a builder's disk is published: `dir` (output_directory) and the file name in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dir: PathBuf,
    pub file_name: String,
}

pub trait Builder: Send + Sync {
    fn kind(&self) -> &str;
    /// Checks that can fail before anything boots (output directory free, base image present).
    fn preflight(&self, force: bool) -> Result<()>;
    /// Where the disk is published (output_directory and vm_name); `None` for a builder that
    /// makes no disk, whose builds are neither stored nor cached.
    fn publish(&self) -> Option<Publish>;
    /// Everything that changes the disk: options and the content digests of the files they name
    /// (base image, kernel, ...), never paths alone. Feeds the cache key. May download the
    /// base image (a remote iso_url without a sha256 checksum).
    fn key_inputs(&self, em: &Emitter, cancel: &Cancel) -> Result<serde_json::Value>;
    fn launch(&self, em: &Emitter, cancel: &Cancel) -> Result<Box<dyn Machine>>;
}

pub trait Provisioner: Send + Sync {
    fn kind(&self) -> &str;
    /// Options and content digests of every local file it uploads or runs. Feeds the cache key.
    fn key_inputs(&self) -> Result<serde_json::Value>;
    /// Checks what the step needs on the host (a tool it runs) before any guest boots.
    fn preflight(&self) -> Result<()> {
        Ok(())
    }
    fn provision(&self, comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()>;
}

pub trait PostProcessor: Send + Sync {
    fn kind(&self) -> &str;
    /// Whether the input artifact is kept when the template does not set keep_input_artifact
    /// (Packer: compress and vagrant replace it; manifest and checksum keep it).
    fn keeps_input_by_default(&self) -> bool {
        true
    }
    fn process(&self, artifact: &Artifact, cx: &StepCx<'_>) -> Result<Artifact>;
}
