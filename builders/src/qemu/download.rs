//! Downloading `iso_url` over http(s) into a cache keyed by the expected checksum (or the URL when
//! there is none), with byte progress. A download is written to a temp file, verified, then
//! renamed, so the cache never holds a partial or wrong file.

use kiln_core::{Cancel, Emitter, Error, EventKind, Result};
use sha2::Digest as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

pub fn is_remote(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("KILN_DOWNLOAD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("kiln/downloads")
        })
}

/// Where a download goes and what it is called (iso_skip_cache, iso_target_extension).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Download here instead of the shared cache (a directory the caller removes).
    pub dir: Option<PathBuf>,
    /// The file's extension instead of the URL's (`iso_target_extension`).
    pub extension: Option<String>,
}

/// The cached file for `url`, downloading it if needed. `checksum` is iso_checksum as written;
/// the caller verifies it (and the cache is keyed by it, so a new checksum downloads again).
pub fn fetch(url: &str, checksum: &str, em: Option<&Emitter>, cancel: &Cancel) -> Result<PathBuf> {
    fetch_to(url, checksum, &Placement::default(), em, cancel)
}

/// `fetch`, placed as asked.
pub fn fetch_to(
    url: &str,
    checksum: &str,
    place: &Placement,
    em: Option<&Emitter>,
    cancel: &Cancel,
) -> Result<PathBuf> {
    let key: String = sha2::Sha256::digest(format!("{url}\n{checksum}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("download")
        .to_string();
    if let Some(ext) = &place.extension {
        let stem = std::path::Path::new(&name)
            .file_stem()
            .map_or_else(|| name.clone(), |s| s.to_string_lossy().into_owned());
        name = format!("{stem}.{}", ext.trim_start_matches('.'));
    }
    let name = name.as_str();
    let dir = match &place.dir {
        Some(d) => d.clone(),
        None => cache_dir().join(&key[..32]),
    };
    let target = dir.join(name);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .into();
    if let Some(em) = em {
        em.say(format!("downloading {url}"));
    }
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| Error::other(format!("cannot download iso_url {url}"), e))?;
    let total = resp.body().content_length().unwrap_or(0);
    let tmp = dir.join(format!(".{name}.part-{}", std::process::id()));
    let _cleanup = kiln_core::workdir::RemoveOnDrop::new(tmp.clone());
    let mut f = std::fs::File::create(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        cancel.check()?;
        let n = reader.read(&mut buf).map_err(|e| {
            Error::failed(format!(
                "download of {url} broke off after {done} bytes: {e}"
            ))
        })?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
        done += n as u64;
        if let Some(em) = em {
            em.emit(EventKind::Progress {
                what: "download".into(),
                done,
                total: total.max(done),
            });
        }
    }
    if total > 0 && done != total {
        return Err(Error::failed(format!(
            "download of {url} ended after {done} of {total} bytes"
        )));
    }
    f.sync_all()
        .map_err(|e| Error::io("cannot fsync the download", e))?;
    std::fs::rename(&tmp, &target)
        .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
    Ok(target)
}
