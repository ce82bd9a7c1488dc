//! Test context for kiln's integration tests: temp dirs, the tiny base image, running the real
//! `kiln` binary, reading files back from the image it wrote, and finding qemu processes a test
//! left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

pub struct Ctx {
    pub dir: PathBuf,
    pub base: PathBuf,
    pub work: PathBuf,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny installer CD and its payload, made by scripts/ensure-installer.sh.
pub fn installer_dir() -> PathBuf {
    ensure("ensure-installer.sh")
}

/// The tiny base image, made by scripts/ensure-base.sh (cached by recipe digest).
pub fn base_dir() -> PathBuf {
    ensure("ensure-base.sh")
}

/// Runs `scripts/<script>` (one of the ensure-*.sh scripts that make a test guest once, cached
/// by recipe) and returns the directory it prints.
pub fn ensure(script: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts").join(script))
        .output()
        .unwrap_or_else(|e| panic!("scripts/{script} runs: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} failed (needs: scripts/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl Ctx {
    pub fn new(name: &str) -> Ctx {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kiln-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let work = dir.join("work");
        Ctx {
            base: base_dir(),
            dir,
            work,
        }
    }

    /// Without booting anything (template tests).
    pub fn bare(name: &str) -> Ctx {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kiln-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let work = dir.join("work");
        Ctx {
            base: PathBuf::new(),
            dir,
            work,
        }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(args)
            .current_dir(&self.dir)
            .env("KILN_WORK_DIR", &self.work)
            .env("KILN_STORE", self.dir.join("store"))
            .env_remove("KILN_FAILPOINT")
            .env_remove("PACKER_LOG")
            .env_remove("KILN_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("kiln runs")
    }

    /// A qemu source block for the tiny base with the given extra lines.
    pub fn source(&self, name: &str, extra: &str) -> String {
        let b = self.base.display();
        let defaults = format!(
            r#"source "qemu" "{name}" {{
  iso_url              = "{b}/base.qcow2"
  iso_checksum         = "none"
  disk_image           = true
  accelerator          = "tcg"
  memory               = 256
  kernel               = "{b}/vmlinux"
  initrd               = "{b}/initrd.img"
  kernel_args          = "root=/dev/vda rw console=ttyS0 quiet"
  output_directory     = "out-{name}"
  vm_name              = "disk.qcow2"
  ssh_username         = "root"
  ssh_private_key_file = "{b}/id_ed25519"
  ssh_timeout          = "2m"
  shutdown_command     = "sync; poweroff"
  shutdown_timeout     = "1m"
"#
        );
        // Lines in `extra` replace the default of the same key.
        let keys: Vec<&str> = extra
            .lines()
            .filter_map(|l| l.split('=').next())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        let kept: String = defaults
            .lines()
            .filter(|l| !keys.contains(&l.split('=').next().unwrap_or("").trim()))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{kept}{extra}\n}}\n")
    }

    /// Reads a file from an ext4 image (qcow2 or raw) without booting it.
    pub fn read_from_image(&self, image: &Path, path: &str) -> Option<String> {
        self.debugfs_cat(image, path, false)
    }

    /// Reads a file from the first partition of an MBR-partitioned image (what installers make).
    pub fn read_from_partition(&self, image: &Path, path: &str) -> Option<String> {
        self.debugfs_cat(image, path, true)
    }

    fn debugfs_cat(&self, image: &Path, path: &str, partitioned: bool) -> Option<String> {
        let raw = self
            .dir
            .join(format!("read-{}.raw", N.fetch_add(1, Ordering::SeqCst)));
        let st = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(&raw)
            .status()
            .ok()?;
        assert!(st.success(), "qemu-img convert {}", image.display());
        let target = if partitioned {
            let mbr = std::fs::read(&raw).ok()?;
            assert_eq!(
                &mbr[510..512],
                &[0x55, 0xAA],
                "no MBR on {}",
                image.display()
            );
            let start = u64::from(u32::from_le_bytes([mbr[454], mbr[455], mbr[456], mbr[457]]));
            format!("{}?offset={}", raw.display(), start * 512)
        } else {
            raw.display().to_string()
        };
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&target)
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&raw);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("File not found") || !out.status.success() {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// PIDs of qemu processes that belong to this test (their command line names its dir).
    pub fn qemu_pids(&self) -> Vec<u32> {
        let needle = self.dir.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let c = String::from_utf8_lossy(&cmdline);
            if c.contains("qemu-system") && c.contains(&needle) {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(false);
                if !zombie {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// A qemu wrapper that appends a line to `qemu-starts.log` for every VM started (not for the
    /// accelerator probe) and runs the real qemu.
    pub fn qemu_counter(&self) -> PathBuf {
        let w = self.dir.join("qemu-wrapper");
        let log = self.dir.join("qemu-starts.log");
        std::fs::write(&w, format!("#!/bin/sh\ncase \"$*\" in *isa-debug-exit*|--version) ;; *) echo start >> {} ;; esac\nexec qemu-system-x86_64 \"$@\"\n", log.display())).expect("write wrapper");
        std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod wrapper");
        w
    }

    pub fn qemu_starts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("qemu-starts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Whether the work dir holds anything (every build's scratch must be gone after it).
    pub fn work_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.work)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs skopeo (scripts/setup.sh installs it), asserting success; its stdout.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
