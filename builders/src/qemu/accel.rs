//! Choosing the accelerator: `auto` probes that KVM really runs a guest (a 512-byte boot sector
//! that exits qemu through isa-debug-exit) and falls back to TCG. A /dev/kvm that exists but
//! cannot run guests (no vmx/svm, nested virtualisation off) is common on CI machines.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Result of the probe: Ok(()) when KVM ran the probe guest, else why not.
pub fn kvm_works(qemu: &str, scratch: &Path) -> Result<(), String> {
    static CACHE: OnceLock<Result<(), String>> = OnceLock::new();
    CACHE.get_or_init(|| probe(qemu, scratch)).clone()
}

fn probe(qemu: &str, scratch: &Path) -> Result<(), String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm is missing or not accessible".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Err("the CPU has no vmx/svm flag (no hardware virtualisation here)".into());
    }
    run_probe(qemu, "kvm", scratch)
}

/// Boots a boot sector that writes 0x31 to port 0xf4; qemu then exits with status 99.
pub fn run_probe(qemu: &str, accel: &str, scratch: &Path) -> Result<(), String> {
    let mut sector = vec![0u8; 512];
    // mov al,0x31 ; out 0xf4,al ; hlt ; jmp $-1
    sector[..7].copy_from_slice(&[0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    let img = scratch.join("kvm-probe.img");
    std::fs::write(&img, &sector).map_err(|e| format!("cannot write probe image: {e}"))?;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        accel,
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-m",
        "16",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-drive",
    ])
    .arg(format!("file={},format=raw,if=ide", img.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = kiln_core::process::Guarded::spawn(cmd, format!("{qemu} (accelerator probe)"))
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs(5);
    let r = loop {
        if let Some(st) = child.try_wait() {
            break if st.code() == Some(99) {
                Ok(())
            } else {
                Err(format!("probe guest did not run (qemu exit status {st})"))
            };
        }
        if Instant::now() >= end {
            break Err("probe guest hung for 5s (KVM cannot run guests here)".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&img);
    r
}
