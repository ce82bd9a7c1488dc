//! OCI registries (the distribution API) for kiln: push and pull images between the local store
//! and a registry, resolve references, authenticate as container tools do (Docker/Podman config
//! files, credential helpers, `kiln login`; basic and bearer-token flows), and name cache entries.
//! Blobs stream in both directions and are verified by digest on the way in; blobs the registry
//! already has are skipped. TLS by default; plain HTTP only when asked for, and only to a loopback
//! registry. Not for: deciding when to use the cache (the engine asks through `kiln_core`).

use base64::Engine as _;
use kiln_store::Store;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use ureq::http;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9, application/vnd.oci.image.index.v1+json;q=0.5";
/// Upload chunk size (PATCH requests).
const CHUNK: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid reference {0:?}: {1}")]
    Reference(String, &'static str),
    #[error("{0}")]
    Refused(String),
    #[error("registry {host}: {what}: HTTP {status}{detail}")]
    Http {
        host: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("cannot reach registry {host}: {reason}")]
    Network { host: String, reason: String },
    #[error("registry {host} requires authentication for {what}: run `kiln login {host}` or add credentials to ~/.docker/config.json")]
    Unauthorized { host: String, what: String },
    #[error("{what} from {host} does not match its digest: expected {want}, got {got}")]
    Digest {
        host: String,
        what: String,
        want: String,
        got: String,
    },
    #[error("{0}")]
    Store(#[from] kiln_store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// `registry/repo[:tag][@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why| RegistryError::Reference(s.to_string(), why);
        let s2 = s.strip_prefix("oci://").unwrap_or(s);
        let (rest, digest) = match s2.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad("the digest must be sha256:<64 hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s2, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            bad("write it as registry/repository[:tag] (e.g. 127.0.0.1:5000/team/image:v1)")
        })?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "the first part must be a registry host (with a dot or a port, or localhost)",
            ));
        }
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if repo.is_empty()
            || !repo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        {
            return Err(bad(
                "repository names are lower-case letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(bad("a tag is up to 128 letters, digits, '.', '_' or '-'"));
            }
        }
        Ok(Reference {
            registry: registry.to_string(),
            repo: repo.to_string(),
            tag,
            digest,
        })
    }

    /// What the manifest is addressed by: the digest if given, else the tag (default `latest`).
    pub fn target(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The tag a cache entry lives under: derived from the cache key, so keys never collide and the
/// repository's tag list stays readable (`kiln-cache-<64 hex>`).
pub fn cache_tag(cache_key: &str) -> String {
    format!("kiln-cache-{}", cache_key.trim_start_matches("sha256:"))
}

/// Registry credentials. Debug never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <sensitive>)", self.user)
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// kiln's own credentials file (`kiln login`), in Docker's config format.
pub fn kiln_auth_file() -> PathBuf {
    std::env::var_os("KILN_AUTH_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".config"))
                .join("kiln/auth.json")
        })
}

fn auth_files() -> Vec<PathBuf> {
    let mut v = vec![kiln_auth_file()];
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        v.push(PathBuf::from(d).join("containers/auth.json"));
    }
    v.push(home().join(".config/containers/auth.json"));
    v.push(
        std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".docker"))
            .join("config.json"),
    );
    v
}

/// Credentials for `host` from the first config file that has them (or its credential helper).
pub fn credentials_for(host: &str) -> Option<Credentials> {
    for f in auth_files() {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let entry = v["auths"].as_object().and_then(|a| {
            a.iter().find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k == host || k.split('/').next() == Some(host)
            })
        });
        if let Some((_, e)) = entry {
            if let Some(auth) = e["auth"].as_str() {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(auth) {
                    if let Some((u, p)) = String::from_utf8_lossy(&bytes).split_once(':') {
                        return Some(Credentials {
                            user: u.to_string(),
                            secret: p.to_string(),
                        });
                    }
                }
            }
        }
        let helper = v["credHelpers"][host]
            .as_str()
            .or_else(|| v["credsStore"].as_str());
        if let Some(h) = helper {
            if let Some(c) = from_helper(h, host) {
                return Some(c);
            }
        }
    }
    None
}

fn from_helper(helper: &str, host: &str) -> Option<Credentials> {
    use std::io::Write;
    let mut child = std::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(host.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Credentials {
        user: v["Username"].as_str()?.to_string(),
        secret: v["Secret"].as_str()?.to_string(),
    })
}

/// Saves credentials for `host` in kiln's auth file (mode 0600).
pub fn save_login(host: &str, c: &Credentials) -> Result<PathBuf> {
    let f = kiln_auth_file();
    let mut v: serde_json::Value = std::fs::read_to_string(&f)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({"auths": {}}));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.secret));
    v["auths"][host] = serde_json::json!({ "auth": auth });
    write_private(&f, &v)?;
    Ok(f)
}

/// Removes `host` from kiln's auth file; true if it was there.
pub fn remove_login(host: &str) -> Result<bool> {
    let f = kiln_auth_file();
    let Ok(text) = std::fs::read_to_string(&f) else {
        return Ok(false);
    };
    let mut v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({"auths": {}}));
    let had = v["auths"]
        .as_object_mut()
        .is_some_and(|a| a.remove(host).is_some());
    write_private(&f, &v)?;
    Ok(had)
}

fn write_private(f: &Path, v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, source| RegistryError::Io {
        what: format!("{what} {}", f.display()),
        source,
    };
    if let Some(d) = f.parent() {
        std::fs::create_dir_all(d).map_err(|e| io("cannot create the directory of", e))?;
    }
    let tmp = f.with_extension("tmp");
    let mut fh = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("cannot write", e))?;
    fh.write_all(
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(|e| io("cannot write", e))?;
    std::fs::rename(&tmp, f).map_err(|e| io("cannot write", e))
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.starts_with("127.") || h == "::1"
}

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    FileRange {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
}

/// A connection to one registry.
pub struct Client {
    agent: ureq::Agent,
    host: String,
    base: String,
    creds: Option<Credentials>,
    /// Authorization header value per scope.
    auth: Mutex<HashMap<String, String>>,
}

impl Client {
    /// `plain_http` is refused unless the registry is on loopback.
    pub fn new(host: &str, plain_http: bool, creds: Option<Credentials>) -> Result<Client> {
        if plain_http && !is_loopback(host) {
            return Err(RegistryError::Refused(format!("plain HTTP to {host} refused: only loopback registries (127.0.0.1, localhost, ::1) may be used without TLS")));
        }
        // The system's trust store (OpenSSL), as container tools use.
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let scheme = if plain_http { "http" } else { "https" };
        let creds = creds.or_else(|| credentials_for(host));
        Ok(Client {
            agent,
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            creds,
            auth: Mutex::new(HashMap::new()),
        })
    }

    fn net(&self, e: ureq::Error) -> RegistryError {
        let mut reason = e.to_string();
        if self.base.starts_with("https") && is_loopback(&self.host) {
            reason.push_str(" (a registry on this machine serving plain HTTP needs --plain-http)");
        }
        RegistryError::Network {
            host: self.host.clone(),
            reason,
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        scope: &str,
        headers: &[(&str, String)],
        body: &Body<'_>,
    ) -> Result<http::Response<ureq::Body>> {
        for attempt in 0..2 {
            let mut b = http::Request::builder().method(method).uri(self.url(url));
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            if let Some(a) = self.auth.lock().ok().and_then(|m| m.get(scope).cloned()) {
                b = b.header("Authorization", a);
            }
            let resp = match body {
                Body::Empty => {
                    let r = b
                        .body(())
                        .map_err(|e| RegistryError::Refused(e.to_string()))?;
                    self.agent.run(r)
                }
                Body::Bytes(bytes) => {
                    let r = b
                        .header("Content-Length", bytes.len().to_string())
                        .body(*bytes)
                        .map_err(|e| RegistryError::Refused(e.to_string()))?;
                    self.agent.run(r)
                }
                Body::FileRange { path, offset, len } => {
                    let mut f = std::fs::File::open(path).map_err(|e| RegistryError::Io {
                        what: format!("cannot open {}", path.display()),
                        source: e,
                    })?;
                    f.seek(SeekFrom::Start(*offset))
                        .map_err(|e| RegistryError::Io {
                            what: format!("cannot read {}", path.display()),
                            source: e,
                        })?;
                    let mut limited = f.take(*len);
                    let r = b
                        .header("Content-Length", len.to_string())
                        .body(ureq::SendBody::from_reader(&mut limited))
                        .map_err(|e| RegistryError::Refused(e.to_string()))?;
                    self.agent.run(r)
                }
            }
            .map_err(|e| self.net(e))?;
            if resp.status().as_u16() == 401 && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.authenticate(&challenge, scope)?;
                continue;
            }
            return Ok(resp);
        }
        Err(RegistryError::Unauthorized {
            host: self.host.clone(),
            what: scope.to_string(),
        })
    }

    /// Answers a 401 challenge: basic with the stored credentials, or a bearer token from the
    /// realm the registry names.
    fn authenticate(&self, challenge: &str, scope: &str) -> Result<()> {
        let unauthorized = || RegistryError::Unauthorized {
            host: self.host.clone(),
            what: scope.to_string(),
        };
        let basic = self.creds.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.user, c.secret))
            )
        });
        let lower = challenge.to_ascii_lowercase();
        let value = if lower.starts_with("basic") {
            basic.ok_or_else(unauthorized)?
        } else if lower.starts_with("bearer") {
            let params = parse_challenge(challenge);
            let realm = params.get("realm").ok_or_else(unauthorized)?;
            let mut url = format!(
                "{realm}?service={}",
                params.get("service").map(|s| s.as_str()).unwrap_or("")
            );
            if !scope.is_empty() {
                url.push_str(&format!("&scope={scope}"));
            }
            let mut b = http::Request::builder().method("GET").uri(url);
            if let Some(a) = &basic {
                b = b.header("Authorization", a.as_str());
            }
            let req = b
                .body(())
                .map_err(|e| RegistryError::Refused(e.to_string()))?;
            let mut resp = self.agent.run(req).map_err(|e| self.net(e))?;
            if !resp.status().is_success() {
                return Err(unauthorized());
            }
            let v: serde_json::Value =
                serde_json::from_slice(&resp.body_mut().read_to_vec().map_err(|e| self.net(e))?)
                    .map_err(|_| unauthorized())?;
            let token = v["token"]
                .as_str()
                .or_else(|| v["access_token"].as_str())
                .ok_or_else(unauthorized)?;
            format!("Bearer {token}")
        } else {
            return Err(unauthorized());
        };
        if let Ok(mut m) = self.auth.lock() {
            m.insert(scope.to_string(), value);
        }
        Ok(())
    }

    fn fail(&self, what: &str, mut resp: http::Response<ureq::Body>) -> RegistryError {
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return RegistryError::Unauthorized {
                host: self.host.clone(),
                what: what.to_string(),
            };
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(|m| format!(": {m}")))
            .unwrap_or_default();
        RegistryError::Http {
            host: self.host.clone(),
            what: what.to_string(),
            status,
            detail,
        }
    }

    /// The manifest bytes and their digest; None when the registry does not have it.
    pub fn get_manifest(&self, r: &Reference) -> Result<Option<(Vec<u8>, String)>> {
        let scope = format!("repository:{}:pull", r.repo);
        let mut resp = self.send(
            "GET",
            &format!("/v2/{}/manifests/{}", r.repo, r.target()),
            &scope,
            &[("Accept", ACCEPT.to_string())],
            &Body::Empty,
        )?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(&format!("manifest {r}"), resp));
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| self.net(e))?;
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(RegistryError::Digest {
                    host: self.host.clone(),
                    what: format!("manifest {r}"),
                    want: want.clone(),
                    got: digest,
                });
            }
        }
        Ok(Some((bytes, digest)))
    }

    fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let scope = format!("repository:{repo}:pull,push");
        let resp = self.send(
            "HEAD",
            &format!("/v2/{repo}/blobs/{digest}"),
            &scope,
            &[],
            &Body::Empty,
        )?;
        Ok(resp.status().is_success())
    }

    /// Uploads a blob from a file unless the registry has it; chunked (PATCH) when large.
    fn push_blob(
        &self,
        repo: &str,
        digest: &str,
        path: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<bool> {
        if self.blob_exists(repo, digest)? {
            progress(size, size);
            return Ok(false);
        }
        let scope = format!("repository:{repo}:pull,push");
        let start = self.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &scope,
            &[],
            &Body::Empty,
        )?;
        if start.status().as_u16() != 202 {
            return Err(self.fail(&format!("starting the upload of {digest}"), start));
        }
        let mut location = location(&start).ok_or_else(|| {
            RegistryError::Refused(format!("registry {} gave no upload location", self.host))
        })?;
        let mut offset = 0;
        while offset < size {
            let len = CHUNK.min(size - offset);
            let headers = [
                ("Content-Type", "application/octet-stream".to_string()),
                ("Content-Range", format!("{}-{}", offset, offset + len - 1)),
            ];
            let resp = self.send(
                "PATCH",
                &location,
                &scope,
                &headers,
                &Body::FileRange { path, offset, len },
            )?;
            if resp.status().as_u16() != 202 {
                return Err(self.fail(&format!("uploading {digest}"), resp));
            }
            location = crate::location(&resp).unwrap_or(location);
            offset += len;
            progress(offset, size);
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let done = self.send(
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &scope,
            &[("Content-Length", "0".to_string())],
            &Body::Empty,
        )?;
        if done.status().as_u16() != 201 {
            return Err(self.fail(&format!("finishing the upload of {digest}"), done));
        }
        Ok(true)
    }

    /// Pushes image `id` from the store as `r`; returns the manifest digest.
    pub fn push(
        &self,
        store: &Store,
        id: &str,
        r: &Reference,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<String> {
        let manifest = store.read_blob(id)?;
        let m: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| RegistryError::Refused(format!("image {id}: {e}")))?;
        let blobs = manifest_blobs(&m);
        for (digest, size) in &blobs {
            store.verify_blob(digest)?;
            self.push_blob(
                &r.repo,
                digest,
                &store.blob_path(digest)?,
                *size,
                &mut |d, t| progress(digest, d, t),
            )?;
        }
        // The manifest goes last, so the registry never serves one whose blobs are missing. Test
        // hook: hold here so a test can kill kiln between the blobs and the manifest.
        if std::env::var_os("KILN_FAILPOINT").is_some_and(|v| v == "push-before-manifest") {
            std::thread::sleep(Duration::from_secs(60));
        }
        let media = m["mediaType"].as_str().unwrap_or(MANIFEST_TYPE).to_string();
        let scope = format!("repository:{}:pull,push", r.repo);
        let resp = self.send(
            "PUT",
            &format!("/v2/{}/manifests/{}", r.repo, r.target()),
            &scope,
            &[("Content-Type", media)],
            &Body::Bytes(&manifest),
        )?;
        if resp.status().as_u16() != 201 {
            return Err(self.fail(&format!("manifest {r}"), resp));
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if d != id {
                return Err(RegistryError::Digest {
                    host: self.host.clone(),
                    what: format!("manifest {r}"),
                    want: id.to_string(),
                    got: d.to_string(),
                });
            }
        }
        Ok(id.to_string())
    }

    /// Downloads a blob into the store, verifying its digest while it streams.
    fn pull_blob(
        &self,
        store: &Store,
        repo: &str,
        digest: &str,
        size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        if store.has_blob(digest) {
            progress(size, size);
            return Ok(());
        }
        let scope = format!("repository:{repo}:pull");
        let mut resp = self.send(
            "GET",
            &format!("/v2/{repo}/blobs/{digest}"),
            &scope,
            &[],
            &Body::Empty,
        )?;
        if !resp.status().is_success() {
            return Err(self.fail(&format!("blob {digest}"), resp));
        }
        let tmp = store.temp_dir()?;
        let path = tmp.path().join("blob");
        let io = |what: &str, source| RegistryError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };
        let mut f = std::fs::File::create(&path).map_err(|e| io("cannot create", e))?;
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| RegistryError::Network {
                host: self.host.clone(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            std::io::Write::write_all(&mut f, &buf[..n]).map_err(|e| io("cannot write", e))?;
            got += n as u64;
            progress(got, size);
        }
        drop(f);
        let actual = format!("sha256:{}", hex(&h.finalize()));
        if actual != digest {
            return Err(RegistryError::Digest {
                host: self.host.clone(),
                what: format!("blob in {repo}"),
                want: digest.to_string(),
                got: actual,
            });
        }
        store.put_file(&path)?;
        Ok(())
    }

    /// Pulls `r` into the store; returns the image id (the manifest digest). None when the
    /// registry does not have it.
    pub fn pull(
        &self,
        store: &Store,
        r: &Reference,
        local_tag: Option<&str>,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<Option<String>> {
        let Some((bytes, digest)) = self.get_manifest(r)? else {
            return Ok(None);
        };
        let m: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Refused(format!("manifest {r} is not JSON: {e}")))?;
        if m["mediaType"].as_str().is_some_and(|t| t.contains("index")) || m["manifests"].is_array()
        {
            return Err(RegistryError::Refused(format!(
                "{r} is an image index (several platforms), not a kiln image"
            )));
        }
        let blobs = manifest_blobs(&m);
        for (d, _) in &blobs {
            kiln_store::parse_digest(d, &format!("manifest {r}"))?;
        }
        // Pinned until the index names them, so a concurrent `kiln gc` keeps what this pull
        // fetched (or already had) in between.
        let mut pinned: Vec<String> = blobs.iter().map(|(d, _)| d.clone()).collect();
        pinned.push(digest.clone());
        let _pin = store.pin(&pinned)?;
        for (d, size) in &blobs {
            self.pull_blob(store, &r.repo, d, *size, &mut |g, t| progress(d, g, t))?;
        }
        let mref = store.put_bytes(&bytes)?;
        if mref.digest != digest {
            return Err(RegistryError::Digest {
                host: self.host.clone(),
                what: format!("manifest {r}"),
                want: digest,
                got: mref.digest,
            });
        }
        let key = m["annotations"][kiln_store::CACHE_KEY].as_str();
        store.add_image(&mref, key, local_tag)?;
        Ok(Some(digest))
    }

    /// Checks that the registry answers and the credentials work (`kiln login`).
    pub fn ping(&self) -> Result<()> {
        let resp = self.send("GET", "/v2/", "", &[], &Body::Empty)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.fail("login", resp))
        }
    }
}

/// (digest, size) of the config and every layer of an image manifest.
fn manifest_blobs(m: &serde_json::Value) -> Vec<(String, u64)> {
    let entry = |v: &serde_json::Value| {
        (
            v["digest"].as_str().unwrap_or_default().to_string(),
            v["size"].as_u64().unwrap_or(0),
        )
    };
    std::iter::once(entry(&m["config"]))
        .chain(m["layers"].as_array().into_iter().flatten().map(entry))
        .collect()
}

fn location(resp: &http::Response<ureq::Body>) -> Option<String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// For fuzz/: what kiln reads from a registry: a reference, a WWW-Authenticate challenge, a
/// manifest's blob list (each digest parsed as a pull does).
#[doc(hidden)]
pub fn fuzz_response(text: &str) {
    let _ = Reference::parse(text);
    let _ = parse_challenge(text);
    if let Ok(m) = serde_json::from_str::<serde_json::Value>(text) {
        for (d, _) in manifest_blobs(&m) {
            let _ = kiln_store::parse_digest(&d, "fuzz");
        }
    }
}

fn parse_challenge(c: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let rest = c.split_once(' ').map_or("", |(_, r)| r);
    let mut s = rest;
    while !s.is_empty() {
        let Some((k, v)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, after) = if let Some(v) = v.strip_prefix('"') {
            match v.find('"') {
                Some(i) => (&v[..i], &v[i + 1..]),
                None => (v, ""),
            }
        } else {
            match v.find(',') {
                Some(i) => (&v[..i], &v[i..]),
                None => (v, ""),
            }
        };
        out.insert(k, val.to_string());
        s = after.trim_start_matches(',').trim_start();
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_container_tools() {
        let r = Reference::parse("127.0.0.1:5000/team/img:v1").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/img", Some("v1"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("oci://registry.example.com/x@{d}")).expect("valid");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.target(), d);
        assert!(
            Reference::parse("ubuntu:22.04").is_err(),
            "no registry host"
        );
        assert!(Reference::parse("localhost/Upper").is_err());
        assert!(Reference::parse("localhost/x@sha256:12").is_err());
        assert_eq!(
            Reference::parse("localhost:5000/a/b")
                .expect("valid")
                .target(),
            "latest"
        );
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            p.get("realm").map(String::as_str),
            Some("https://auth.example.com/token")
        );
        assert_eq!(
            p.get("service").map(String::as_str),
            Some("registry.example.com")
        );
        assert_eq!(
            p.get("scope").map(String::as_str),
            Some("repository:a/b:pull")
        );
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(Client::new("127.0.0.1:5000", true, None).is_ok());
        assert!(Client::new("localhost:5000", true, None).is_ok());
        assert!(Client::new("registry.example.com", true, None).is_err());
        assert!(Client::new("registry.example.com", false, None).is_ok());
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials {
            user: "u".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
