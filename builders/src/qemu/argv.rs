//! The qemu command line, built in the same order every run (Packer builds it from a map, so its
//! order changes between runs). `qemuargs` replaces kiln's defaults for every flag it names, as in
//! Packer; `qemu_extra_args` only appends.

use super::config::Settings;
use kiln_core::placeholders::fill;
use std::collections::BTreeMap;

/// The options come from the settings; the rest is what the launch decided at run time.
pub struct ArgvInput<'a> {
    pub s: &'a Settings,
    pub accel: &'a str,
    /// The `-drive` of the boot disk (the overlay, with its interface, cache and discard).
    pub drive: String,
    /// CD-ROMs (installer ISO, cd_files seed), in order.
    pub cdroms: &'a [String],
    /// The floppy image (floppy_files/dirs/content), if any.
    pub floppy: Option<&'a str>,
    /// The build's copy of the UEFI variables (with efi_boot).
    pub efi_vars: Option<&'a str>,
    /// swtpm's control socket (with vtpm).
    pub tpm_socket: Option<&'a str>,
    /// `-boot` value: `c` for a disk image, `once=d` to start an installer CD once.
    pub boot: &'a str,
    pub netdev: String,
    /// `-vnc` value when someone wants to watch (vnc_bind_address / vnc_port_min / ...).
    pub vnc: Option<String>,
    pub qmp_socket: String,
    /// A second monitor only for watching events (installer reboots).
    pub events_socket: Option<String>,
    pub serial_log: String,
    /// Flags appended after qemu_extra_args (the cloud-init seed's -smbios).
    pub more: &'a [String],
    pub vars: &'a BTreeMap<String, String>,
}

/// Returns the argv after the binary.
pub fn build(i: &ArgvInput<'_>) -> Vec<String> {
    let cfg = &i.s.cfg;
    let mut defaults: Vec<Vec<String>> = Vec::new();
    let mut push = |v: &[&str]| defaults.push(v.iter().map(|s| s.to_string()).collect());
    push(&["-name", &i.s.vm_name]);
    push(&[
        "-machine",
        &format!("type={},accel={}", cfg.machine_type, i.accel),
    ]);
    if let Some(c) = cfg.cpu_model.as_deref() {
        push(&["-cpu", c]);
    } else if i.accel == "kvm" {
        push(&["-cpu", "host"]);
    } else if super::config::target_arch(&cfg.qemu_binary) == "aarch64" {
        // virt's default CPU is a 32-bit cortex-a15: it cannot run an arm64 kernel.
        push(&["-cpu", "max"]);
    }
    push(&["-smp", &i.s.smp]);
    push(&["-m", &format!("{}M", cfg.memory)]);
    if let Some((code, _)) = &i.s.efi {
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={code}"),
        ]);
        // The build's own copy of the variables template (the template is never written).
        if let Some(vars) = i.efi_vars {
            push(&["-drive", &format!("if=pflash,format=raw,file={vars}")]);
        }
    }
    if let Some(f) = cfg.firmware.as_deref() {
        if cfg.use_pflash.0 {
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={f}"),
            ]);
        } else {
            push(&["-bios", f]);
        }
    }
    push(&["-drive", &i.drive]);
    if let Some(sock) = i.tpm_socket {
        let dev = cfg
            .tpm_device_type
            .map_or("tpm-tis", super::config::TpmDevice::as_str);
        push(&["-chardev", &format!("socket,id=kiln-tpm-chr,path={sock}")]);
        push(&["-tpmdev", "emulator,id=kiln-tpm,chardev=kiln-tpm-chr"]);
        push(&["-device", &format!("{dev},tpmdev=kiln-tpm")]);
    }
    if let Some(f) = i.floppy {
        push(&["-drive", &format!("file={f},if=floppy,index=0,format=raw")]);
    }
    use super::config::CdromInterface as Cd;
    let cd = cfg.cdrom_interface;
    if matches!(cd, Cd::Scsi | Cd::VirtioScsi) && !i.cdroms.is_empty() {
        push(&["-device", "virtio-scsi-pci,id=kiln-scsi0"]);
    }
    for (n, iso) in i.cdroms.iter().enumerate() {
        match cd {
            Cd::Ide => push(&[
                "-drive",
                &format!("file={iso},media=cdrom,readonly=on,if=ide,index={n}"),
            ]),
            Cd::Virtio => push(&[
                "-drive",
                &format!("file={iso},media=cdrom,readonly=on,if=virtio"),
            ]),
            Cd::Scsi | Cd::VirtioScsi => {
                push(&[
                    "-drive",
                    &format!("file={iso},media=cdrom,readonly=on,if=none,id=kiln-cd{n}"),
                ]);
                push(&[
                    "-device",
                    &format!("scsi-cd,bus=kiln-scsi0.0,drive=kiln-cd{n}"),
                ]);
            }
        }
    }
    push(&["-netdev", &i.netdev]);
    push(&["-device", &format!("{},netdev=user.0", cfg.net_device)]);
    // Not in Packer's defaults: without an entropy source, SSH servers in small guests wait
    // seconds for randomness at boot.
    push(&["-device", "virtio-rng-pci"]);
    if let Some(k) = cfg.kernel.as_deref() {
        push(&["-kernel", k]);
    }
    if let Some(k) = cfg.initrd.as_deref() {
        push(&["-initrd", k]);
    }
    if let Some(a) = cfg.kernel_args.as_deref() {
        push(&["-append", a]);
    }
    push(&["-boot", i.boot]);
    if let Some(d) = i.s.display.as_deref() {
        push(&["-display", d]);
    }
    if let Some(v) = cfg.vga.as_deref() {
        push(&["-vga", v]);
    }
    if let Some(v) = &i.vnc {
        push(&["-vnc", v]);
    }
    push(&["-serial", &format!("file:{}", i.serial_log)]);

    let user: Vec<Vec<String>> = cfg
        .qemuargs
        .iter()
        .map(|a| {
            a.iter()
                .map(|s| {
                    fill(
                        &s.0.replace("{{ .SSHHostPort }}", "0")
                            .replace("{{.SSHHostPort}}", "0"),
                        i.vars,
                    )
                })
                .collect()
        })
        .collect();
    let overridden: Vec<&str> = user
        .iter()
        .filter_map(|a| a.first().map(String::as_str))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for d in &defaults {
        if !overridden.contains(&d[0].as_str()) {
            out.extend(d.iter().cloned());
        }
    }
    for u in &user {
        out.extend(u.iter().cloned());
    }
    // The monitor is how kiln learns the SSH port and powers the guest down: always present.
    out.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", i.qmp_socket),
    ]);
    if let Some(ev) = &i.events_socket {
        out.extend(["-qmp".to_string(), format!("unix:{ev},server=on,wait=off")]);
    }
    out.extend(cfg.qemu_extra_args.iter().map(|s| fill(s, i.vars)));
    out.extend(i.more.iter().map(|s| fill(s, i.vars)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(qemuargs: &[Vec<String>]) -> Settings {
        use kiln_core::config::{MemoryMib, Text};
        let cfg = super::super::config::QemuConfig {
            iso_url: Some(Text("base.qcow2".into())),
            iso_checksum: Some(Text("none".into())),
            memory: MemoryMib(256),
            qemuargs: qemuargs
                .iter()
                .map(|a| a.iter().map(|s| Text(s.clone())).collect())
                .collect(),
            ..Default::default()
        };
        let ssh = kiln_ssh::options::SshOptions {
            ssh_username: Some(Text("root".into())),
            ..Default::default()
        };
        let c = kiln_template::Component::from_pairs("qemu", &[]);
        let mut s = cfg.resolve("vm", ssh, None, &c).expect("resolves").0;
        s.vm_name = "vm".into();
        s
    }

    fn input<'a>(s: &'a Settings, vars: &'a BTreeMap<String, String>) -> ArgvInput<'a> {
        ArgvInput {
            s,
            accel: "tcg",
            drive: "file=o.qcow2,if=virtio".into(),
            cdroms: &[],
            floppy: None,
            efi_vars: None,
            tpm_socket: None,
            boot: "c",
            netdev: "user,id=user.0,hostfwd=tcp:127.0.0.1:0-:22".into(),
            vnc: None,
            qmp_socket: "/w/qmp.sock".into(),
            events_socket: None,
            serial_log: "/w/console.log".into(),
            more: &[],
            vars,
        }
    }

    #[test]
    fn argv_is_stable_and_qemuargs_replace_defaults() {
        let vars = BTreeMap::new();
        let plain = settings(&[]);
        let a = build(&input(&plain, &vars));
        assert_eq!(a, build(&input(&plain, &vars)));
        assert!(a.join(" ").contains("-smp 1 -m 256M -drive"), "{a:?}");
        assert!(a.join(" ").contains("-display none"), "{a:?}");
        // use_default_display passes no -display; vga adds -vga.
        let mut s = settings(&[]);
        s.display = None;
        s.cfg.vga = Some(kiln_core::config::Text("std".into()));
        let j = build(&input(&s, &vars)).join(" ");
        assert!(!j.contains("-display"), "{j}");
        assert!(j.contains("-vga std"), "{j}");
        // vtpm: swtpm's socket as an emulator tpmdev behind tpm-tis (or tpm_device_type).
        let mut tpm = settings(&[]);
        let mut inp = input(&tpm, &vars);
        inp.tpm_socket = Some("/w/swtpm.sock");
        let j = build(&inp).join(" ");
        assert!(j.contains("-chardev socket,id=kiln-tpm-chr,path=/w/swtpm.sock -tpmdev emulator,id=kiln-tpm,chardev=kiln-tpm-chr -device tpm-tis,tpmdev=kiln-tpm"), "{j}");
        tpm.cfg.tpm_device_type = Some(super::super::config::TpmDevice::TpmCrb);
        let mut inp = input(&tpm, &vars);
        inp.tpm_socket = Some("/w/swtpm.sock");
        assert!(build(&inp)
            .join(" ")
            .contains("-device tpm-crb,tpmdev=kiln-tpm"));
        // firmware: -bios, or a read-only pflash with use_pflash.
        let mut fw = settings(&[]);
        fw.cfg.firmware = Some(kiln_core::config::Text("/fw/bios.bin".into()));
        let j = build(&input(&fw, &vars)).join(" ");
        assert!(j.contains("-bios /fw/bios.bin"), "{j}");
        fw.cfg.use_pflash = kiln_core::config::Flag(true);
        let j = build(&input(&fw, &vars)).join(" ");
        assert!(
            j.contains("-drive if=pflash,format=raw,readonly=on,file=/fw/bios.bin"),
            "{j}"
        );
        assert!(!j.contains("-bios"), "{j}");
        // CD-ROMs: IDE by default; a virtio-scsi controller and scsi-cd devices on request.
        let cds = ["/w/a.iso".to_string(), "/w/b.iso".to_string()];
        let plain = settings(&[]);
        let mut inp = input(&plain, &vars);
        inp.cdroms = &cds;
        let j = build(&inp).join(" ");
        assert!(
            j.contains("file=/w/b.iso,media=cdrom,readonly=on,if=ide,index=1"),
            "{j}"
        );
        let mut scsi = settings(&[]);
        scsi.cfg.cdrom_interface = super::super::config::CdromInterface::VirtioScsi;
        let mut inp = input(&scsi, &vars);
        inp.cdroms = &cds;
        let j = build(&inp).join(" ");
        assert!(j.contains("-device virtio-scsi-pci,id=kiln-scsi0"), "{j}");
        assert!(j.contains("file=/w/b.iso,media=cdrom,readonly=on,if=none,id=kiln-cd1 -device scsi-cd,bus=kiln-scsi0.0,drive=kiln-cd1"), "{j}");
        assert_eq!(&a[..4], &["-name", "vm", "-machine", "type=pc,accel=tcg"]);
        let user = vec![
            vec![
                "-netdev".to_string(),
                "user,id=n,hostfwd=tcp::{{ .SSHHostPort }}-:22".to_string(),
            ],
            vec!["-device".to_string(), "e1000,netdev=n".to_string()],
        ];
        let with_user = settings(&user);
        let b = build(&input(&with_user, &vars));
        let joined = b.join(" ");
        assert!(
            joined.contains("-netdev user,id=n,hostfwd=tcp::0-:22"),
            "{joined}"
        );
        assert!(!joined.contains("virtio-net,netdev=user.0"), "{joined}");
        assert!(
            !joined.contains("virtio-rng-pci"),
            "-device defaults are replaced: {joined}"
        );
        assert!(
            joined.ends_with("-qmp unix:/w/qmp.sock,server=on,wait=off"),
            "{joined}"
        );
    }
}
