//! The content-addressed image store: an OCI image layout 1.1 (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), so skopeo, oras and registries read it. Blobs are written once — temp
//! file inside the store, hashed while written, fsync, rename to the digest name, mode 0444, fsync
//! of the directory — and never modified. `index.json` changes only under a file lock, by atomic
//! replace, so several kiln processes can write one store at once.
//! Not for: building images (the engine) or deciding what a cache key is (kiln-core).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.image.v1";
pub const CONFIG_TYPE: &str = "application/vnd.kiln.image.config.v1+json";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const CACHE_KEY: &str = "dev.kiln.cache-key";
pub const CREATED: &str = "org.opencontainers.image.created";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: String, actual: String },
    #[error("blob {0} is missing from the store")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {what}; kiln does not change a store whose index it cannot read: restore index.json from a backup, or move the store aside and build again", path = path.display())]
    BadIndex { path: PathBuf, what: String },
    #[error("{what} names the digest {digest:?}, which is not `sha256:` followed by 64 lowercase hex digits")]
    BadDigest { what: String, digest: String },
    #[error("invalid tag {0:?}: a tag is 1 to 128 characters from A-Z a-z 0-9 _ . - and does not start with . or - (the OCI tag grammar)")]
    BadTag(String),
    #[error("no kiln store at {}: it has no index.json (build an image first, or pass --store DIR of an existing store)", .0.display())]
    NoStore(PathBuf),
    #[error(
        "no image matches {0:?}: use a tag, a full image id or a unique prefix (see `kiln images`)"
    )]
    NotFound(String),
    #[error("{0:?} matches more than one image: {1}")]
    Ambiguous(String, String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks that `digest` is `sha256:` and 64 lowercase hex digits (the only form kiln writes), so
/// it can become a file name. `what` says where it was read, for the error.
pub fn parse_digest<'a>(digest: &'a str, what: &str) -> Result<&'a str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(StoreError::BadDigest {
            what: what.to_string(),
            digest: digest.chars().take(100).collect(),
        }),
    }
}

/// OCI's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadTag(tag.chars().take(100).collect()))
    }
}

/// What the index may hold as `org.opencontainers.image.ref.name`: a tag, or a reference a pull
/// recorded (`host:port/repo:tag`); OCI's annotation character set `A-Za-z0-9-._:@/+`, and never a
/// path step `..`.
pub fn check_ref_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._:@/+".contains(&c))
        && !name
            .split('/')
            .any(|p| p == ".." || p == "." || p.is_empty());
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadTag(name.chars().take(100).collect()))
    }
}

/// A blob reference: `sha256:<hex>` and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// One image as listed in index.json.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// Digest of the OCI manifest: the image id.
    pub id: String,
    pub size: u64,
    pub tags: Vec<String>,
    pub cache_keys: Vec<String>,
}

pub struct Store {
    root: PathBuf,
}

/// An exclusive lock on the store's index, released on drop.
pub struct IndexLock {
    _file: File,
}

impl Store {
    /// Opens the store at `root`, creating the layout if it is not there yet.
    pub fn open(root: &Path) -> Result<Store> {
        for d in [
            root.to_path_buf(),
            root.join("blobs/sha256"),
            root.join("tmp"),
        ] {
            std::fs::create_dir_all(&d).map_err(io("cannot create store directory", &d))?;
        }
        let s = Store {
            root: root.to_path_buf(),
        };
        let layout = root.join("oci-layout");
        if !layout.exists() {
            s.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let _lock = s.lock()?;
            if !index.exists() {
                let v = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []});
                s.write_atomic(&index, v.to_string().as_bytes())?;
            }
        }
        s.sweep_tmp();
        Ok(s)
    }

    /// Opens an existing store without creating or removing anything: for commands that only
    /// read (images, inspect, verify, export, push).
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join("index.json").is_file() {
            return Err(StoreError::NoStore(root.to_path_buf()));
        }
        let s = Store {
            root: root.to_path_buf(),
        };
        s.read_index()?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of blob `digest`; an error unless the digest is well-formed.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = parse_digest(digest, "a blob reference")?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// A directory inside the store for files being written (same filesystem as the blobs, so
    /// they can be renamed in). Holds `kiln.pid`; a later kiln removes it if this one died.
    pub fn temp_dir(&self) -> Result<TempDir> {
        let pid = std::process::id();
        for n in 0..100_000u32 {
            let p = self.root.join("tmp").join(format!("{pid}-{n}"));
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    std::fs::write(p.join("kiln.pid"), pid.to_string())
                        .map_err(io("cannot write", &p))?;
                    return Ok(TempDir(p));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        what: "cannot create",
                        path: p,
                        source: e,
                    })
                }
            }
        }
        Err(StoreError::Invalid(
            "no free temp directory name in the store".into(),
        ))
    }

    /// Removes temp dirs of kiln processes that are gone.
    fn sweep_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            // The pid is in the name too: a dir whose kiln.pid is not written yet is not stale.
            let pid = std::fs::read_to_string(e.path().join("kiln.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .or_else(|| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.split('-').next().and_then(|p| p.parse::<i32>().ok())
                });
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Moves `file` (inside one of this store's temp dirs) into the blob store under its digest,
    /// hashing it first. The file must not change afterwards; it becomes read-only.
    pub fn put_file(&self, file: &Path) -> Result<BlobRef> {
        let (digest, size) = hash_file(file)?;
        self.put_hashed(file, digest, size)
    }

    fn put_hashed(&self, file: &Path, digest: String, size: u64) -> Result<BlobRef> {
        let target = self.blob_path(&digest)?;
        if target.is_file() {
            let _ = std::fs::remove_file(file);
            return Ok(BlobRef { digest, size });
        }
        let f = File::open(file).map_err(io("cannot open", file))?;
        f.sync_all().map_err(io("cannot fsync", file))?;
        // Test hook: hold a written, hashed, not yet renamed blob so a test can kill kiln here.
        if std::env::var_os("KILN_FAILPOINT").is_some_and(|v| v == "store-before-rename")
            && size > 4096
        {
            let secs = std::env::var("KILN_FAILPOINT_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60);
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444))
            .map_err(io("cannot chmod", file))?;
        std::fs::rename(file, &target).map_err(io("cannot move into the store", &target))?;
        self.sync_dir(&self.root.join("blobs/sha256"))?;
        Ok(BlobRef { digest, size })
    }

    /// Writes bytes as a blob.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobRef> {
        let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
        if self.has_blob(&digest) {
            return Ok(BlobRef {
                digest,
                size: bytes.len() as u64,
            });
        }
        let tmp = self.temp_dir()?;
        let p = tmp.path().join("blob");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .map_err(io("cannot create", &p))?;
        f.write_all(bytes).map_err(io("cannot write", &p))?;
        drop(f);
        self.put_file(&p)
    }

    /// Reads a blob, verifying its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        let bytes = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Missing(digest.to_string())
            } else {
                StoreError::Io {
                    what: "cannot read",
                    path: p.clone(),
                    source: e,
                }
            }
        })?;
        let actual = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        if actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Rehashes a blob; Ok when its content matches its name.
    pub fn verify_blob(&self, digest: &str) -> Result<()> {
        let p = self.blob_path(digest)?;
        if !p.is_file() {
            return Err(StoreError::Missing(digest.to_string()));
        }
        let (actual, _) = hash_file(&p)?;
        if actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    pub fn read_json(&self, digest: &str) -> Result<Value> {
        let b = self.read_blob(digest)?;
        serde_json::from_slice(&b)
            .map_err(|e| StoreError::Invalid(format!("blob {digest} is not JSON: {e}")))
    }

    /// Exclusive lock on index.json (flock), released on drop.
    pub fn lock(&self) -> Result<IndexLock> {
        let p = self.root.join("index.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io("cannot open", &p))?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if rc != 0 {
            return Err(StoreError::Io {
                what: "cannot lock",
                path: p,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(IndexLock { _file: f })
    }

    /// index.json, checked: an object whose `manifests` is a list of descriptors, each with a
    /// well-formed digest, a size and string annotations. Anything else is an error naming the
    /// file, so no command acts on a partial understanding of the store.
    pub fn read_index(&self) -> Result<Value> {
        let p = self.root.join("index.json");
        let t = std::fs::read(&p).map_err(io("cannot read", &p))?;
        let bad = |what: String| StoreError::BadIndex {
            path: p.clone(),
            what,
        };
        let v: Value =
            serde_json::from_slice(&t).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let Some(list) = v.get("manifests").and_then(Value::as_array) else {
            return Err(bad("`manifests` is missing or not a list".into()));
        };
        for (i, m) in list.iter().enumerate() {
            let Some(d) = m.get("digest").and_then(Value::as_str) else {
                return Err(bad(format!("manifests[{i}] has no digest string")));
            };
            parse_digest(d, &format!("manifests[{i}]")).map_err(|e| bad(e.to_string()))?;
            if !m.get("size").is_some_and(Value::is_u64) {
                return Err(bad(format!("manifests[{i}] has no size")));
            }
            match m.get("annotations") {
                None => {}
                Some(Value::Object(a)) if a.values().all(Value::is_string) => {
                    if let Some(t) = a.get(REF_NAME).and_then(Value::as_str) {
                        check_ref_name(t).map_err(|e| bad(format!("manifests[{i}]: {e}")))?;
                    }
                }
                Some(_) => {
                    return Err(bad(format!(
                        "manifests[{i}].annotations is not a map of strings"
                    )))
                }
            }
        }
        Ok(v)
    }

    fn write_index(&self, v: &Value, _lock: &IndexLock) -> Result<()> {
        let text = serde_json::to_vec_pretty(v).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write_atomic(&self.root.join("index.json"), &text)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot fsync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("cannot replace", path))?;
        self.sync_dir(path.parent().unwrap_or(&self.root))
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot fsync directory", dir))
    }

    /// Adds an image manifest to the index with its cache key, and moves `tag` to it.
    pub fn add_image(
        &self,
        manifest: &BlobRef,
        cache_key: Option<&str>,
        tag: Option<&str>,
    ) -> Result<()> {
        let lock = self.lock()?;
        self.add_image_locked(manifest, cache_key, tag, &lock)
    }

    fn add_image_locked(
        &self,
        manifest: &BlobRef,
        cache_key: Option<&str>,
        tag: Option<&str>,
        lock: &IndexLock,
    ) -> Result<()> {
        parse_digest(&manifest.digest, "the new image")?;
        if let Some(t) = tag {
            check_ref_name(t)?;
        }
        let mut idx = self.read_index()?;
        let list = manifests_mut(&mut idx);
        if let Some(t) = tag {
            untag(list, t);
        }
        let mut ann = serde_json::Map::new();
        if let Some(k) = cache_key {
            ann.insert(CACHE_KEY.into(), Value::from(k));
        }
        if let Some(t) = tag {
            ann.insert(REF_NAME.into(), Value::from(t));
        }
        list.push(json!({"mediaType": MANIFEST_TYPE, "digest": manifest.digest, "size": manifest.size, "annotations": ann}));
        dedupe(list);
        self.write_index(&idx, lock)
    }

    /// Points `tag` at image `id`. The image the tag leaves stays in the store, untagged.
    pub fn tag(&self, id: &str, tag: &str) -> Result<()> {
        check_tag(tag)?;
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        let list = manifests_mut(&mut idx);
        let size = list
            .iter()
            .find(|m| m["digest"] == id)
            .and_then(|m| m["size"].as_u64())
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        untag(list, tag);
        list.push(json!({"mediaType": MANIFEST_TYPE, "digest": id, "size": size, "annotations": {REF_NAME: tag}}));
        dedupe(list);
        self.write_index(&idx, &lock)
    }

    /// Removes every untagged image from the index (`kiln gc --untagged`); returns how many.
    pub fn remove_untagged(&self) -> Result<usize> {
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        let list = manifests_mut(&mut idx);
        let tagged: std::collections::BTreeSet<String> = list
            .iter()
            .filter(|m| m["annotations"][REF_NAME].is_string())
            .filter_map(|m| m["digest"].as_str().map(str::to_string))
            .collect();
        let mut gone = std::collections::BTreeSet::new();
        list.retain(|m| {
            let d = m["digest"].as_str().unwrap_or_default();
            let keep = tagged.contains(d);
            if !keep {
                gone.insert(d.to_string());
            }
            keep
        });
        self.write_index(&idx, &lock)?;
        Ok(gone.len())
    }

    /// Removes every index entry of image `id` (its blobs go at the next gc).
    pub fn remove(&self, id: &str) -> Result<usize> {
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        let list = manifests_mut(&mut idx);
        let before = list.len();
        list.retain(|m| m["digest"] != id);
        let n = before - list.len();
        self.write_index(&idx, &lock)?;
        Ok(n)
    }

    /// Images in the index, grouped by id, oldest first.
    pub fn images(&self) -> Result<Vec<ImageEntry>> {
        let idx = self.read_index()?;
        let mut out: Vec<ImageEntry> = Vec::new();
        for m in idx["manifests"].as_array().into_iter().flatten() {
            // read_index checked every entry's digest.
            let Some(id) = m["digest"].as_str() else {
                continue;
            };
            let pos = match out.iter().position(|e| e.id == id) {
                Some(p) => p,
                None => {
                    out.push(ImageEntry {
                        id: id.to_string(),
                        size: m["size"].as_u64().unwrap_or(0),
                        tags: Vec::new(),
                        cache_keys: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            if let Some(t) = m["annotations"][REF_NAME].as_str() {
                out[pos].tags.push(t.to_string());
            }
            if let Some(k) = m["annotations"][CACHE_KEY].as_str() {
                if !out[pos].cache_keys.iter().any(|x| x == k) {
                    out[pos].cache_keys.push(k.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The newest image recorded for a cache key whose blobs are all present.
    pub fn lookup_key(&self, key: &str) -> Result<Option<String>> {
        let images = self.images()?;
        for img in images.iter().rev() {
            if img.cache_keys.iter().any(|k| k == key)
                && self
                    .blobs_of(&img.id)
                    .is_ok_and(|b| b.iter().all(|d| self.has_blob(d)))
            {
                return Ok(Some(img.id.clone()));
            }
        }
        Ok(None)
    }

    /// Resolves a tag, a full id, or a unique id prefix (with or without `sha256:`).
    pub fn resolve(&self, name: &str) -> Result<String> {
        let images = self.images()?;
        if let Some(i) = images
            .iter()
            .rev()
            .find(|i| i.tags.iter().any(|t| t == name))
        {
            return Ok(i.id.clone());
        }
        let want = name.trim_start_matches("sha256:");
        if want.len() >= 4 && want.chars().all(|c| c.is_ascii_hexdigit()) {
            let hits: Vec<&ImageEntry> = images
                .iter()
                .filter(|i| i.id.trim_start_matches("sha256:").starts_with(want))
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].id.clone()),
                0 => {}
                _ => {
                    return Err(StoreError::Ambiguous(
                        name.into(),
                        hits.iter()
                            .map(|h| short(&h.id))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ))
                }
            }
        }
        Err(StoreError::NotFound(name.to_string()))
    }

    /// The manifest, config and layer digests of an image (and of the manifests an image index
    /// lists). Every digest is checked; a manifest kiln cannot read is an error.
    pub fn blobs_of(&self, id: &str) -> Result<Vec<String>> {
        let mut out = vec![id.to_string()];
        let mut todo = vec![id.to_string()];
        while let Some(d) = todo.pop() {
            let m = self.read_json(&d)?;
            let what = format!("manifest {}", short(&d));
            let bad = |e: String| StoreError::Invalid(format!("{what}: {e}"));
            if !m.is_object() {
                return Err(bad("not a JSON object".into()));
            }
            let mut refs: Vec<(&Value, bool)> = Vec::new();
            if let Some(c) = m.get("config") {
                refs.push((c, false));
            }
            for (key, nested) in [("layers", false), ("manifests", true)] {
                match m.get(key) {
                    None => {}
                    Some(Value::Array(a)) => refs.extend(a.iter().map(|l| (l, nested))),
                    Some(_) => return Err(bad(format!("`{key}` is not a list"))),
                }
            }
            if let Some(s) = m.get("subject") {
                refs.push((s, false));
            }
            for (r, nested) in refs {
                let Some(digest) = r.get("digest").and_then(Value::as_str) else {
                    return Err(bad("a descriptor has no digest".into()));
                };
                parse_digest(digest, &what)?;
                if !out.iter().any(|x| x == digest) {
                    out.push(digest.to_string());
                    if nested {
                        todo.push(digest.to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records `digests` as in use by this process until the returned pin is dropped, so a
    /// concurrent `gc` keeps them although no index entry names them yet (a pull in flight, a
    /// cache hit being published). Taken under the index lock, so a gc either finished before
    /// (the caller then finds what is missing) or sees the pin.
    pub fn pin(&self, digests: &[String]) -> Result<TempDir> {
        for d in digests {
            parse_digest(d, "a pinned blob")?;
        }
        let _lock = self.lock()?;
        let t = self.temp_dir()?;
        let p = t.path().join("pins");
        std::fs::write(&p, digests.join("\n")).map_err(io("cannot write", &p))?;
        Ok(t)
    }

    /// Digests pinned by live kiln processes (their temp dirs still have a live `kiln.pid`).
    fn pinned(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return out;
        };
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path().join("pins")) {
                out.extend(
                    t.lines()
                        .filter_map(|l| parse_digest(l, "a pin").ok())
                        .map(str::to_string),
                );
            }
        }
        out
    }

    /// Rehashes every blob the index references (or only those of `ids`); returns the problems.
    pub fn verify(&self, ids: &[String]) -> Result<Vec<StoreError>> {
        let ids: Vec<String> = if ids.is_empty() {
            self.images()?.into_iter().map(|i| i.id).collect()
        } else {
            ids.to_vec()
        };
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if let Err(e) = self.verify_blob(&id) {
                problems.push(e);
                continue;
            }
            match self.blobs_of(&id) {
                Ok(blobs) => {
                    for b in blobs.into_iter().skip(1) {
                        if seen.insert(b.clone()) {
                            if let Err(e) = self.verify_blob(&b) {
                                problems.push(e);
                            }
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        Ok(problems)
    }

    /// Removes blobs no image in the index references; never touches temp dirs of running
    /// builds (their files are not blobs yet). Returns (blobs removed, bytes freed).
    pub fn gc(&self) -> Result<(usize, u64)> {
        let _lock = self.lock()?;
        self.sweep_tmp();
        let mut keep = self.pinned();
        for img in self.images()? {
            let blobs = self.blobs_of(&img.id).map_err(|e| {
                StoreError::Invalid(format!(
                    "gc removed nothing: image {} cannot be read ({e}); remove it with `kiln rm {}` or restore its blobs, then run gc again",
                    short(&img.id),
                    short(&img.id)
                ))
            })?;
            for b in blobs {
                keep.insert(parse_digest(&b, "an image")?.to_string());
            }
        }
        let dir = self.root.join("blobs/sha256");
        let (mut n, mut bytes) = (0, 0);
        for e in std::fs::read_dir(&dir)
            .map_err(io("cannot read", &dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(e.path()).map_err(io("cannot remove", &e.path()))?;
                n += 1;
            }
        }
        Ok((n, bytes))
    }

    /// Writes an image: the disk file (in one of this store's temp dirs), the kiln manifest as the
    /// config blob, and the OCI manifest; records it under `cache_key` and `tag`. Returns the id.
    pub fn commit_image(&self, img: &NewImage<'_>) -> Result<(String, BlobRef)> {
        let NewImage {
            disk,
            disk_media_type,
            disk_title,
            config,
            cache_key,
            tag,
            created,
        } = *img;
        // Hash the (large) disk before taking the lock; then hold the lock from the first blob to
        // the index entry, so `gc` never sees these blobs unreferenced.
        let (digest, size) = hash_file(disk)?;
        let lock = self.lock()?;
        let disk_ref = self.put_hashed(disk, digest, size)?;
        let mut config = config.clone();
        config["disk"]["digest"] = Value::from(disk_ref.digest.clone());
        config["disk"]["size"] = Value::from(disk_ref.size);
        let cfg_bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let cfg_ref = self.put_bytes(&cfg_bytes)?;
        let mut ann = serde_json::Map::new();
        ann.insert(CREATED.into(), Value::from(created));
        if let Some(k) = cache_key {
            ann.insert(CACHE_KEY.into(), Value::from(k));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": cfg_ref.digest, "size": cfg_ref.size},
            "layers": [{
                "mediaType": disk_media_type,
                "digest": disk_ref.digest,
                "size": disk_ref.size,
                "annotations": {"org.opencontainers.image.title": disk_title}
            }],
            "annotations": ann,
        });
        let m_bytes =
            serde_json::to_vec(&manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let m_ref = self.put_bytes(&m_bytes)?;
        self.add_image_locked(&m_ref, cache_key, tag, &lock)?;
        Ok((m_ref.digest.clone(), disk_ref))
    }

    /// The per-store secret that keys HMACs of sensitive values in cache keys (created on first use).
    pub fn secret(&self) -> Result<Vec<u8>> {
        let p = self.root.join("secret");
        if let Ok(b) = std::fs::read(&p) {
            if b.len() >= 32 {
                return Ok(b);
            }
        }
        let mut b = vec![0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(io("cannot read", Path::new("/dev/urandom")))?;
        let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        f.write_all(&b).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot fsync", &tmp))?;
        // Another process may have won the race: keep whichever landed first.
        if std::fs::hard_link(&tmp, &p).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return std::fs::read(&p).map_err(io("cannot read", &p));
        }
        let _ = std::fs::remove_file(&tmp);
        Ok(b)
    }
}

/// The `manifests` list of an index `read_index` checked.
fn manifests_mut(idx: &mut Value) -> &mut Vec<Value> {
    if !idx["manifests"].is_array() {
        idx["manifests"] = Value::Array(Vec::new());
    }
    match &mut idx["manifests"] {
        Value::Array(a) => a,
        _ => unreachable!("set to an array above"),
    }
}

/// Takes `tag` off every entry. An entry left with no annotation kiln reads still keeps its image
/// in the store: an image leaves the index only by `kiln rm` or `kiln gc --untagged`, never
/// because another build moved a tag (concurrent builds of one template each keep theirs).
fn untag(list: &mut [Value], tag: &str) {
    for m in list.iter_mut() {
        if m["annotations"][REF_NAME].as_str() == Some(tag) {
            if let Some(a) = m["annotations"].as_object_mut() {
                a.remove(REF_NAME);
            }
        }
    }
}

/// Drops exact duplicate entries (keeping the last) and untagged entries that say nothing another
/// entry of the same image does not: one with no cache key, or whose key a tagged entry carries.
fn dedupe(list: &mut Vec<Value>) {
    let mut exact: Vec<Value> = Vec::with_capacity(list.len());
    for m in list.drain(..).rev() {
        if !exact.iter().any(|o| o == &m) {
            exact.push(m);
        }
    }
    exact.reverse();
    let untagged = |m: &Value| m["annotations"][REF_NAME].is_null();
    let key = |m: &Value| m["annotations"][CACHE_KEY].clone();
    let redundant: Vec<bool> = exact
        .iter()
        .enumerate()
        .map(|(i, m)| {
            untagged(m)
                && exact.iter().enumerate().any(|(j, o)| {
                    i != j
                        && o["digest"] == m["digest"]
                        && ((!untagged(o) && (key(m).is_null() || key(o) == key(m)))
                            || (untagged(o) && key(m).is_null() && !key(o).is_null()))
                })
        })
        .collect();
    *list = exact
        .into_iter()
        .zip(redundant)
        .filter(|(_, r)| !r)
        .map(|(m, _)| m)
        .collect();
}

/// An image to write with `Store::commit_image`.
#[derive(Clone, Copy)]
pub struct NewImage<'a> {
    /// The disk file, inside one of the store's temp dirs.
    pub disk: &'a Path,
    pub disk_media_type: &'a str,
    /// The disk's file name (the layer's `org.opencontainers.image.title`).
    pub disk_title: &'a str,
    /// The kiln manifest, stored as the config blob.
    pub config: &'a Value,
    pub cache_key: Option<&'a str>,
    pub tag: Option<&'a str>,
    /// RFC 3339.
    pub created: &'a str,
}

/// A temp dir inside the store, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// sha256 of a file, streamed: (`sha256:<hex>`, size).
pub fn hash_file(p: &Path) -> Result<(String, u64)> {
    let mut f = File::open(p).map_err(io("cannot open", p))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", p))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((format!("sha256:{}", hex(&h.finalize())), size))
}

/// `sha256:0123456789ab` (12 hex digits).
pub fn short(id: &str) -> String {
    let h = id.trim_start_matches("sha256:");
    format!("sha256:{}", &h[..h.len().min(12)])
}

/// HMAC-SHA256 (RFC 2104), hex.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    hex(&outer.finalize())
}

/// The default store: $KILN_STORE, else $XDG_DATA_HOME/kiln/store, else ~/.local/share/kiln/store.
pub fn default_root() -> PathBuf {
    if let Some(s) = std::env::var_os("KILN_STORE") {
        return PathBuf::from(s);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    data.join("kiln/store")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_store(name: &str) -> (PathBuf, Store) {
        let root = std::env::temp_dir().join(format!("kiln-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let s = Store::open(&root).expect("open store");
        (root, s)
    }

    #[test]
    fn blobs_are_named_by_content_and_read_only() {
        let (root, s) = tmp_store("blobs");
        let r = s.put_bytes(b"hello").expect("put");
        assert_eq!(
            r.digest,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let mode = std::fs::metadata(s.blob_path(&r.digest).expect("path"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(s.read_blob(&r.digest).expect("read"), b"hello");
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn images_resolve_by_tag_id_and_prefix_and_gc_keeps_referenced_blobs() {
        let (root, s) = tmp_store("images");
        let t = s.temp_dir().expect("tmp");
        let disk = t.path().join("disk");
        std::fs::write(&disk, b"disk bytes").expect("write");
        let cfg = json!({"schema": 1});
        let (id, disk_ref) = s
            .commit_image(&NewImage {
                disk: &disk,
                disk_media_type: "application/vnd.kiln.disk.qcow2",
                disk_title: "d.qcow2",
                config: &cfg,
                cache_key: Some("key1"),
                tag: Some("web"),
                created: "2026-01-01T00:00:00Z",
            })
            .expect("commit");
        assert_eq!(s.resolve("web").expect("tag"), id);
        assert_eq!(s.resolve(&id).expect("id"), id);
        assert_eq!(s.resolve(&id[7..19]).expect("prefix"), id);
        assert_eq!(s.lookup_key("key1").expect("lookup"), Some(id.clone()));
        assert_eq!(s.lookup_key("key2").expect("lookup"), None);
        let orphan = s.put_bytes(b"orphan").expect("put");
        let (n, _) = s.gc().expect("gc");
        assert_eq!(n, 1);
        assert!(!s.has_blob(&orphan.digest));
        assert!(s.has_blob(&disk_ref.digest));
        assert!(s.verify(&[]).expect("verify").is_empty());
        s.remove(&id).expect("rm");
        s.gc().expect("gc");
        assert!(!s.has_blob(&disk_ref.digest));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn verify_finds_a_flipped_byte() {
        let (root, s) = tmp_store("verify");
        let t = s.temp_dir().expect("tmp");
        let disk = t.path().join("disk");
        std::fs::write(&disk, vec![7u8; 4096]).expect("write");
        let (id, _) = s
            .commit_image(&NewImage {
                disk: &disk,
                disk_media_type: "application/vnd.kiln.disk.raw",
                disk_title: "d.raw",
                config: &json!({"name": "x"}),
                cache_key: None,
                tag: Some("x"),
                created: "now",
            })
            .expect("commit");
        // One flipped byte in any blob (manifest, config, disk) is found and named.
        for digest in s.blobs_of(&id).expect("blobs") {
            let p = s.blob_path(&digest).expect("path");
            let original = std::fs::read(&p).expect("read");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let mut b = original.clone();
            let i = b.len() / 2;
            b[i] ^= 1;
            std::fs::write(&p, &b).expect("write");
            let problems = s.verify(&[]).expect("verify");
            assert_eq!(problems.len(), 1, "flip in {digest}");
            assert!(problems[0].to_string().contains(&digest), "{}", problems[0]);
            std::fs::write(&p, &original).expect("restore");
            assert!(s.verify(&[]).expect("verify").is_empty());
        }
        std::fs::remove_dir_all(root).ok();
    }

    fn commit(s: &Store, bytes: &[u8], key: Option<&str>, tag: Option<&str>) -> String {
        let t = s.temp_dir().expect("tmp");
        let disk = t.path().join("disk");
        std::fs::write(&disk, bytes).expect("write");
        s.commit_image(&NewImage {
            disk: &disk,
            disk_media_type: "application/vnd.kiln.disk.raw",
            disk_title: "d.raw",
            config: &json!({"n": bytes.len()}),
            cache_key: key,
            tag,
            created: "now",
        })
        .expect("commit")
        .0
    }

    #[test]
    fn concurrent_commits_of_one_tag_and_key_all_survive_a_gc_loop() {
        let (root, s) = tmp_store("concurrent");
        let s = std::sync::Arc::new(s);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gc = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.gc().expect("gc");
                    runs += 1;
                }
                runs
            })
        };
        let writers: Vec<_> = (0..6u8)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..5u8)
                        .map(|i| commit(&s, &[w, i, 42], Some("same-key"), Some("web")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: Vec<String> = writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer"))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(gc.join().expect("gc thread") > 0);
        s.gc().expect("gc");
        let listed = s.images().expect("images");
        assert_eq!(ids.len(), 30);
        for id in &ids {
            assert!(listed.iter().any(|i| &i.id == id), "{id} lost");
            assert!(s.blobs_of(id).expect("blobs").iter().all(|b| s.has_blob(b)));
        }
        assert_eq!(listed.iter().filter(|i| !i.tags.is_empty()).count(), 1);
        assert!(s.verify(&[]).expect("verify").is_empty());
        // The untagged ones go only when asked.
        assert_eq!(s.remove_untagged().expect("prune"), 29);
        s.gc().expect("gc");
        assert_eq!(s.images().expect("images").len(), 1);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_malformed_index_is_an_error_naming_the_file_and_gc_deletes_nothing() {
        let (root, s) = tmp_store("badindex");
        let id = commit(&s, b"keep me", None, Some("x"));
        let good = std::fs::read(root.join("index.json")).expect("read");
        for bad in [
            r#"{"manifests": 5}"#.to_string(),
            "{".to_string(),
            r#"{"manifests": [{"digest": "sha256:../../../../etc/hostname", "size": 1}]}"#
                .to_string(),
            r#"{"manifests": [{"size": 1}]}"#.to_string(),
            format!(r#"{{"manifests": [{{"digest": "{id}", "size": 1, "annotations": 3}}]}}"#),
        ] {
            std::fs::write(root.join("index.json"), &bad).expect("write");
            let e = s.gc().expect_err(&bad).to_string();
            assert!(e.contains("index.json"), "{e}");
            assert!(s.images().is_err());
            assert!(s.tag(&id, "y").is_err());
            assert!(Store::open_existing(&root).is_err());
        }
        std::fs::write(root.join("index.json"), &good).expect("restore");
        assert_eq!(s.gc().expect("gc").0, 0);
        assert!(s.verify(&[]).expect("verify").is_empty());
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn digests_outside_the_grammar_never_become_paths() {
        let (root, s) = tmp_store("digest");
        for d in [
            "sha256:../../../../etc/hostname",
            "sha256:../../../../../../../../../../../../../../../../../../../../etc/passwd",
            "sha512:00",
            "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
            "",
        ] {
            assert!(s.blob_path(d).is_err(), "{d}");
            assert!(s.read_blob(d).is_err());
            assert!(s.verify_blob(d).is_err());
            assert!(!s.has_blob(d));
        }
        // A manifest naming such a layer is refused by blobs_of, so verify and gc stop on it.
        let m = s
            .put_bytes(br#"{"config":{"digest":"sha256:../../etc/hostname"},"layers":[]}"#)
            .expect("put");
        s.add_image(&m, None, Some("evil")).expect("add");
        let e = s.blobs_of(&m.digest).expect_err("traversal").to_string();
        assert!(e.contains("64 lowercase hex"), "{e}");
        assert_eq!(s.verify(&[]).expect("verify").len(), 1);
        assert!(
            s.gc().is_err(),
            "gc must not act on a manifest it cannot read"
        );
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn tags_follow_the_oci_grammar_and_moving_one_keeps_the_old_image() {
        let (root, s) = tmp_store("tags");
        let a = commit(&s, b"a", Some("k"), Some("web"));
        for bad in [
            "",
            "a b",
            "../../x",
            ".hidden",
            "-x",
            &"t".repeat(129),
            "a/b",
        ] {
            assert!(
                matches!(s.tag(&a, bad), Err(StoreError::BadTag(_))),
                "{bad:?}"
            );
        }
        s.tag(&a, &"t".repeat(128)).expect("128 is allowed");
        s.tag(&a, "v1.2_rc-3").expect("tag");
        let b = commit(&s, b"b", Some("k"), Some("web"));
        assert_eq!(s.resolve("web").expect("web"), b);
        assert_eq!(s.resolve("v1.2_rc-3").expect("old tag"), a);
        s.remove(&a).expect("rm");
        let c = commit(&s, b"c", Some("k2"), Some("web"));
        let imgs = s.images().expect("images");
        assert!(imgs.iter().any(|i| i.id == b && i.tags.is_empty()));
        assert_eq!(s.lookup_key("k").expect("lookup"), Some(b));
        assert_eq!(s.resolve("web").expect("web"), c);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn read_only_open_creates_nothing_and_pins_survive_gc() {
        let root = std::env::temp_dir().join(format!("kiln-store-none-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert!(matches!(
            Store::open_existing(&root),
            Err(StoreError::NoStore(_))
        ));
        assert!(!root.exists());
        let (root, s) = tmp_store("pins");
        let b = s.put_bytes(b"being pulled").expect("put");
        let pin = s.pin(std::slice::from_ref(&b.digest)).expect("pin");
        s.gc().expect("gc");
        assert!(s.has_blob(&b.digest));
        drop(pin);
        s.gc().expect("gc");
        assert!(!s.has_blob(&b.digest));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
