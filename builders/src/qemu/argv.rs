//! The qemu command line, built in the same order every run (Packer builds it from a map, so its
//! order changes between runs). `qemuargs` replaces kiln's defaults for every flag it names, as in
//! Packer; `qemu_extra_args` only appends.

use kiln_core::placeholders::fill;
use std::collections::BTreeMap;

pub struct ArgvInput<'a> {
    pub vm_name: &'a str,
    pub machine_type: &'a str,
    pub accel: &'a str,
    pub cpu_model: Option<&'a str>,
    pub cpus: u64,
    pub memory: u64,
    pub drive: String,
    /// CD-ROMs (installer ISO, cd_files seed), in order.
    pub cdroms: Vec<String>,
    /// `-boot` value: `c` for a disk image, `once=d` to start an installer CD once.
    pub boot: &'a str,
    pub netdev: String,
    pub net_device: String,
    pub kernel: Option<&'a str>,
    pub initrd: Option<&'a str>,
    pub kernel_args: Option<&'a str>,
    pub display: Option<&'a str>,
    /// `-vnc` value when someone wants to watch (vnc_bind_address / vnc_port_min / ...).
    pub vnc: Option<String>,
    pub efi: Option<(String, String)>,
    pub qmp_socket: String,
    /// A second monitor only for watching events (installer reboots).
    pub events_socket: Option<String>,
    pub serial_log: String,
    pub qemuargs: &'a [Vec<String>],
    pub extra: &'a [String],
    pub vars: &'a BTreeMap<String, String>,
}

/// Returns the argv after the binary.
pub fn build(i: &ArgvInput<'_>) -> Vec<String> {
    let mut defaults: Vec<Vec<String>> = Vec::new();
    let mut push = |v: &[&str]| defaults.push(v.iter().map(|s| s.to_string()).collect());
    push(&["-name", i.vm_name]);
    push(&[
        "-machine",
        &format!("type={},accel={}", i.machine_type, i.accel),
    ]);
    if let Some(c) = i.cpu_model {
        push(&["-cpu", c]);
    } else if i.accel == "kvm" {
        push(&["-cpu", "host"]);
    }
    push(&["-smp", &i.cpus.to_string()]);
    push(&["-m", &format!("{}M", i.memory)]);
    if let Some((code, vars)) = &i.efi {
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={code}"),
        ]);
        push(&["-drive", &format!("if=pflash,format=raw,file={vars}")]);
    }
    push(&["-drive", &i.drive]);
    for (n, iso) in i.cdroms.iter().enumerate() {
        push(&[
            "-drive",
            &format!("file={iso},media=cdrom,readonly=on,if=ide,index={n}"),
        ]);
    }
    push(&["-netdev", &i.netdev]);
    push(&["-device", &i.net_device]);
    // Not in Packer's defaults: without an entropy source, SSH servers in small guests wait
    // seconds for randomness at boot.
    push(&["-device", "virtio-rng-pci"]);
    if let Some(k) = i.kernel {
        push(&["-kernel", k]);
    }
    if let Some(k) = i.initrd {
        push(&["-initrd", k]);
    }
    if let Some(a) = i.kernel_args {
        push(&["-append", a]);
    }
    push(&["-boot", i.boot]);
    match i.display {
        Some(d) => push(&["-display", d]),
        None => push(&["-display", "none"]),
    }
    if let Some(v) = &i.vnc {
        push(&["-vnc", v]);
    }
    push(&["-serial", &format!("file:{}", i.serial_log)]);

    let user: Vec<Vec<String>> = i
        .qemuargs
        .iter()
        .map(|a| {
            a.iter()
                .map(|s| {
                    fill(
                        &s.replace("{{ .SSHHostPort }}", "0")
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
    out.extend(i.extra.iter().map(|s| fill(s, i.vars)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(qemuargs: &'a [Vec<String>], vars: &'a BTreeMap<String, String>) -> ArgvInput<'a> {
        ArgvInput {
            vm_name: "vm",
            machine_type: "pc",
            accel: "tcg",
            cpu_model: None,
            cpus: 1,
            memory: 256,
            drive: "file=o.qcow2,if=virtio".into(),
            cdroms: Vec::new(),
            boot: "c",
            netdev: "user,id=user.0,hostfwd=tcp:127.0.0.1:0-:22".into(),
            net_device: "virtio-net,netdev=user.0".into(),
            kernel: None,
            initrd: None,
            kernel_args: None,
            display: None,
            vnc: None,
            efi: None,
            qmp_socket: "/w/qmp.sock".into(),
            events_socket: None,
            serial_log: "/w/console.log".into(),
            qemuargs,
            extra: &[],
            vars,
        }
    }

    #[test]
    fn argv_is_stable_and_qemuargs_replace_defaults() {
        let vars = BTreeMap::new();
        let a = build(&input(&[], &vars));
        assert_eq!(a, build(&input(&[], &vars)));
        assert_eq!(&a[..4], &["-name", "vm", "-machine", "type=pc,accel=tcg"]);
        let user = vec![
            vec![
                "-netdev".to_string(),
                "user,id=n,hostfwd=tcp::{{ .SSHHostPort }}-:22".to_string(),
            ],
            vec!["-device".to_string(), "e1000,netdev=n".to_string()],
        ];
        let b = build(&input(&user, &vars));
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
