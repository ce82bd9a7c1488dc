//! The qemu builder: boots the base disk under an overlay, serves http_directory, forwards SSH
//! through QEMU user networking (QEMU picks the port, kiln reads it over QMP), connects, and at
//! the end shuts the guest down cleanly and exports its disk to a staging directory that the
//! engine moves into output_directory only when the whole build succeeded.
//! Not for: what runs inside the guest (provisioners) or where images are kept (the engine).

mod accel;
mod argv;
mod bootcmd;
pub mod config;
mod download;
mod http;
mod image;
mod media;
mod qmp;

use config::{decode_all, QemuConfig, SshOpts};
use kiln_core::cancel::HookGuard;
use kiln_core::process::Guarded;
use kiln_core::workdir::WorkDir;
use kiln_core::{Artifact, Builder, Cancel, Communicator, Emitter, Error, Machine, Result};
use kiln_ssh::{SshComm, SshConfig, Transfer};
use kiln_template::{Component, Diagnostics};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use accel::run_probe;

/// Everything resolved from the config, with Packer's defaults applied.
#[derive(Debug)]
struct Settings {
    build: String,
    base_url: String,
    /// Where the base came from when kiln resolved it (an `oci://` reference and its digest).
    base_source: Option<String>,
    checksum: String,
    disk_image: bool,
    use_backing_file: bool,
    disk_size: Option<u64>,
    format: String,
    disk_interface: String,
    disk_cache: String,
    disk_discard: String,
    compress: bool,
    output_directory: PathBuf,
    vm_name: String,
    accelerator: String,
    cpus: u64,
    memory: u64,
    machine_type: String,
    cpu_model: Option<String>,
    qemu_binary: String,
    net_device: String,
    display: Option<String>,
    /// (bind address, port range, password) when a VNC server was asked for.
    vnc: Option<(String, u16, u16, bool)>,
    efi: Option<(String, String)>,
    qemuargs: Vec<Vec<String>>,
    extra_args: Vec<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    kernel_args: Option<String>,
    boot_wait: Option<Duration>,
    boot_command: Vec<String>,
    boot_key_interval: Duration,
    cd_files: Vec<PathBuf>,
    cd_content: BTreeMap<String, String>,
    cd_label: Option<String>,
    http_directory: Option<PathBuf>,
    http_content: BTreeMap<String, String>,
    http_bind: String,
    http_ports: (u16, u16),
    shutdown_command: Option<String>,
    shutdown_timeout: Duration,
    pause_before_connecting: Option<Duration>,
    ssh: Option<SshConfig>,
    /// No key or password given: kiln makes a key pair for the build (type, bits) and offers its
    /// public half through a cloud-init seed on the HTTP server.
    temp_key: Option<(String, Option<u64>)>,
    clear_authorized_keys: bool,
}

pub struct QemuBuilder {
    s: Arc<Settings>,
    /// sha256 of the base image, computed once for the cache key and reused by launch.
    base_sha256: std::sync::OnceLock<String>,
    /// `qemu --version`, read once in preflight for the manifest.
    qemu_version: std::sync::OnceLock<String>,
}

/// For fuzz/: parses one boot_command string (and lists its unknown `<keys>`).
#[doc(hidden)]
pub fn fuzz_boot_command(s: &str) -> bool {
    let _ = bootcmd::unknown_keys(s);
    bootcmd::parse(s).is_ok()
}

/// Options whose values go on qemu's command line, which any local user can read in
/// `/proc/PID/cmdline`: a sensitive value in one is refused (kiln-cli checks, it knows them).
pub const ARGV_OPTIONS: &[&str] = &[
    "qemuargs",
    "qemu_extra_args",
    "kernel_args",
    "kernel",
    "initrd",
    "machine_type",
    "cpu_model",
    "net_device",
    "display",
    "qemu_binary",
    "vm_name",
    "accelerator",
    "disk_interface",
    "disk_cache",
    "disk_discard",
    "format",
    "firmware",
    "efi_firmware_code",
    "efi_firmware_vars",
];

/// Decodes and checks a `qemu` source. Returns the builder and its warnings.
pub fn from_component(
    build: &str,
    c: &Component,
) -> std::result::Result<(QemuBuilder, Diagnostics), Diagnostics> {
    let d = decode_all(c)?;
    let mut s = settings(build, &d.qemu, &d.ssh).map_err(|m| {
        Diagnostics(vec![kiln_template::Diagnostic::error(
            m,
            Some(c.span.clone()),
        )])
    })?;
    let checked = check(c, &d.qemu, &d.ssh, &s);
    if checked.errors().next().is_some() {
        return Err(checked);
    }
    let mut warnings = d.warnings;
    warnings.extend(checked);
    s.base_source = c
        .get("__kiln_base_source")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok((
        QemuBuilder {
            s: Arc::new(s),
            base_sha256: std::sync::OnceLock::new(),
            qemu_version: std::sync::OnceLock::new(),
        },
        warnings,
    ))
}

/// What validate can know without booting: names that become paths, numbers in range, files
/// that must exist, the checksum's form, and that a local base image is a disk. Each error points
/// at its attribute.
fn check(c: &Component, q: &QemuConfig, ssh: &SshOpts, s: &Settings) -> Diagnostics {
    let mut d = Diagnostics::default();
    let mut warns = Vec::new();
    let mut err = |attr: &str, msg: String| {
        let span = c.attrs.get(attr).map_or(c.span.clone(), |a| a.span.clone());
        d.push(kiln_template::Diagnostic::error(msg, Some(span)));
    };
    // A file name, not a path: it is joined to output_directory (vm_name) or written onto media.
    for (attr, v) in [
        ("vm_name", Some(&s.vm_name)),
        ("cd_label", s.cd_label.as_ref()),
    ] {
        if let Some(v) = v {
            if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.contains('\0') {
                let hint = if attr == "vm_name" {
                    "it is the image's file name inside output_directory; use output_directory to choose the directory"
                } else {
                    "it is the CD's volume label"
                };
                err(
                    attr,
                    format!(
                        "{attr} = {v:?} must be a plain name (no `/`, not `.` or `..`): {hint}"
                    ),
                );
            }
        }
    }
    if s.cd_label.as_ref().is_some_and(|l| l.len() > 32) {
        err(
            "cd_label",
            "cd_label is at most 32 characters (an ISO 9660 volume id)".into(),
        );
    }
    let num = |n: Option<kiln_core::config::Num>| n.map(|n| n.0);
    let mut range = |attr: &str, v: Option<u64>, lo: u64, hi: u64, unit: &str| {
        if let Some(v) = v {
            if v < lo || v > hi {
                err(
                    attr,
                    format!("{attr} = {v} is out of range: it must be {lo} to {hi}{unit}"),
                );
            }
        }
    };
    range("memory", num(q.memory), 16, 16 << 20, " (MiB)");
    range("cpus", num(q.cpus), 1, 1024, "");
    for (attr, v) in [
        ("sockets", q.sockets),
        ("cores", q.cores),
        ("threads", q.threads),
    ] {
        range(attr, num(v), 1, 1024, "");
    }
    for (attr, v) in [
        ("ssh_port", ssh.ssh_port),
        ("vnc_port_min", q.vnc_port_min),
        ("vnc_port_max", q.vnc_port_max),
        ("http_port_min", q.http_port_min),
        ("http_port_max", q.http_port_max),
        ("host_port_min", q.host_port_min),
        ("host_port_max", q.host_port_max),
        ("ssh_host_port_min", q.ssh_host_port_min),
        ("ssh_host_port_max", q.ssh_host_port_max),
        ("ssh_bastion_port", ssh.ssh_bastion_port),
        ("ssh_proxy_port", ssh.ssh_proxy_port),
    ] {
        range(attr, num(v), 1, 65535, " (a TCP port)");
    }
    range(
        "ssh_handshake_attempts",
        num(ssh.ssh_handshake_attempts),
        1,
        10_000,
        "",
    );
    // The decoded values, so "5900" and 5900 compare alike.
    for ((lo, l), (hi, h)) in [
        (
            ("vnc_port_min", q.vnc_port_min),
            ("vnc_port_max", q.vnc_port_max),
        ),
        (
            ("http_port_min", q.http_port_min),
            ("http_port_max", q.http_port_max),
        ),
    ] {
        if let (Some(l), Some(h)) = (num(l), num(h)) {
            if l > h {
                err(lo, format!("{lo} = {l} is above {hi} = {h}"));
            }
        }
    }
    if let Some(key) = s.ssh.as_ref().and_then(|c| c.private_key_file.as_ref()) {
        if let Err(e) = std::fs::File::open(key) {
            err(
                "ssh_private_key_file",
                format!("ssh_private_key_file {} cannot be read: {e}", key.display()),
            );
        }
    }
    if let Some(dir) = &s.http_directory {
        // A warning here (Packer's own examples name directories that exist only on the
        // user's machine); the build's preflight refuses it.
        if !dir.is_dir() {
            let span = c
                .attrs
                .get("http_directory")
                .map_or(c.span.clone(), |a| a.span.clone());
            warns.push(kiln_template::Diagnostic::warning(
                format!(
                    "http_directory {} is not a directory (yet): a build stops on it",
                    dir.display()
                ),
                Some(span),
            ));
        }
    }
    if let Some(k) = s.ssh.as_ref().and_then(|c| c.host_key.as_deref()) {
        if let Err(m) = kiln_ssh::host_key_fingerprint(k) {
            err("ssh_host_key", m);
        }
    }
    if let Err(m) = image::check_checksum_form(&s.checksum) {
        err("iso_checksum", m);
    }
    if s.disk_image && !download::is_remote(&s.base_url) && !s.base_url.is_empty() {
        if let Ok(p) = image::resolve_url(&s.base_url) {
            if p.is_file() {
                if let Some(why) = image::not_a_disk(&p) {
                    err(
                        if c.attrs.contains_key("iso_url") {
                            "iso_url"
                        } else {
                            "iso_urls"
                        },
                        format!("base image (iso_url): {why}"),
                    );
                }
            }
        }
    }
    for w in warns {
        d.push(w);
    }
    d
}

fn settings(build: &str, q: &QemuConfig, ssh: &SshOpts) -> std::result::Result<Settings, String> {
    let t = |o: &Option<kiln_core::config::Text>| o.as_ref().map(|t| t.0.clone());
    let flag = |o: Option<kiln_core::config::Flag>| o.is_some_and(|f| f.0);
    let disk_image = flag(q.disk_image);
    let base_url = t(&q.iso_url)
        .or_else(|| {
            q.iso_urls
                .as_ref()
                .and_then(|u| u.first())
                .map(|t| t.0.clone())
        })
        .unwrap_or_default();
    let disk_size = match (&q.disk_size, flag(q.skip_resize_disk)) {
        (Some(s), false) => Some(image::parse_size(s).map_err(|e| e.to_string())?),
        _ => None,
    };
    let communicator = t(&q.communicator).unwrap_or_else(|| "ssh".into());
    let ssh_cfg = (communicator == "ssh").then(|| SshConfig {
        host: t(&ssh.ssh_host).unwrap_or_else(|| "127.0.0.1".into()),
        port: ssh.ssh_port.map_or(22, |p| p.0 as u16),
        user: t(&ssh.ssh_username).unwrap_or_default(),
        password: t(&ssh.ssh_password),
        private_key_file: t(&ssh.ssh_private_key_file).map(PathBuf::from),
        timeout: ssh
            .ssh_timeout
            .or(ssh.ssh_wait_timeout)
            .map_or(Duration::from_secs(300), |d| d.0),
        handshake_attempts: ssh.ssh_handshake_attempts.map_or(10, |n| n.0 as u32),
        pty: flag(ssh.ssh_pty),
        transfer: if ssh.ssh_file_transfer_method.as_deref() == Some("sftp") {
            Transfer::Sftp
        } else {
            Transfer::Scp
        },
        keep_alive: ssh
            .ssh_keep_alive_interval
            .map_or(Duration::from_secs(5), |d| d.0),
        host_key: t(&ssh.ssh_host_key),
    });
    let efi = if flag(q.efi_boot) {
        Some((
            t(&q.efi_firmware_code).unwrap_or_else(|| "/usr/share/OVMF/OVMF_CODE_4M.fd".into()),
            t(&q.efi_firmware_vars).unwrap_or_else(|| "/usr/share/OVMF/OVMF_VARS_4M.fd".into()),
        ))
    } else {
        None
    };
    let net = t(&q.net_device).unwrap_or_else(|| "virtio-net".into());
    Ok(Settings {
        build: build.to_string(),
        base_url,
        base_source: None,
        checksum: t(&q.iso_checksum).unwrap_or_else(|| "none".into()),
        disk_image,
        use_backing_file: flag(q.use_backing_file),
        disk_size,
        format: t(&q.format).unwrap_or_else(|| "qcow2".into()),
        disk_interface: t(&q.disk_interface).unwrap_or_else(|| "virtio".into()),
        disk_cache: t(&q.disk_cache).unwrap_or_else(|| "writeback".into()),
        disk_discard: t(&q.disk_discard).unwrap_or_else(|| "ignore".into()),
        compress: flag(q.disk_compression),
        output_directory: PathBuf::from(
            t(&q.output_directory).unwrap_or_else(|| format!("output-{build}")),
        ),
        vm_name: t(&q.vm_name).unwrap_or_else(|| format!("packer-{build}")),
        accelerator: t(&q.accelerator).unwrap_or_else(|| "auto".into()),
        cpus: q.cpus.map_or(1, |n| n.0.max(1)),
        memory: q.memory.map_or(512, |n| n.0.max(16)),
        machine_type: t(&q.machine_type).unwrap_or_else(|| "pc".into()),
        cpu_model: t(&q.cpu_model),
        qemu_binary: t(&q.qemu_binary).unwrap_or_else(|| "qemu-system-x86_64".into()),
        net_device: format!("{net},netdev=user.0"),
        display: t(&q.display).filter(|_| !flag(q.headless)),
        vnc: (q.vnc_bind_address.is_some()
            || q.vnc_port_min.is_some()
            || q.vnc_port_max.is_some()
            || flag(q.vnc_use_password))
        .then(|| {
            (
                t(&q.vnc_bind_address).unwrap_or_else(|| "127.0.0.1".into()),
                q.vnc_port_min.map_or(5900, |n| n.0 as u16),
                q.vnc_port_max.map_or(6000, |n| n.0 as u16),
                flag(q.vnc_use_password),
            )
        }),
        efi,
        qemuargs: q
            .qemuargs
            .as_ref()
            .map(|v| {
                v.iter()
                    .map(|a| a.iter().map(|s| s.0.clone()).collect())
                    .collect()
            })
            .unwrap_or_default(),
        extra_args: q
            .qemu_extra_args
            .as_ref()
            .map(|v| v.iter().map(|s| s.0.clone()).collect())
            .unwrap_or_default(),
        kernel: t(&q.kernel),
        initrd: t(&q.initrd),
        kernel_args: t(&q.kernel_args),
        boot_wait: q.boot_wait.map(|d| d.0),
        boot_command: q
            .boot_command
            .as_ref()
            .map(|v| v.iter().map(|t| t.0.clone()).collect())
            .unwrap_or_default(),
        boot_key_interval: q
            .boot_key_interval
            .map_or(Duration::from_millis(100), |d| d.0),
        cd_files: q
            .cd_files
            .as_ref()
            .map(|v| v.iter().map(|t| PathBuf::from(&t.0)).collect())
            .unwrap_or_default(),
        cd_content: q
            .cd_content
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default(),
        cd_label: t(&q.cd_label),
        http_directory: t(&q.http_directory).map(PathBuf::from),
        http_content: q
            .http_content
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default(),
        // Packer listens on 0.0.0.0; kiln only on loopback, which is where QEMU's user network
        // sends the guest's requests to 10.0.2.2.
        http_bind: t(&q.http_bind_address).unwrap_or_else(|| "127.0.0.1".into()),
        http_ports: (
            q.http_port_min.map_or(8000, |n| n.0 as u16),
            q.http_port_max.map_or(9000, |n| n.0 as u16),
        ),
        shutdown_command: t(&q.shutdown_command).filter(|s| !s.is_empty()),
        shutdown_timeout: q.shutdown_timeout.map_or(Duration::from_secs(300), |d| d.0),
        pause_before_connecting: q
            .pause_before_connecting
            .or(ssh.pause_before_ssh)
            .map(|d| d.0),
        temp_key: ssh_cfg
            .as_ref()
            .filter(|c| c.password.is_none() && c.private_key_file.is_none())
            .map(|_| {
                (
                    t(&ssh.temporary_key_pair_type).unwrap_or_else(|| "ed25519".into()),
                    ssh.temporary_key_pair_bits.map(|b| b.0),
                )
            }),
        clear_authorized_keys: flag(ssh.ssh_clear_authorized_keys),
        ssh: ssh_cfg,
    })
}

fn work_base() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_WORK_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("kiln").join("work")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether pid is running (a zombie that was not reaped yet counts as gone).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

impl QemuBuilder {
    fn choose_accel(&self, em: &Emitter, scratch: &Path) -> Result<String> {
        let s = &self.s;
        match s.accelerator.as_str() {
            "auto" => match accel::kvm_works(&s.qemu_binary, scratch) {
                Ok(()) => {
                    em.say("accelerator: kvm (auto: KVM runs guests here)");
                    Ok("kvm".into())
                }
                Err(why) => {
                    em.say(format!("accelerator: tcg (auto: {why}; software emulation is slower)"));
                    Ok("tcg".into())
                }
            },
            "kvm" => match accel::kvm_works(&s.qemu_binary, scratch) {
                Ok(()) => Ok("kvm".into()),
                Err(why) => Err(Error::failed(format!("accelerator = \"kvm\" but KVM cannot run guests here: {why} — use accelerator = \"tcg\" or \"auto\""))),
            },
            "none" => Ok("tcg".into()),
            other => Ok(other.to_string()),
        }
    }
}

impl QemuBuilder {
    /// The base image on disk: a local path, or the download cache's copy of a remote URL.
    fn base_path(&self, em: Option<&Emitter>, cancel: &Cancel) -> Result<PathBuf> {
        if download::is_remote(&self.s.base_url) {
            download::fetch(&self.s.base_url, &self.s.checksum, em, cancel)
        } else {
            image::resolve_url(&self.s.base_url)
        }
    }
}

impl Builder for QemuBuilder {
    fn kind(&self) -> &str {
        "qemu"
    }

    fn output(&self) -> (PathBuf, String) {
        (self.s.output_directory.clone(), self.s.vm_name.clone())
    }

    fn key_inputs(&self, em: &Emitter, cancel: &Cancel) -> Result<serde_json::Value> {
        let s = &self.s;
        // A remote base with a sha256 checksum counts by that checksum: no download to know
        // whether the image is already built.
        let known = s
            .checksum
            .strip_prefix("sha256:")
            .filter(|_| download::is_remote(&s.base_url))
            .map(|h| h.to_ascii_lowercase());
        let digest = match self.base_sha256.get().cloned().or(known) {
            Some(d) => d,
            None => {
                let base = self.base_path(Some(em), cancel)?;
                let d = kiln_core::digest_path(&base)?
                    .trim_start_matches("sha256:")
                    .to_string();
                let _ = self.base_sha256.set(d.clone());
                d
            }
        };
        let file = |p: &Option<String>| -> Result<serde_json::Value> {
            Ok(match p {
                Some(p) => serde_json::Value::from(kiln_core::digest_path(Path::new(p))?),
                None => serde_json::Value::Null,
            })
        };
        // Arguments that name existing files count by content, not by path.
        let arg = |a: &String| -> Result<String> {
            let p = Path::new(a);
            if (a.starts_with('/') || a.starts_with('.')) && p.is_file() {
                return kiln_core::digest_path(p);
            }
            Ok(a.clone())
        };
        let qemuargs: Vec<Vec<String>> = s
            .qemuargs
            .iter()
            .map(|v| v.iter().map(arg).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        let extra: Vec<String> = s.extra_args.iter().map(arg).collect::<Result<_>>()?;
        let http_dir = match &s.http_directory {
            Some(d) if d.exists() => serde_json::Value::from(kiln_core::digest_path(d)?),
            Some(d) => serde_json::Value::from(d.display().to_string()),
            None => serde_json::Value::Null,
        };
        // Not here, because they do not change the disk: accelerator, timeouts, display,
        // ports, output_directory, vm_name, qemu_binary, ssh credentials.
        Ok(serde_json::json!({
            "base": format!("sha256:{digest}"),
            "use_backing_file": s.use_backing_file,
            "disk_size": s.disk_size,
            "format": s.format,
            "disk_interface": s.disk_interface,
            "disk_discard": s.disk_discard,
            "disk_compression": s.compress,
            "machine_type": s.machine_type,
            "cpu_model": s.cpu_model,
            "cpus": s.cpus,
            "memory": s.memory,
            "net_device": s.net_device,
            "efi": s.efi.as_ref().map(|(c, v)| vec![file(&Some(c.clone())).ok(), file(&Some(v.clone())).ok()]),
            "kernel": file(&s.kernel)?,
            "initrd": file(&s.initrd)?,
            "kernel_args": s.kernel_args,
            "qemuargs": qemuargs,
            "qemu_extra_args": extra,
            "http_directory": http_dir,
            "http_content": s.http_content,
            "shutdown_command": s.shutdown_command,
            "disk_image": s.disk_image,
            "boot_command": s.boot_command,
            "cd_files": s.cd_files.iter().map(|f| kiln_core::digest_path(f).unwrap_or_else(|_| f.display().to_string())).collect::<Vec<_>>(),
            "cd_content": s.cd_content,
            "cd_label": s.cd_label,
            "ssh_username": s.ssh.as_ref().map(|c| c.user.clone()),
        }))
    }

    fn preflight(&self, force: bool) -> Result<()> {
        let s = &self.s;
        if (!s.cd_files.is_empty() || !s.cd_content.is_empty())
            && Command::new("xorriso")
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        {
            return Err(Error::failed(
                "cd_files/cd_content need xorriso: apt-get install xorriso",
            ));
        }
        let _ = force; // the engine decides about output_directory (a cache hit may reuse it)
        let base = if download::is_remote(&s.base_url) {
            PathBuf::from("/")
        } else {
            image::resolve_url(&s.base_url)?
        };
        if !download::is_remote(&s.base_url) && !base.is_file() {
            return Err(Error::failed(format!(
                "base image {} (iso_url) does not exist",
                base.display()
            )));
        }
        if let Some(dir) = &s.http_directory {
            if !dir.is_dir() {
                return Err(Error::failed(format!(
                    "http_directory {} is not a directory: create it, or remove http_directory",
                    dir.display()
                )));
            }
        }
        for (what, p) in [("kernel", &s.kernel), ("initrd", &s.initrd)] {
            if let Some(p) = p {
                if !Path::new(p).is_file() {
                    return Err(Error::failed(format!("{what} {p} does not exist")));
                }
            }
        }
        match qemu_version(&s.qemu_binary) {
            Some(v) => {
                let _ = self.qemu_version.set(v);
            }
            None => {
                return Err(Error::failed(format!(
                    "{} is not installed: apt-get install qemu-system-x86 qemu-utils",
                    s.qemu_binary
                )))
            }
        }
        Ok(())
    }

    fn launch(&self, em: &Emitter, cancel: &Cancel) -> Result<Box<dyn Machine>> {
        let s = &self.s;
        let work = WorkDir::create(&work_base(), &format!("build-{}", sanitize(&s.build)))?;
        let wd = work.path().to_path_buf();
        let base = self.base_path(Some(em), cancel)?;
        let base = std::fs::canonicalize(&base)
            .map_err(|e| Error::io(format!("base image {}", base.display()), e))?;
        em.say(format!("verifying base image {}", base.display()));
        if s.checksum.eq_ignore_ascii_case("none") {
            em.warn("iso_checksum = \"none\": the base image is not verified");
        }
        let base_sha256 = image::verify_checksum(
            &base,
            &s.checksum,
            self.base_sha256.get().map(String::as_str),
        )?;
        cancel.check()?;
        let overlay = wd.join("disk.qcow2");
        let mut cdroms = Vec::new();
        let vsize = if s.disk_image {
            let info = image::info(&base)?;
            let size = s.disk_size.filter(|sz| *sz > info.virtual_size);
            if let Some(sz) = s.disk_size {
                if sz < info.virtual_size {
                    em.warn(format!("disk_size ({sz} bytes) is smaller than the base image ({} bytes); keeping the base size", info.virtual_size));
                }
            }
            image::create_overlay(&base, &info.format, &overlay, size)?;
            size.unwrap_or(info.virtual_size)
        } else {
            // An installer: the ISO as a CD-ROM booted once, a blank disk to install onto.
            let size = s.disk_size.unwrap_or(40960 << 20);
            image::create_blank(&overlay, size)?;
            cdroms.push(base.display().to_string());
            size
        };
        if !s.cd_files.is_empty() || !s.cd_content.is_empty() {
            let iso = wd.join("cd.iso");
            media::make_iso(
                &wd.join("cd"),
                &iso,
                s.cd_label.as_deref().unwrap_or("cidata"),
                &s.cd_files,
                &s.cd_content,
            )?;
            cdroms.push(iso.display().to_string());
        }

        let mut http_content = s.http_content.clone();
        let temp_key = match &s.temp_key {
            Some((kind, bits)) => {
                let k = make_temp_key(&wd, kind, *bits, &s.build)?;
                let user = s.ssh.as_ref().map_or("root", |c| c.user.as_str());
                em.say(format!("no ssh_password or ssh_private_key_file: using a temporary {kind} key pair, offered to the guest in a cloud-init seed (http://10.0.2.2:PORT/user-data)"));
                for v in http_content.values_mut() {
                    *v = v
                        .replace("{{ .SSHPublicKey }}", &k.1)
                        .replace("{{.SSHPublicKey}}", &k.1);
                }
                http_content.entry("/user-data".into()).or_insert_with(|| {
                    format!("#cloud-config\nusers:\n  - name: {user}\n    ssh_authorized_keys:\n      - {}\n", k.1)
                });
                http_content
                    .entry("/meta-data".into())
                    .or_insert_with(|| format!("instance-id: kiln-{}\n", sanitize(&s.build)));
                Some(k)
            }
            None => None,
        };
        let http = if s.http_directory.is_some() || !http_content.is_empty() {
            let h = http::HttpServer::start(
                &s.http_bind,
                s.http_ports.0,
                s.http_ports.1,
                s.http_directory.clone(),
                http_content,
                em.clone(),
            )?;
            em.say(format!(
                "serving HTTP for the guest on {}:{} (guest: http://10.0.2.2:{})",
                s.http_bind, h.port, h.port
            ));
            Some(h)
        } else {
            None
        };
        let accel = self.choose_accel(em, &wd)?;
        cancel.check()?;

        let mut vars = BTreeMap::new();
        vars.insert("Name".to_string(), s.vm_name.clone());
        vars.insert(
            "OutputDir".to_string(),
            s.output_directory.display().to_string(),
        );
        vars.insert("HTTPIP".to_string(), "10.0.2.2".to_string());
        if let Some(h) = &http {
            vars.insert("HTTPPort".to_string(), h.port.to_string());
            vars.insert("HTTPAddr".to_string(), format!("10.0.2.2:{}", h.port));
        }
        if let Some((_, public)) = &temp_key {
            vars.insert("SSHPublicKey".to_string(), public.clone());
        }
        let guest_port = s.ssh.as_ref().map_or(22, |c| c.port);
        let console = wd.join("console.log");
        let qmp_sock = wd.join("qmp.sock");
        let events_sock = wd.join("events.sock");
        let drive = format!(
            "file={},if={},cache={},discard={},format=qcow2",
            overlay.display(),
            s.disk_interface,
            s.disk_cache,
            s.disk_discard
        );
        let vnc = match &s.vnc {
            Some((bind, min, max, pw)) => {
                let port = (*min..=(*max).max(*min))
                    .find(|p| *p >= 5900 && std::net::TcpListener::bind((bind.as_str(), *p)).is_ok())
                    .ok_or_else(|| Error::failed(format!("no free VNC port on {bind} between {min} and {max} (vnc_port_min/vnc_port_max; VNC ports start at 5900)")))?;
                Some((bind.clone(), port, *pw))
            }
            None => None,
        };
        let mut extra_args = s.extra_args.clone();
        if let (Some(_), Some(h)) = (&temp_key, &http) {
            // Where cloud-init's NoCloud datasource finds the seed.
            extra_args.extend([
                "-smbios".to_string(),
                format!("type=1,serial=ds=nocloud-net;s=http://10.0.2.2:{}/", h.port),
            ]);
        }
        let args = argv::build(&argv::ArgvInput {
            vm_name: &s.vm_name,
            machine_type: &s.machine_type,
            accel: &accel,
            cpu_model: s.cpu_model.as_deref(),
            cpus: s.cpus,
            memory: s.memory,
            drive,
            cdroms,
            boot: if s.disk_image { "c" } else { "once=d" },
            netdev: format!("user,id=user.0,hostfwd=tcp:127.0.0.1:0-:{guest_port}"),
            net_device: s.net_device.clone(),
            kernel: s.kernel.as_deref(),
            initrd: s.initrd.as_deref(),
            kernel_args: s.kernel_args.as_deref(),
            display: s.display.as_deref(),
            vnc: vnc.as_ref().map(|(b, p, pw)| {
                format!("{b}:{}{}", p - 5900, if *pw { ",password=on" } else { "" })
            }),
            efi: s.efi.clone(),
            qmp_socket: qmp_sock.display().to_string(),
            events_socket: (!s.disk_image).then(|| events_sock.display().to_string()),
            serial_log: console.display().to_string(),
            qemuargs: &s.qemuargs,
            extra: &extra_args,
            vars: &vars,
        });
        em.debug(format!(
            "qemu command: {} {}",
            s.qemu_binary,
            args.join(" ")
        ));
        let stderr_path = wd.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| Error::io("cannot create qemu's log", e))?;
        let mut cmd = Command::new(&s.qemu_binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let mut qemu = Guarded::spawn(cmd, &s.qemu_binary)?;
        let pid = qemu.id();
        let hook = cancel.on_cancel(move || {
            // SAFETY: plain kill(2); the guard reaps the process later.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        });
        em.phase("boot");
        em.say(format!("started qemu (pid {pid}, accelerator {accel})"));
        let died = |q: &mut Guarded| -> Error {
            let st = q
                .try_wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "still running".into());
            Error::failed(format!("qemu exited ({st}): {}", tail(&stderr_path, 10)))
        };
        let mut qmp =
            match qmp::Qmp::connect(&qmp_sock, Duration::from_secs(15), &mut || running(pid)) {
                Ok(q) => q,
                Err(e) => {
                    cancel.check()?;
                    let d = died(&mut qemu);
                    return Err(Error::failed(format!("{e}; {d}")));
                }
            };
        if let Some((bind, port, pw)) = &vnc {
            let mut msg = format!("VNC: vnc://{bind}:{port} (watch the guest with a VNC viewer)");
            if *pw {
                let password: String = kiln_template::funcs::uuidv4()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(8)
                    .collect();
                qmp.execute(
                    "change-vnc-password",
                    Some(serde_json::json!({"password": password})),
                )?;
                msg.push_str(&format!(", password {password}"));
            }
            em.say(msg);
        }
        if !s.boot_command.is_empty() {
            let wait = s.boot_wait.unwrap_or(Duration::from_secs(10));
            em.say(format!(
                "waiting {wait:?} (boot_wait), then typing the boot command"
            ));
            cancel.sleep(wait)?;
            em.phase("boot-command");
            type_boot_command(
                &mut qmp,
                &s.boot_command,
                &vars,
                s.boot_key_interval,
                em,
                cancel,
                &mut || running(pid),
            )?;
        }
        // An installer runs, then reboots into the installed disk: time the two apart.
        let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = (!s.disk_image).then(|| {
            em.phase("install");
            let em2 = em.clone();
            qmp::watch_reset(
                events_sock.clone(),
                watch_stop.clone(),
                Box::new(move || em2.phase("reboot")),
            )
        });
        let mut comm = None;
        if let Some(cfg) = &s.ssh {
            let usernet = qmp.hmp("info usernet")?;
            let port = qmp::parse_usernet_port(&usernet, guest_port).ok_or_else(|| {
                Error::failed(format!("no host port forwards to guest port {guest_port}: if qemuargs replaces -netdev, include hostfwd=tcp:127.0.0.1:{{{{ .SSHHostPort }}}}-:{guest_port}"))
            })?;
            vars.insert("SSHHostPort".to_string(), port.to_string());
            vars.insert("SSHHost".to_string(), cfg.host.clone());
            em.say(format!(
                "waiting for SSH on {}:{port} (guest port {guest_port}, timeout {:?})",
                cfg.host, cfg.timeout
            ));
            let mut c = cfg.clone();
            c.port = port;
            if let Some((path, _)) = &temp_key {
                c.private_key_file = Some(path.clone());
            }
            let console2 = console.clone();
            let stderr2 = stderr_path.clone();
            let alive: kiln_ssh::Liveness = Box::new(move || {
                (!running(pid)).then(|| format!("qemu exited: {}", tail(&stderr2, 5)))
            });
            match SshComm::connect(c, em.clone(), cancel.clone(), alive) {
                Ok(sc) => {
                    em.say(format!(
                        "connected to the guest over SSH after {:.1}s",
                        started.elapsed().as_secs_f64()
                    ));
                    comm = Some(sc);
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => {
                    let _ = console2;
                    return Err(Error::failed(format!(
                        "{e}\nlast lines of the guest console ({}):\n{}",
                        console.display(),
                        indent(&tail(&console, 20))
                    )));
                }
            }
            watch_stop.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(w) = watcher {
                let _ = w.join();
            }
            if let Some(p) = s.pause_before_connecting {
                cancel.sleep(p)?;
            }
        }
        Ok(Box::new(QemuMachine {
            host_key: comm.as_ref().and_then(|c| c.host_key().map(str::to_string)),
            comm,
            qmp: Some(qmp),
            _hook: hook,
            qemu: Some(qemu),
            _http: http,
            vars,
            s: self.s.clone(),
            overlay,
            console,
            accel,
            base_sha256,
            virtual_size: vsize,
            temp_key_comment: temp_key.as_ref().map(|_| temp_key_comment(&s.build)),
            qemu_version: self.qemu_version.get().cloned().unwrap_or_default(),
            work,
        }))
    }
}

fn temp_key_comment(build: &str) -> String {
    format!("kiln-temporary-{}", sanitize(build))
}

/// Makes a key pair with ssh-keygen in the work dir; (private key path, public key line).
fn make_temp_key(
    dir: &Path,
    kind: &str,
    bits: Option<u64>,
    build: &str,
) -> Result<(PathBuf, String)> {
    let path = dir.join("temporary_key");
    let mut cmd = Command::new("ssh-keygen");
    cmd.args([
        "-q",
        "-t",
        kind,
        "-N",
        "",
        "-C",
        &temp_key_comment(build),
        "-f",
    ])
    .arg(&path);
    if let Some(b) = bits {
        cmd.args(["-b", &b.to_string()]);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io("cannot run ssh-keygen (apt-get install openssh-client)", e))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .map_err(|e| Error::io("cannot read the temporary public key", e))?;
    Ok((path, public.trim().to_string()))
}

/// Types boot_command over QMP, filling run-time placeholders first.
fn type_boot_command(
    qmp: &mut qmp::Qmp,
    commands: &[String],
    vars: &BTreeMap<String, String>,
    interval: Duration,
    em: &Emitter,
    cancel: &Cancel,
    alive: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let mut held: Vec<String> = Vec::new();
    for (n, raw) in commands.iter().enumerate() {
        let text = kiln_core::placeholders::fill(raw, vars);
        em.debug(format!("boot_command[{n}]: {text}"));
        let actions =
            bootcmd::parse(&text).map_err(|e| Error::failed(format!("boot_command[{n}]: {e}")))?;
        for a in actions {
            cancel.check()?;
            if !alive() {
                return Err(Error::failed(
                    "qemu exited while the boot command was being typed",
                ));
            }
            match a {
                bootcmd::Action::Wait(d) => cancel.sleep(d)?,
                bootcmd::Action::Hold(k) => held.push(k),
                bootcmd::Action::Release(k) => held.retain(|h| *h != k),
                bootcmd::Action::Keys(keys) => {
                    let all: Vec<serde_json::Value> = held
                        .iter()
                        .chain(keys.iter())
                        .map(|k| serde_json::json!({"type": "qcode", "data": k}))
                        .collect();
                    qmp.execute(
                        "send-key",
                        Some(serde_json::json!({"keys": all, "hold-time": 20})),
                    )?;
                    cancel.sleep(interval)?;
                }
            }
        }
    }
    Ok(())
}

fn indent(s: &str) -> String {
    if s.is_empty() {
        return "  (the console is empty: the kernel printed nothing)".into();
    }
    s.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A running guest. Fields drop in order: SSH first, then qemu (killed if still running), the HTTP
/// server, and the work directory last.
struct QemuMachine {
    comm: Option<SshComm>,
    qmp: Option<qmp::Qmp>,
    _hook: HookGuard,
    qemu: Option<Guarded>,
    _http: Option<http::HttpServer>,
    vars: BTreeMap<String, String>,
    s: Arc<Settings>,
    overlay: PathBuf,
    console: PathBuf,
    accel: String,
    base_sha256: String,
    virtual_size: u64,
    qemu_version: String,
    /// The comment that marks the temporary public key (for ssh_clear_authorized_keys).
    temp_key_comment: Option<String>,
    /// The guest's SSH host key fingerprint, pinned for the build (for the manifest).
    host_key: Option<String>,
    work: WorkDir,
}

impl QemuMachine {
    fn wait_exit(&mut self, timeout: Duration, cancel: &Cancel) -> Result<bool> {
        let end = Instant::now() + timeout;
        let Some(q) = self.qemu.as_mut() else {
            return Ok(true);
        };
        loop {
            if q.try_wait().is_some() {
                return Ok(true);
            }
            cancel.check()?;
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Machine for QemuMachine {
    fn communicator(&mut self) -> Option<&mut dyn Communicator> {
        self.comm.as_mut().map(|c| c as &mut dyn Communicator)
    }

    fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    fn access(&self) -> String {
        match &self.s.ssh {
            Some(c) => format!(
                "reach it with: ssh -p {} {}{}@{} (qemu pid {}, console log {}, work dir {})",
                self.vars.get("SSHHostPort").map_or("?", String::as_str),
                c.private_key_file
                    .as_ref()
                    .map(|k| format!("-i {} ", k.display()))
                    .unwrap_or_default(),
                c.user,
                c.host,
                self.qemu.as_ref().map_or(0, Guarded::id),
                self.console.display(),
                self.work.path().display()
            ),
            None => format!(
                "qemu pid {}, console log {}",
                self.qemu.as_ref().map_or(0, Guarded::id),
                self.console.display()
            ),
        }
    }

    fn shutdown(
        mut self: Box<Self>,
        em: &Emitter,
        cancel: &Cancel,
        dest: &Path,
    ) -> Result<Artifact> {
        let t0 = Instant::now();
        if let (true, Some(comment), Some(comm)) = (
            self.s.clear_authorized_keys,
            &self.temp_key_comment,
            self.comm.as_mut(),
        ) {
            em.say("removing the temporary key from ~/.ssh/authorized_keys (ssh_clear_authorized_keys)");
            let script = format!("f=~/.ssh/authorized_keys; if [ -f \"$f\" ]; then grep -v -F '{comment}' \"$f\" > \"$f.kiln\"; cat \"$f.kiln\" > \"$f\"; rm -f \"$f.kiln\"; fi");
            match comm.exec(&script, &mut |l| em.output(l)) {
                Ok(0) => {}
                Ok(code) => {
                    return Err(Error::failed(format!(
                        "removing the temporary key failed (exit {code})"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        let cmd = self.s.shutdown_command.clone();
        match (&cmd, self.comm.as_mut()) {
            (Some(cmd), Some(comm)) => {
                em.say(format!("shutting down the guest: {cmd}"));
                comm.set_timeout(Some(Duration::from_secs(30)));
                let r = comm.exec(cmd, &mut |l| em.output(l));
                match r {
                    Ok(_) | Err(Error::Disconnected(_)) => {}
                    Err(Error::Cancelled) => return Err(Error::Cancelled),
                    Err(e) => em.warn(format!("shutdown_command: {e}")),
                }
            }
            (None, Some(_)) => {
                em.say("no shutdown_command: sending an ACPI power-down request");
                if let Some(q) = self.qmp.as_mut() {
                    q.execute("system_powerdown", None)?;
                }
            }
            (_, None) => em.say("communicator none: waiting for the guest to power itself off"),
        }
        self.comm = None;
        if !self.wait_exit(self.s.shutdown_timeout, cancel)? {
            if let Some(q) = self.qemu.as_mut() {
                q.kill();
            }
            return Err(Error::failed(format!(
                "the guest did not power off within shutdown_timeout ({:?}); it was stopped forcibly, and a disk from a forced stop is not trusted, so no image was written",
                self.s.shutdown_timeout
            )));
        }
        self.qmp = None;
        em.debug(format!(
            "guest powered off in {:.1}s",
            t0.elapsed().as_secs_f64()
        ));
        em.phase("export");
        let target = dest.join(&self.s.vm_name);
        let t1 = Instant::now();
        if self.s.use_backing_file {
            em.warn("use_backing_file = true: the image refers to its base image by path and is not self-contained");
            std::fs::copy(&self.overlay, &target)
                .map_err(|e| Error::io("cannot copy the overlay", e))?;
        } else {
            image::convert(
                &self.overlay,
                &target,
                &self.s.format,
                self.s.compress,
                &mut |pct| {
                    em.emit(kiln_core::EventKind::Progress {
                        what: "export".into(),
                        done: pct,
                        total: 100,
                    });
                },
            )?;
        }
        let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        let vsize = self.virtual_size;
        em.say(format!(
            "exported {} ({} bytes, {}) in {:.2}s",
            self.s.vm_name,
            size,
            self.s.format,
            t1.elapsed().as_secs_f64()
        ));
        let mut data = BTreeMap::new();
        data.insert("format".into(), self.s.format.clone());
        data.insert("accelerator".into(), self.accel.clone());
        data.insert("base_sha256".into(), self.base_sha256.clone());
        data.insert(
            "base_source".into(),
            self.s
                .base_source
                .clone()
                .unwrap_or_else(|| self.s.base_url.clone()),
        );
        data.insert("virtual_size".into(), vsize.to_string());
        data.insert("qemu_version".into(), self.qemu_version.clone());
        data.insert("vm_name".into(), self.s.vm_name.clone());
        if let Some(k) = &self.host_key {
            data.insert("ssh_host_key".into(), k.clone());
        }
        Ok(Artifact {
            builder_type: "qemu".into(),
            files: vec![target],
            id: String::new(),
            data,
        })
    }
}

fn qemu_version(bin: &str) -> Option<String> {
    let o = Command::new(bin)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
    )
}
