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

pub use config::ResolvedBase;
use config::{decode_all, Accelerator, Settings};
use kiln_core::cancel::HookGuard;
use kiln_core::plugins::BuildContext;
use kiln_core::process::Guarded;
use kiln_core::workdir::WorkDir;
use kiln_core::{
    BaseRef, BuildMeta, Builder, Built, Cancel, Communicator, Emitter, Error, Machine, Output,
    Publish, Result,
};
use kiln_ssh::SshComm;
use kiln_template::{Component, Diagnostics};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use accel::run_probe;

pub struct QemuBuilder {
    s: Arc<Settings>,
    /// sha256 of the base image, computed once for the cache key and reused by launch.
    base_sha256: std::sync::OnceLock<String>,
    /// `qemu --version`, read once in preflight for the manifest.
    qemu_version: std::sync::OnceLock<String>,
    /// With iso_skip_cache: where this build's download lives (removed with the builder).
    private_downloads: std::sync::OnceLock<std::result::Result<WorkDir, String>>,
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

/// The table's constructor: decodes and checks a `qemu` source.
pub fn make(c: &Component, cx: &BuildContext<'_>) -> kiln_core::plugins::Made<dyn Builder> {
    let (b, w) = from_component(cx.build, c, cx.base)?;
    Ok((Box::new(b), w))
}

/// Decodes and checks a `qemu` source. `base` is the `oci://` base kiln pulled for it, if any.
/// Returns the builder and its warnings.
pub fn from_component(
    build: &str,
    c: &Component,
    base: Option<&ResolvedBase>,
) -> std::result::Result<(QemuBuilder, Diagnostics), Diagnostics> {
    let (q, ssh, mut warnings) = decode_all(c)?;
    let (s, w) = match q.resolve(build, ssh, base, c) {
        Ok(x) => x,
        Err(mut e) => {
            e.extend(warnings);
            return Err(e);
        }
    };
    warnings.extend(w);
    Ok((
        QemuBuilder {
            s: Arc::new(s),
            base_sha256: std::sync::OnceLock::new(),
            qemu_version: std::sync::OnceLock::new(),
            private_downloads: std::sync::OnceLock::new(),
        },
        warnings,
    ))
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
        let arch = config::target_arch(&s.cfg.qemu_binary.0);
        let foreign = !config::host_runs(arch);
        match s.cfg.accelerator {
            Accelerator::Auto if foreign => {
                em.say(format!(
                    "accelerator: tcg (auto: the guest is {arch} and this host {}: KVM cannot run it)",
                    std::env::consts::ARCH
                ));
                Ok("tcg".into())
            }
            Accelerator::Kvm if foreign => Err(Error::failed(format!(
                "accelerator = \"kvm\" but the guest is {arch} and this host {}: KVM runs only guests of the host's architecture — use accelerator = \"tcg\" or \"auto\"",
                std::env::consts::ARCH
            ))),
            Accelerator::Auto => match accel::kvm_works(&s.cfg.qemu_binary.0, scratch) {
                Ok(()) => {
                    em.say("accelerator: kvm (auto: KVM runs guests here)");
                    Ok("kvm".into())
                }
                Err(why) => {
                    em.say(format!("accelerator: tcg (auto: {why}; software emulation is slower)"));
                    Ok("tcg".into())
                }
            },
            Accelerator::Kvm => match accel::kvm_works(&s.cfg.qemu_binary.0, scratch) {
                Ok(()) => Ok("kvm".into()),
                Err(why) => Err(Error::failed(format!("accelerator = \"kvm\" but KVM cannot run guests here: {why} — use accelerator = \"tcg\" or \"auto\""))),
            },
            Accelerator::None => Ok("tcg".into()),
            other => Ok(other.to_string()),
        }
    }
}

impl QemuBuilder {
    /// A remote base: at iso_target_path when it is there already; else downloaded (into the
    /// cache, or for this build only with iso_skip_cache) and saved at iso_target_path.
    fn download(&self, url: &str, em: Option<&Emitter>, cancel: &Cancel) -> Result<PathBuf> {
        let cfg = &self.s.cfg;
        let target = cfg.iso_target_path.as_ref().map(|t| PathBuf::from(&t.0));
        if let Some(t) = target.as_ref().filter(|t| t.is_file()) {
            return Ok(t.clone());
        }
        let place = download::Placement {
            dir: if cfg.iso_skip_cache.0 {
                let dir = self.private_downloads.get_or_init(|| {
                    WorkDir::create(
                        &work_base(),
                        &format!("download-{}", sanitize(&self.s.build)),
                    )
                    .map_err(|e| e.to_string())
                });
                Some(
                    dir.as_ref()
                        .map_err(|e| Error::failed(e.clone()))?
                        .path()
                        .to_path_buf(),
                )
            } else {
                None
            },
            extension: cfg.iso_target_extension.as_ref().map(|t| t.0.clone()),
        };
        let got = download::fetch_to(url, &self.s.checksum, &place, em, cancel)?;
        let Some(t) = target else {
            return Ok(got);
        };
        if let Some(parent) = t.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        let tmp = t.with_extension(format!("kiln-part-{}", std::process::id()));
        let _cleanup = kiln_core::workdir::RemoveOnDrop::new(tmp.clone());
        kiln_core::workdir::copy_file(&got, &tmp)?;
        std::fs::rename(&tmp, &t)
            .map_err(|e| Error::io(format!("cannot write {} (iso_target_path)", t.display()), e))?;
        if let Some(em) = em {
            em.say(format!(
                "saved the base at {} (iso_target_path)",
                t.display()
            ));
        }
        Ok(t)
    }

    /// The base image on disk: a local path, or the download cache's copy of a remote URL.
    /// With iso_urls, each candidate in order until one works; the error lists every failure.
    fn base_path(&self, em: Option<&Emitter>, cancel: &Cancel) -> Result<PathBuf> {
        let one = |url: &str| {
            if download::is_remote(url) {
                self.download(url, em, cancel)
            } else {
                let p = image::resolve_url(url)?;
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::failed(format!("{} does not exist", p.display())))
                }
            }
        };
        if self.s.base_urls.len() <= 1 {
            // One base: preflight has named a missing local file already.
            return if download::is_remote(&self.s.base_url) {
                self.download(&self.s.base_url, em, cancel)
            } else {
                image::resolve_url(&self.s.base_url)
            };
        }
        let mut failures = Vec::new();
        for url in std::iter::once(&self.s.base_url)
            .chain(self.s.base_urls.iter().filter(|u| **u != self.s.base_url))
        {
            match one(url) {
                Ok(p) => {
                    if let (Some(em), false) = (em, failures.is_empty()) {
                        em.warn(format!("iso_urls: using {url} ({})", failures.join("; ")));
                    }
                    return Ok(p);
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        Err(Error::failed(format!(
            "none of iso_urls could be fetched:\n  {}",
            failures.join("\n  ")
        )))
    }
}

impl Builder for QemuBuilder {
    fn kind(&self) -> &str {
        "qemu"
    }

    fn publish(&self) -> Option<Publish> {
        Some(Publish {
            dir: self.s.output_directory.clone(),
            file_name: self.s.vm_name.clone(),
        })
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
        // The options as resolved, each as its field declares (config.rs): the values that can
        // change the disk, files by content.
        let options = serde_json::to_value(&s.cfg).map_err(|e| Error::other("cache key", e))?;
        let communicator =
            serde_json::to_value(&s.ssh_opts).map_err(|e| Error::other("cache key", e))?;
        let mut key = serde_json::json!({
            "base": format!("sha256:{digest}"),
            "disk_size": s.disk_size,
            "options": options,
            "communicator": communicator,
        });
        // The guest's architecture (qemu_binary itself is not in the key: its path may differ
        // between machines). Absent for x86_64, so existing keys stay as they were.
        let arch = config::target_arch(&s.cfg.qemu_binary.0);
        if arch != "x86_64" {
            key["arch"] = serde_json::json!(arch);
        }
        Ok(key)
    }

    fn preflight(&self, force: bool) -> Result<()> {
        let s = &self.s;
        if (!s.cfg.cd_files.is_empty() || !s.cfg.cd_content.is_empty())
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
        let c = &s.cfg;
        let wants_floppy =
            !c.floppy_files.is_empty() || !c.floppy_dirs.is_empty() || !c.floppy_content.is_empty();
        if wants_floppy {
            for tool in ["mkfs.fat", "mcopy"] {
                let found = Command::new(tool)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok();
                if !found {
                    return Err(Error::failed(format!(
                        "floppy_files/floppy_dirs/floppy_content need {tool}: apt-get install mtools dosfstools"
                    )));
                }
            }
        }
        if c.vtpm.0
            && Command::new("swtpm")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        {
            return Err(Error::failed("vtpm needs swtpm: apt-get install swtpm"));
        }
        let _ = force; // the engine decides about output_directory (a cache hit may reuse it)
        let local_missing = s.base_urls.iter().all(|u| {
            !download::is_remote(u) && image::resolve_url(u).map_or(true, |p| !p.is_file())
        });
        if local_missing {
            let names: Vec<String> = s
                .base_urls
                .iter()
                .map(|u| {
                    image::resolve_url(u).map_or_else(|_| u.clone(), |p| p.display().to_string())
                })
                .collect();
            return Err(Error::failed(format!(
                "base image {} (iso_url{}) does not exist",
                names.join(", "),
                if names.len() > 1 { "s" } else { "" }
            )));
        }
        if let Some(dir) = s.cfg.http_directory.as_ref().map(|d| PathBuf::from(&d.0)) {
            if !dir.is_dir() {
                return Err(Error::failed(format!(
                    "http_directory {} is not a directory: create it, or remove http_directory",
                    dir.display()
                )));
            }
        }
        for (what, p) in [("kernel", &s.cfg.kernel), ("initrd", &s.cfg.initrd)] {
            if let Some(p) = p {
                if !Path::new(&p.0).is_file() {
                    return Err(Error::failed(format!("{what} {p} does not exist")));
                }
            }
        }
        match qemu_version(&s.cfg.qemu_binary.0) {
            Some(v) => {
                let _ = self.qemu_version.set(v);
            }
            None => {
                return Err(Error::failed(format!(
                    "{} is not installed: apt-get install {} qemu-utils",
                    s.cfg.qemu_binary.0,
                    config::qemu_package(config::target_arch(&s.cfg.qemu_binary.0))
                )))
            }
        }
        Ok(())
    }

    /// Launch in steps, each returning what the next needs; whatever fails, the values built so
    /// far drop in reverse order (QMP, cancel hook, qemu, HTTP server, work dir).
    fn launch(&self, em: &Emitter, cancel: &Cancel) -> Result<Box<dyn Machine>> {
        let s = &self.s;
        let work = WorkDir::create(&work_base(), &format!("build-{}", sanitize(&s.build)))?;
        let wd = work.path().to_path_buf();
        let disks = self.prepare_disks(em, cancel, &wd)?;
        let served = self.serve(em, &wd)?;
        let accel = self.choose_accel(em, &wd)?;
        cancel.check()?;
        let mut vars = BTreeMap::new();
        vars.insert("Name".to_string(), s.vm_name.clone());
        vars.insert(
            "OutputDir".to_string(),
            s.output_directory.display().to_string(),
        );
        vars.insert("HTTPIP".to_string(), "10.0.2.2".to_string());
        if let Some(h) = &served.http {
            vars.insert("HTTPPort".to_string(), h.port.to_string());
            vars.insert("HTTPAddr".to_string(), format!("10.0.2.2:{}", h.port));
        }
        if let Some((_, public)) = &served.temp_key {
            vars.insert("SSHPublicKey".to_string(), public.clone());
        }
        let mut run = self.start_qemu(em, cancel, &wd, &disks, &served, accel, &vars)?;
        self.boot_command(em, cancel, &mut run, &vars)?;
        let comm = self.connect(em, cancel, &mut run, &served, &mut vars)?;
        Ok(Box::new(QemuMachine {
            host_key: comm.as_ref().and_then(|c| c.host_key().map(str::to_string)),
            comm,
            qmp: Some(run.qmp),
            _hook: run.hook,
            qemu: Some(run.qemu),
            _swtpm: run.swtpm,
            _http: served.http,
            vars,
            s: self.s.clone(),
            overlay: disks.overlay,
            console: run.console,
            accel: run.accel,
            base_sha256: disks.base_sha256,
            virtual_size: disks.virtual_size,
            temp_key_comment: served.temp_key.as_ref().map(|_| temp_key_comment(s)),
            qemu_version: self.qemu_version.get().cloned().unwrap_or_default(),
            work,
        }))
    }
}

/// The disks of a launch: the verified base under an overlay (or a blank disk for an
/// installer) and the CD-ROMs.
struct Disks {
    overlay: PathBuf,
    cdroms: Vec<String>,
    floppy: Option<String>,
    /// The build's copy of the UEFI variables template.
    efi_vars: Option<String>,
    virtual_size: u64,
    base_sha256: String,
}

/// What the guest fetches over HTTP, and the temporary key pair offered there.
struct Served {
    http: Option<http::HttpServer>,
    /// (private key path, public key line).
    temp_key: Option<(PathBuf, String)>,
}

/// A started qemu. Fields drop in order: QMP, the cancel hook, then qemu (killed, reaped).
struct Running {
    qmp: qmp::Qmp,
    hook: HookGuard,
    qemu: Guarded,
    /// The emulated TPM (vtpm): stopped after qemu.
    swtpm: Option<Guarded>,
    pid: u32,
    started: Instant,
    accel: String,
    console: PathBuf,
    stderr_path: PathBuf,
    events_sock: PathBuf,
}

impl QemuBuilder {
    fn prepare_disks(&self, em: &Emitter, cancel: &Cancel, wd: &Path) -> Result<Disks> {
        let s = &self.s;
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
        let virtual_size = if s.cfg.disk_image.0 {
            let info = image::info(&base)?;
            let size = s.disk_size.filter(|sz| *sz > info.virtual_size);
            if let Some(sz) = s.disk_size {
                if sz < info.virtual_size {
                    em.warn(format!("disk_size ({sz} bytes) is smaller than the base image ({} bytes); keeping the base size", info.virtual_size));
                }
            }
            image::create_overlay(
                &base,
                &info.format,
                &overlay,
                size,
                &config::QemuImgArgs::of(&s.cfg.qemu_img_args.create),
            )?;
            size.unwrap_or(info.virtual_size)
        } else {
            // An installer: the ISO as a CD-ROM booted once, a blank disk to install onto.
            let size = s.disk_size.unwrap_or(40960 << 20);
            image::create_blank(
                &overlay,
                size,
                &config::QemuImgArgs::of(&s.cfg.qemu_img_args.create),
            )?;
            cdroms.push(base.display().to_string());
            size
        };
        if !s.cfg.cd_files.is_empty() || !s.cfg.cd_content.is_empty() {
            let iso = wd.join("cd.iso");
            media::make_iso(
                &wd.join("cd"),
                &iso,
                s.cfg.cd_label.as_deref().unwrap_or("cidata"),
                &s.cfg
                    .cd_files
                    .iter()
                    .map(|t| PathBuf::from(&t.0))
                    .collect::<Vec<_>>(),
                &s.cfg
                    .cd_content
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            )?;
            cdroms.push(iso.display().to_string());
        }
        let c = &s.cfg;
        let floppy =
            if c.floppy_files.is_empty() && c.floppy_dirs.is_empty() && c.floppy_content.is_empty()
            {
                None
            } else {
                let img = wd.join("floppy.img");
                let paths = |v: &[kiln_core::config::Text]| {
                    v.iter().map(|t| PathBuf::from(&t.0)).collect::<Vec<_>>()
                };
                media::make_floppy(
                    &wd.join("floppy"),
                    &img,
                    c.floppy_label.as_deref().unwrap_or("packer"),
                    &paths(&c.floppy_files),
                    &paths(&c.floppy_dirs),
                    &c.floppy_content
                        .iter()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect(),
                )?;
                Some(img.display().to_string())
            };
        let efi_vars = match &s.efi {
            Some((_, template)) => {
                let copy = wd.join("efivars.fd");
                std::fs::copy(template, &copy).map_err(|e| {
                    Error::io(format!("cannot copy the UEFI variables {template}"), e)
                })?;
                std::fs::set_permissions(
                    &copy,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
                .map_err(|e| Error::io("cannot make the UEFI variables writable", e))?;
                Some(copy.display().to_string())
            }
            None => None,
        };
        Ok(Disks {
            overlay,
            cdroms,
            floppy,
            efi_vars,
            virtual_size,
            base_sha256,
        })
    }

    fn serve(&self, em: &Emitter, wd: &Path) -> Result<Served> {
        let s = &self.s;
        let mut http_content: BTreeMap<String, String> = s
            .cfg
            .http_content
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let temp_key = match &s.comm.temp_key {
            Some((kind, bits)) => {
                let k = make_temp_key(wd, kind.as_str(), *bits, &temp_key_comment(s))?;
                let user = s.comm.ssh.as_ref().map_or("root", |c| c.user.as_str());
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
        let http = if s.cfg.http_directory.is_some() || !http_content.is_empty() {
            let h = http::HttpServer::start(
                &s.cfg.http_bind_address.0,
                s.cfg.http_port_min.0,
                s.cfg.http_port_max.0,
                s.cfg.http_directory.as_ref().map(|d| PathBuf::from(&d.0)),
                http_content,
                em.clone(),
            )?;
            em.say(format!(
                "serving HTTP for the guest on {}:{} (guest: http://10.0.2.2:{})",
                s.cfg.http_bind_address.0, h.port, h.port
            ));
            Some(h)
        } else {
            None
        };
        Ok(Served { http, temp_key })
    }

    /// The argv (argv.rs), qemu spawned as a guarded child with a cancel hook, QMP connected,
    /// the VNC password set.
    #[allow(clippy::too_many_arguments)]
    fn start_qemu(
        &self,
        em: &Emitter,
        cancel: &Cancel,
        wd: &Path,
        disks: &Disks,
        served: &Served,
        accel: String,
        vars: &BTreeMap<String, String>,
    ) -> Result<Running> {
        let s = &self.s;
        let guest_port = s.comm.ssh.as_ref().map_or(22, |c| c.port);
        let console = wd.join("console.log");
        let qmp_sock = wd.join("qmp.sock");
        let events_sock = wd.join("events.sock");
        let mut drive = format!(
            "file={},if={},cache={},discard={},format=qcow2",
            disks.overlay.display(),
            s.cfg.disk_interface,
            s.cfg.disk_cache,
            s.cfg.disk_discard
        );
        // `off` is qemu's default and is not passed (as Packer, for older qemu).
        if let Some(z) = s
            .cfg
            .disk_detect_zeroes
            .filter(|z| *z != config::DetectZeroes::Off)
        {
            drive.push_str(&format!(",detect-zeroes={z}"));
        }
        let vnc = match &s.vnc {
            Some((bind, min, max, pw)) => {
                let port = (*min..=(*max).max(*min))
                    .find(|p| *p >= 5900 && std::net::TcpListener::bind((bind.as_str(), *p)).is_ok())
                    .ok_or_else(|| Error::failed(format!("no free VNC port on {bind} between {min} and {max} (vnc_port_min/vnc_port_max; VNC ports start at 5900)")))?;
                Some((bind.clone(), port, *pw))
            }
            None => None,
        };
        // vtpm: swtpm serves the TPM on a socket in the work dir; it is a guarded child, so it
        // dies with kiln like qemu.
        let tpm_sock = wd.join("swtpm.sock");
        let swtpm = if s.cfg.vtpm.0 {
            let state = wd.join("tpm");
            std::fs::create_dir_all(&state)
                .map_err(|e| Error::io("cannot create the TPM state dir", e))?;
            let mut cmd = Command::new("swtpm");
            cmd.arg("socket")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", tpm_sock.display()))
                .arg("--log")
                .arg(format!("file={}", wd.join("swtpm.log").display()))
                .arg("--terminate")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if !s.cfg.use_tpm1.0 {
                cmd.arg("--tpm2");
            }
            let mut g = Guarded::spawn(cmd, "swtpm")?;
            let end = Instant::now() + Duration::from_secs(10);
            while !tpm_sock.exists() {
                if g.try_wait().is_some() || Instant::now() >= end {
                    return Err(Error::failed(format!(
                        "swtpm did not start: {}",
                        tail(&wd.join("swtpm.log"), 5)
                    )));
                }
                cancel.sleep(Duration::from_millis(20))?;
            }
            em.say("started swtpm (vtpm)");
            Some(g)
        } else {
            None
        };
        let mut more: Vec<String> = Vec::new();
        // The SSH forward: QEMU picks the port (read back over QMP), or kiln picks one in
        // host_port_min..=host_port_max, or none with skip_nat_mapping.
        let netdev = if s.cfg.skip_nat_mapping.0 || s.comm.ssh.is_none() {
            "user,id=user.0".to_string()
        } else {
            let host_port = match s.host_ports {
                None => 0,
                Some((lo, hi)) => (lo..=hi.max(lo))
                    .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
                    .ok_or_else(|| Error::failed(format!("no free port on 127.0.0.1 between {lo} and {hi} (host_port_min/host_port_max)")))?,
            };
            format!("user,id=user.0,hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}")
        };
        if let (Some(_), Some(h)) = (&served.temp_key, &served.http) {
            // Where cloud-init's NoCloud datasource finds the seed.
            more.extend([
                "-smbios".to_string(),
                format!("type=1,serial=ds=nocloud-net;s=http://10.0.2.2:{}/", h.port),
            ]);
        }
        let args = argv::build(&argv::ArgvInput {
            s,
            accel: &accel,
            drive,
            cdroms: &disks.cdroms,
            floppy: disks.floppy.as_deref(),
            efi_vars: disks.efi_vars.as_deref(),
            tpm_socket: swtpm
                .as_ref()
                .map(|_| tpm_sock.to_str().unwrap_or_default()),
            boot: if s.cfg.disk_image.0 { "c" } else { "once=d" },
            netdev,
            vnc: vnc.as_ref().map(|(b, p, pw)| {
                format!("{b}:{}{}", p - 5900, if *pw { ",password=on" } else { "" })
            }),
            qmp_socket: qmp_sock.display().to_string(),
            events_socket: (!s.cfg.disk_image.0).then(|| events_sock.display().to_string()),
            serial_log: console.display().to_string(),
            more: &more,
            vars,
        });
        em.debug(format!(
            "qemu command: {} {}",
            s.cfg.qemu_binary.0,
            args.join(" ")
        ));
        let stderr_path = wd.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| Error::io("cannot create qemu's log", e))?;
        let mut cmd = Command::new(&s.cfg.qemu_binary.0);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let mut qemu = Guarded::spawn(cmd, &s.cfg.qemu_binary.0)?;
        let pid = qemu.id();
        let hook = cancel.on_cancel(move || {
            // SAFETY: plain kill(2) of our own child; the guard reaps the process later.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        });
        em.phase("boot");
        em.say(format!("started qemu (pid {pid}, accelerator {accel})"));
        let mut qmp =
            match qmp::Qmp::connect(&qmp_sock, Duration::from_secs(15), &mut || running(pid)) {
                Ok(q) => q,
                Err(e) => {
                    cancel.check()?;
                    let st = qemu
                        .try_wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "still running".into());
                    return Err(Error::failed(format!(
                        "{e}; qemu exited ({st}): {}",
                        tail(&stderr_path, 10)
                    )));
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
        Ok(Running {
            qmp,
            hook,
            qemu,
            swtpm,
            pid,
            started,
            accel,
            console,
            stderr_path,
            events_sock,
        })
    }

    /// boot_wait, then boot_command typed over QMP.
    fn boot_command(
        &self,
        em: &Emitter,
        cancel: &Cancel,
        run: &mut Running,
        vars: &BTreeMap<String, String>,
    ) -> Result<()> {
        let s = &self.s;
        if s.boot.is_empty() {
            return Ok(());
        }
        let wait = s
            .cfg
            .boot_wait
            .map(Duration::from)
            .unwrap_or(Duration::from_secs(10));
        em.say(format!(
            "waiting {wait:?} (boot_wait), then typing the boot command"
        ));
        cancel.sleep(wait)?;
        em.phase("boot-command");
        let pid = run.pid;
        type_boot_command(
            &mut run.qmp,
            &s.boot,
            vars,
            s.cfg.boot_key_interval.0,
            em,
            cancel,
            &mut || running(pid),
        )
    }

    /// Waits for SSH on the forwarded port (read over QMP) while timing an installer's reboot.
    fn connect(
        &self,
        em: &Emitter,
        cancel: &Cancel,
        run: &mut Running,
        served: &Served,
        vars: &mut BTreeMap<String, String>,
    ) -> Result<Option<SshComm>> {
        let s = &self.s;
        // An installer runs, then reboots into the installed disk: time the two apart.
        let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = (!s.cfg.disk_image.0).then(|| {
            em.phase("install");
            let em2 = em.clone();
            qmp::watch_reset(
                run.events_sock.clone(),
                watch_stop.clone(),
                Box::new(move || em2.phase("reboot")),
            )
        });
        let Some(cfg) = &s.comm.ssh else {
            return Ok(None);
        };
        let guest_port = cfg.port;
        let port = if s.cfg.skip_nat_mapping.0 {
            // No forward of kiln's: the guest is reached at ssh_host:ssh_port as given.
            guest_port
        } else {
            let usernet = run.qmp.hmp("info usernet")?;
            qmp::parse_usernet_port(&usernet, guest_port).ok_or_else(|| {
                Error::failed(format!("no host port forwards to guest port {guest_port}: if qemuargs replaces -netdev, include hostfwd=tcp:127.0.0.1:{{{{ .SSHHostPort }}}}-:{guest_port}, or set skip_nat_mapping = true and ssh_port to the host port"))
            })?
        };
        vars.insert("SSHHostPort".to_string(), port.to_string());
        vars.insert("SSHHost".to_string(), cfg.host.clone());
        em.say(format!(
            "waiting for SSH on {}:{port} (guest port {guest_port}, timeout {:?})",
            cfg.host, cfg.timeout
        ));
        let mut c = cfg.clone();
        c.port = port;
        if let Some((path, _)) = &served.temp_key {
            c.private_key_file = Some(path.clone());
        }
        let pid = run.pid;
        let stderr2 = run.stderr_path.clone();
        let alive: kiln_ssh::Liveness = Box::new(move || {
            (!running(pid)).then(|| format!("qemu exited: {}", tail(&stderr2, 5)))
        });
        let comm = match SshComm::connect(c, em.clone(), cancel.clone(), alive) {
            Ok(sc) => {
                em.say(format!(
                    "connected to the guest over SSH after {:.1}s",
                    run.started.elapsed().as_secs_f64()
                ));
                sc
            }
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(e) => {
                return Err(Error::failed(format!(
                    "{e}\nlast lines of the guest console ({}):\n{}",
                    run.console.display(),
                    indent(&tail(&run.console, 20))
                )));
            }
        };
        watch_stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        if let Some(p) = s
            .cfg
            .pause_before_connecting
            .map(Duration::from)
            .or(s.comm.pause_before)
        {
            cancel.sleep(p)?;
        }
        Ok(Some(comm))
    }
}

/// The temporary key's comment: temporary_key_pair_name, or `kiln-temporary-BUILD`.
fn temp_key_comment(s: &Settings) -> String {
    s.comm
        .temp_key_name
        .clone()
        .unwrap_or_else(|| format!("kiln-temporary-{}", sanitize(&s.build)))
}

/// Makes a key pair with ssh-keygen in the work dir; (private key path, public key line).
fn make_temp_key(
    dir: &Path,
    kind: &str,
    bits: Option<u64>,
    comment: &str,
) -> Result<(PathBuf, String)> {
    let path = dir.join("temporary_key");
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"])
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
    commands: &[(String, Option<String>)],
    vars: &BTreeMap<String, String>,
    interval: Duration,
    em: &Emitter,
    cancel: &Cancel,
    alive: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let mut held: Vec<String> = Vec::new();
    for (n, (raw, what)) in commands.iter().enumerate() {
        if let Some(w) = what {
            em.say(format!("boot step {}/{}: {w}", n + 1, commands.len()));
        }
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
    _swtpm: Option<Guarded>,
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
        match &self.s.comm.ssh {
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

    fn shutdown(mut self: Box<Self>, em: &Emitter, cancel: &Cancel, dest: &Path) -> Result<Built> {
        let t0 = Instant::now();
        if let (true, Some(comment), Some(comm)) = (
            self.s.comm.clear_authorized_keys,
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
        let cmd = self.s.cfg.shutdown_command.as_ref().map(|t| t.0.clone());
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
        if !self.wait_exit(self.s.cfg.shutdown_timeout.0, cancel)? {
            if let Some(q) = self.qemu.as_mut() {
                q.kill();
            }
            return Err(Error::failed(format!(
                "the guest did not power off within shutdown_timeout ({:?}); it was stopped forcibly, and a disk from a forced stop is not trusted, so no image was written",
                self.s.cfg.shutdown_timeout.0
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
        if self.s.cfg.use_backing_file.0 {
            em.warn("use_backing_file = true: the image refers to its base image by path and is not self-contained");
            std::fs::copy(&self.overlay, &target)
                .map_err(|e| Error::io("cannot copy the overlay", e))?;
        } else {
            image::convert(
                &self.overlay,
                &target,
                self.s.cfg.format.as_str(),
                self.s.cfg.disk_compression.0,
                &config::QemuImgArgs::of(&self.s.cfg.qemu_img_args.convert),
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
            self.s.cfg.format,
            t1.elapsed().as_secs_f64()
        ));
        Ok(Built {
            output: Output::Disk {
                path: target,
                format: self.s.cfg.format.to_string(),
                virtual_size: vsize,
            },
            meta: BuildMeta {
                base: Some(BaseRef {
                    source: self
                        .s
                        .base_source
                        .clone()
                        .unwrap_or_else(|| self.s.base_url.clone()),
                    digest: format!("sha256:{}", self.base_sha256),
                }),
                accelerator: Some(self.accel.clone()),
                qemu_version: Some(self.qemu_version.clone()),
                ssh_host_key: self.host_key.clone(),
            },
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
