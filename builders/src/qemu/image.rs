//! Base images: resolving iso_url, verifying iso_checksum, and the qemu-img calls (info, overlay
//! create, convert).

use kiln_core::config::ConfigError;
use kiln_core::{Error, Result};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Resolves iso_url to a local path (a plain path or file:// URL; relative to the working
/// directory as in Packer).
pub fn resolve_url(url: &str) -> Result<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if super::download::is_remote(url) {
        return Err(Error::failed(format!(
            "iso_url {url:?} must be downloaded first"
        )));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(Error::failed(format!(
            "iso_url {url:?}: unsupported scheme {scheme:?}; use a local path or file:// URL"
        )));
    }
    Ok(PathBuf::from(url))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    kiln_core::hash_file_hex::<sha2::Sha256>(path)
}

/// Verifies `path` against iso_checksum (`sha256:…`, `sha512:…`, `md5:…`, bare hex, `file:PATH`,
/// `none`). Returns the sha256 of the file (computed anyway, for the manifest).
pub fn verify_checksum(path: &Path, spec: &str, known_sha256: Option<&str>) -> Result<String> {
    let spec = spec.trim();
    let sha256 = match known_sha256 {
        Some(k) => k.to_string(),
        None => sha256_file(path)?,
    };
    if spec.eq_ignore_ascii_case("none") {
        return Ok(sha256);
    }
    let (algo, want) = if let Some(src) = spec.strip_prefix("file:") {
        let file = if super::download::is_remote(src) {
            super::download::fetch(src, "none", None, &kiln_core::Cancel::new())?
        } else {
            resolve_url(src.trim_start_matches("//").trim_start_matches("file:"))?
        };
        let file = if src.starts_with("file://") || src.starts_with("//") {
            PathBuf::from(src.trim_start_matches("file:").trim_start_matches("//"))
        } else {
            file
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::io(format!("cannot read checksum file {}", file.display()), e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let want = text
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let (h, f) = (it.next()?, it.next()?);
                (f.trim_start_matches('*').trim_start_matches("./") == name).then(|| h.to_string())
            })
            .or_else(|| {
                let l: Vec<&str> = text.split_whitespace().collect();
                (l.len() == 1).then(|| l[0].to_string())
            })
            .ok_or_else(|| {
                Error::failed(format!(
                    "checksum file {} has no line for {name}",
                    file.display()
                ))
            })?;
        (algo_for_len(want.len()), want)
    } else if let Some((a, h)) = spec.split_once(':') {
        (a.to_ascii_lowercase(), h.to_string())
    } else {
        (algo_for_len(spec.len()), spec.to_string())
    };
    let got = match algo.as_str() {
        "sha256" => sha256.clone(),
        "sha512" => kiln_core::hash_file_hex::<sha2::Sha512>(path)?,
        "md5" => {
            let mut f = std::fs::File::open(path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
            let mut h = md5::Md5::new();
            std::io::copy(&mut f, &mut h)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            hex(&h.finalize())
        }
        other => {
            return Err(Error::failed(format!(
                "iso_checksum type {other:?} is not supported; use sha256, sha512 or md5"
            )))
        }
    };
    if !got.eq_ignore_ascii_case(&want) {
        return Err(Error::failed(format!("checksum mismatch for {}: iso_checksum says {algo}:{want} but the file is {algo}:{got} — the base image changed or the checksum is wrong", path.display())));
    }
    Ok(sha256)
}

fn algo_for_len(n: usize) -> String {
    match n {
        32 => "md5",
        40 => "sha1",
        128 => "sha512",
        _ => "sha256",
    }
    .to_string()
}

fn qemu_img(args: &[&str]) -> Result<String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| Error::io("cannot run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "qemu-img {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
}

pub fn info(path: &Path) -> Result<ImageInfo> {
    let p = path.to_string_lossy();
    let text = qemu_img(&["info", "--output=json", "-U", &p]).map_err(|e| {
        Error::failed(format!(
            "{} is not a disk image qemu can read: {e}",
            path.display()
        ))
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::other("qemu-img info", e))?;
    Ok(ImageInfo {
        format: v["format"].as_str().unwrap_or("raw").to_string(),
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
    })
}

/// Creates a qcow2 overlay on `base`, optionally growing it to `size` bytes.
pub fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
    size: Option<u64>,
    extra: &[String],
) -> Result<()> {
    let b = base.to_string_lossy();
    let o = overlay.to_string_lossy();
    let size_s = size.map(|s| s.to_string());
    let mut args = vec!["create", "-q", "-f", "qcow2", "-b", &b, "-F", base_format];
    // qemu_img_args.create go after the format, as Packer puts them.
    args.extend(extra.iter().map(String::as_str));
    args.push(&o);
    if let Some(s) = &size_s {
        args.push(s);
    }
    qemu_img(&args).map(|_| ())
}

/// A blank qcow2 disk for an installer.
pub fn create_blank(path: &Path, size: u64, extra: &[String]) -> Result<()> {
    let p = path.to_string_lossy();
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(extra.iter().map(String::as_str));
    args.extend([p.as_ref(), size.as_str()]);
    qemu_img(&args).map(|_| ())
}

/// `qemu-img convert -p`, reporting progress (percent) as it goes.
pub fn convert(
    src: &Path,
    dst: &Path,
    format: &str,
    compress: bool,
    extra: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    use std::io::Read as _;
    let mut cmd = Command::new("qemu-img");
    // qemu_img_args.convert go before -O, as Packer puts them.
    cmd.arg("convert").args(extra).args(["-p", "-O", format]);
    if compress && format == "qcow2" {
        cmd.arg("-c");
    }
    cmd.arg(src)
        .arg(dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = kiln_core::process::Guarded::spawn(cmd, "qemu-img convert")?;
    let mut out = child.child().and_then(|c| c.stdout.take());
    let mut err = child.child().and_then(|c| c.stderr.take());
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    if let Some(o) = out.as_mut() {
        let mut buf = [0u8; 512];
        let mut pending = String::new();
        let mut last = u64::MAX;
        while let Ok(n) = o.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.push_str(&String::from_utf8_lossy(&buf[..n]));
            // Lines look like "    (42.00/100%)\r".
            while let Some(i) = pending.find(['\r', '\n']) {
                let piece: String = pending.drain(..=i).collect();
                if let Some(pct) = piece
                    .trim()
                    .strip_prefix('(')
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<f64>().ok())
                {
                    // qemu-img's percentage, 0 to 100.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let p = pct.clamp(0.0, 100.0) as u64;
                    if p != last {
                        last = p;
                        progress(p);
                    }
                }
            }
        }
    }
    let st = child.wait()?;
    let stderr = err_reader.join().unwrap_or_default();
    if !st.success() {
        return Err(Error::failed(format!(
            "qemu-img convert failed: {}",
            stderr.trim()
        )));
    }
    Ok(())
}

/// Why `path` does not look like a disk a VM can boot, if it does not: qemu-img calls anything it
/// cannot place `raw`, so a raw image must also show a partition table or a filesystem.
pub fn not_a_disk(path: &Path) -> Option<String> {
    let info = match info(path) {
        Ok(i) => i,
        Err(e) => return Some(e.to_string()),
    };
    if info.format != "raw" {
        return None;
    }
    let mut head = vec![0u8; 0x10048];
    let n = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut n = 0;
            loop {
                let k = std::io::Read::read(&mut f, &mut head[n..])?;
                if k == 0 || n + k == head.len() {
                    break Ok(n + k);
                }
                n += k;
            }
        })
        .unwrap_or(0);
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let known = n >= 512
        && (at(510, &[0x55, 0xaa])            // MBR / protective MBR of GPT
            || at(512, b"EFI PART")              // GPT header
            || at(0x438, &[0x53, 0xef])          // ext2/3/4 superblock magic
            || at(0x8001, b"CD001")              // ISO 9660
            || at(0, b"XFSB")
            || at(0x10040, b"_BHRfS_M")          // btrfs
            || at(512, b"LABELONE")              // LVM physical volume
            || at(0, b"hsqs")); // squashfs
    (!known).then(|| {
        format!(
            "{} is not a disk image: qemu-img sees no image format (it would boot it as raw), and it has no partition table or filesystem kiln recognises",
            path.display()
        )
    })
}

/// Checks an iso_checksum's form (not the file): `none`, `file:…`, `TYPE:HEX` or bare hex with the
/// length its type needs.
pub fn check_checksum_form(spec: &str) -> std::result::Result<(), ConfigError> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("none") || spec.starts_with("file:") {
        return Ok(());
    }
    let (algo, hex) = match spec.split_once(':') {
        Some((a, h)) => (a.to_ascii_lowercase(), h),
        None => (algo_for_len(spec.len()), spec),
    };
    let want = match algo.as_str() {
        "md5" => 32,
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            return Err(ConfigError(format!(
            "iso_checksum {spec:?}: {algo:?} is not a checksum type kiln knows (use sha256:HEX, sha512:HEX, md5:HEX, file:URL or none)"
        )))
        }
    };
    if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ConfigError(format!(
            "iso_checksum {spec:?}: a {algo} checksum is {want} hex digits (got {} characters)",
            hex.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_mismatch_is_reported() {
        let dir = std::env::temp_dir().join(format!("kiln-ck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let f = dir.join("base.img");
        std::fs::write(&f, b"kiln").ok();
        let good = "sha256:a6f5a6c2f0bfcd9d9a3b6c9c1e5fc7d9a1dbbaa9b5d47c0b3c1bd2ad2b2f3c5e";
        let real = sha256_file(&f).unwrap_or_default();
        assert!(verify_checksum(&f, &format!("sha256:{real}"), None).is_ok());
        assert!(verify_checksum(&f, good, None).is_err());
        assert!(verify_checksum(&f, "none", None).is_ok());
        std::fs::write(dir.join("SHA256SUMS"), format!("{real}  base.img\n")).ok();
        assert!(verify_checksum(
            &f,
            &format!("file:{}", dir.join("SHA256SUMS").display()),
            None
        )
        .is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
