//! The qemu builder's options, named as in Packer's qemu builder. Each option is declared once,
//! here: a field with its final type (weakly decoded, as Packer's mapstructure does: `"1024"` or
//! `1024`, `"true"` or `true`), its static default in `Default`, its doc (docs/qemu.md is
//! generated from these comments by `cargo test -p kiln-builders docs`), and how it enters
//! the cache key (the serde attributes of `Serialize`, see `kiln_core::config::key`).
//! `resolve` applies the defaults that depend on the build, checks the rules that span options,
//! and returns the `Settings` the builder runs with. The SSH options are the communicator's
//! (`kiln_ssh::options`).

use kiln_core::choice;
use kiln_core::config::{
    decode, fields_of, key, warn_inert, ByteSize, Count, Dur, Flag, MemoryMib, Port, Text,
};
use kiln_ssh::options::{Resolved as Comm, SshOptions};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

choice! {
    /// The output disk's format.
    pub enum Format { Qcow2 = "qcow2", Raw = "raw" }
}

choice! {
    /// How the guest runs: `auto` probes KVM and falls back to TCG.
    pub enum Accelerator {
        Auto = "auto", Kvm = "kvm", Tcg = "tcg", None = "none", Hvf = "hvf", Whpx = "whpx", Xen = "xen",
    }
}

choice! {
    /// The disk's interface (qemu's `-drive if=`).
    pub enum DiskInterface {
        Virtio = "virtio", VirtioScsi = "virtio-scsi", Scsi = "scsi", Ide = "ide", Sata = "sata",
        Nvme = "nvme", Floppy = "floppy", Pflash = "pflash", Sd = "sd", Mtd = "mtd",
    }
}

choice! {
    /// The disk's host cache mode (qemu's `-drive cache=`).
    pub enum DiskCache {
        Writethrough = "writethrough", Writeback = "writeback", None = "none", Unsafe = "unsafe",
        Directsync = "directsync",
    }
}

choice! {
    /// Whether discard requests reach the image (qemu's `-drive discard=`).
    pub enum DiskDiscard { Unmap = "unmap", Ignore = "ignore" }
}

choice! {
    /// qemu's `-drive detect-zeroes=`.
    pub enum DetectZeroes { Off = "off", On = "on", Unmap = "unmap" }
}

choice! {
    /// The TPM device qemu shows the guest.
    pub enum TpmDevice { TpmTis = "tpm-tis", TpmCrb = "tpm-crb", TpmTisDevice = "tpm-tis-device", TpmSpapr = "tpm-spapr" }
}

choice! {
    /// `http_network_protocol`, as Packer names Go's networks.
    pub enum HttpProtocol { Tcp = "tcp", Tcp4 = "tcp4", Tcp6 = "tcp6", Unix = "unix", UnixPacket = "unixpacket" }
}

choice! {
    /// How CD-ROMs attach to the guest.
    pub enum CdromInterface { Ide = "ide", Virtio = "virtio", Scsi = "scsi", VirtioScsi = "virtio-scsi" }
}

/// `qemu_img_args { convert = [...] create = [...] resize = [...] }` (a block in HCL, an object
/// in JSON).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuImgArgsFields {
    pub convert: Vec<Text>,
    pub create: Vec<Text>,
    pub resize: Vec<Text>,
}

#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub struct QemuImgArgs(pub QemuImgArgsFields);

impl std::ops::Deref for QemuImgArgs {
    type Target = QemuImgArgsFields;
    fn deref(&self) -> &QemuImgArgsFields {
        &self.0
    }
}

impl<'de> Deserialize<'de> for QemuImgArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = match serde_json::Value::deserialize(d)? {
            // An HCL block arrives as a list of its bodies.
            serde_json::Value::Array(mut blocks) if blocks.len() == 1 => blocks.remove(0),
            serde_json::Value::Array(blocks) if blocks.len() > 1 => {
                return Err(D::Error::custom("qemu_img_args is given more than once"))
            }
            other => other,
        };
        serde_json::from_value(v)
            .map(QemuImgArgs)
            .map_err(D::Error::custom)
    }
}

impl QemuImgArgs {
    pub fn of(v: &[Text]) -> Vec<String> {
        v.iter().map(|t| t.0.clone()).collect()
    }
}

/// `Serialize` is the cache key's view of the options: a field without a serde attribute enters
/// the key with its resolved value; `skip_serializing` fields cannot change the disk.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct QemuConfig {
    /// The base: a disk image (with `disk_image = true`) or an installer ISO. A path, a
    /// `file://`/`http(s)://` URL, or `oci://registry/repo:tag` (a kiln image pulled at build).
    #[serde(skip_serializing)]
    pub iso_url: Option<Text>,
    /// Several URLs for the base, tried in order (a local path that exists, else each download
    /// until one succeeds; every failure is reported). Not together with `iso_url`.
    #[serde(skip_serializing)]
    pub iso_urls: Option<Vec<Text>>,
    /// `sha256:…` (or md5/sha1/sha512), `file:URL` of a checksum file, or `none`. Required.
    #[serde(skip_serializing)]
    pub iso_checksum: Option<Text>,
    /// Where a downloaded base is saved (and found again: an existing file there is used
    /// without downloading, verified like any base). Default: kiln's checksum-keyed cache.
    #[serde(skip_serializing)]
    pub iso_target_path: Option<Text>,
    /// The downloaded file's extension (default: the URL's).
    #[serde(skip_serializing)]
    pub iso_target_extension: Option<Text>,
    /// Download the base for this build only: nothing is kept in kiln's download cache.
    #[serde(skip_serializing)]
    pub iso_skip_cache: Flag,
    /// The HTTP server's network: `tcp` or `tcp4` (IPv4, what QEMU's user network reaches);
    /// `tcp6`, `unix` and `unixpacket` are refused (the guest could not reach them).
    #[serde(skip_serializing)]
    pub http_network_protocol: Option<HttpProtocol>,
    /// The base is a bootable disk image (booted under an overlay), not an installer.
    pub disk_image: Flag,
    /// The output qcow2 refers to the base by path instead of holding all its data.
    pub use_backing_file: Flag,
    /// The disk's size: MiB as a number, or with a unit (`"10G"`). Default: the base's size
    /// (a disk image) or 40960 MiB (an installer).
    pub disk_size: Option<ByteSize>,
    /// Keep the base's size even when `disk_size` is larger.
    pub skip_resize_disk: Flag,
    /// Accepted; not acted on yet.
    pub disk_additional_size: Option<Vec<Text>>,
    /// The output disk's format: `qcow2` (default) or `raw`.
    pub format: Format,
    /// The disk interface (default `virtio`).
    pub disk_interface: DiskInterface,
    /// The host cache mode (default `writeback`).
    #[serde(skip_serializing)]
    pub disk_cache: DiskCache,
    /// Whether discards reach the image (default `ignore`).
    pub disk_discard: DiskDiscard,
    /// qemu's `-drive detect-zeroes=` (`off` by default, and then not passed); `unmap` needs
    /// `disk_discard = "unmap"`.
    pub disk_detect_zeroes: Option<DetectZeroes>,
    /// Compress the qcow2 output.
    pub disk_compression: Flag,
    /// Accepted; not acted on yet (kiln always writes a compacted copy).
    pub skip_compaction: Option<Flag>,
    /// Extra arguments for kiln's qemu-img calls: `convert` (the export), `create` (the overlay
    /// or blank disk); `resize` is accepted (kiln sizes the overlay when it creates it).
    pub qemu_img_args: QemuImgArgs,
    /// Where the image is published (default `output-BUILDNAME`); must not exist (or `-force`).
    #[serde(skip_serializing)]
    pub output_directory: Option<Text>,
    /// The disk's file name in output_directory (default `packer-BUILDNAME`).
    #[serde(skip_serializing)]
    pub vm_name: Option<Text>,
    /// `auto` (default: KVM when it works, else TCG), `kvm`, `tcg`, `none`, …
    #[serde(skip_serializing)]
    pub accelerator: Accelerator,
    /// Virtual CPUs. Default: 1, or sockets × cores × threads when a topology is given; with
    /// both, the smaller (as Packer).
    pub cpus: Option<Count>,
    /// CPU sockets (qemu's `-smp sockets=`).
    pub sockets: Option<Count>,
    /// Cores per socket (`-smp cores=`).
    pub cores: Option<Count>,
    /// Threads per core (`-smp threads=`).
    pub threads: Option<Count>,
    /// Memory in MiB (default 512).
    pub memory: MemoryMib,
    /// qemu's `-machine type=` (default `pc`; `virt` for Arm and RISC-V qemu binaries).
    pub machine_type: Text,
    /// qemu's `-cpu` (default `host` with KVM; `max` for aarch64 under TCG, whose `virt`
    /// default is a 32-bit CPU; qemu's own otherwise).
    pub cpu_model: Option<Text>,
    /// The qemu binary (default `qemu-system-x86_64`).
    #[serde(skip_serializing)]
    pub qemu_binary: Text,
    /// The NIC model (default `virtio-net`).
    pub net_device: Text,
    /// Accepted; not acted on yet.
    #[serde(skip_serializing)]
    pub net_bridge: Option<Text>,
    /// No display (kiln never opens a window; `display` is ignored when true).
    #[serde(skip_serializing)]
    pub headless: Flag,
    /// qemu's `-display` (only without `headless`).
    #[serde(skip_serializing)]
    pub display: Option<Text>,
    /// Pass no `-display` at all and let qemu choose (kiln otherwise passes `-display none`,
    /// or `display` when set).
    #[serde(skip_serializing)]
    pub use_default_display: Flag,
    /// The emulated VGA card (`-vga`); unset, qemu's default for the machine.
    pub vga: Option<Text>,
    /// Boot through UEFI firmware (OVMF). Implied by efi_firmware_code or efi_firmware_vars.
    pub efi_boot: Flag,
    /// The UEFI code image (default Debian's OVMF_CODE_4M.fd).
    #[serde(serialize_with = "key::file")]
    pub efi_firmware_code: Option<Text>,
    /// The UEFI variables template (default Debian's OVMF_VARS_4M.fd). Each build boots a copy
    /// of it, so the template is never written.
    #[serde(serialize_with = "key::file")]
    pub efi_firmware_vars: Option<Text>,
    /// kiln stores only the disk, so the build's EFI variables are always dropped: `true` is
    /// what kiln does (Packer exports them as efivars.fd unless this is set).
    #[serde(skip_serializing)]
    pub efi_drop_efivars: Option<Flag>,
    /// A firmware file for qemu (`-bios`, or a read-only pflash with use_pflash); for UEFI use
    /// efi_boot and efi_firmware_*. By content in the key.
    #[serde(serialize_with = "key::file")]
    pub firmware: Option<Text>,
    /// Attach `firmware` as a read-only pflash drive instead of `-bios`.
    pub use_pflash: Flag,
    /// The TPM's qemu device (default `tpm-tis`; `tpm-crb`, `tpm-tis-device` on ARM, …).
    pub tpm_device_type: Option<TpmDevice>,
    /// An emulated TPM (swtpm, started and stopped by kiln like qemu itself).
    pub vtpm: Flag,
    /// TPM 1.2 instead of 2.0.
    pub use_tpm1: Flag,
    /// How CD-ROMs attach: `ide` (kiln's default: BIOS boots an installer from it), `virtio`,
    /// `scsi` or `virtio-scsi` (a virtio-scsi controller with scsi-cd devices).
    pub cdrom_interface: CdromInterface,
    /// qemu flags, each list one flag and its values; a flag named here replaces kiln's default
    /// for it, as in Packer. Files named by path count by content in the cache key.
    #[serde(serialize_with = "key::arg_lists")]
    pub qemuargs: Vec<Vec<Text>>,
    /// kiln extension: flags appended after everything else, replacing nothing.
    #[serde(serialize_with = "key::args")]
    pub qemu_extra_args: Vec<Text>,
    /// kiln extension: a kernel to boot directly (qemu's `-kernel`), by content in the key.
    #[serde(serialize_with = "key::file")]
    pub kernel: Option<Text>,
    /// kiln extension: the initrd for `kernel`.
    #[serde(serialize_with = "key::file")]
    pub initrd: Option<Text>,
    /// kiln extension: the kernel command line for `kernel`.
    pub kernel_args: Option<Text>,
    /// Address a VNC server listens on (setting any vnc_* option turns VNC on).
    #[serde(skip_serializing)]
    pub vnc_bind_address: Option<Text>,
    /// Lowest VNC port (default 5900).
    #[serde(skip_serializing)]
    pub vnc_port_min: Option<Port>,
    /// Highest VNC port (default 6000).
    #[serde(skip_serializing)]
    pub vnc_port_max: Option<Port>,
    /// Set a random VNC password (printed when VNC starts).
    #[serde(skip_serializing)]
    pub vnc_use_password: Flag,
    /// Wait before typing boot_command (default 10s).
    #[serde(skip_serializing)]
    pub boot_wait: Option<Dur>,
    /// Keys typed into the guest over QMP (`<enter>`, `<wait5>`, `{{ .HTTPIP }}`, …).
    pub boot_command: Vec<Text>,
    /// Pause between keys (default 100ms).
    #[serde(skip_serializing)]
    pub boot_key_interval: Dur,
    /// Accepted; not acted on yet.
    #[serde(skip_serializing)]
    pub boot_keygroup_interval: Option<Dur>,
    /// `[command, description]` pairs typed in order, each description said as it is typed
    /// (for installers with many screens); not together with boot_command.
    pub boot_steps: Option<Vec<Vec<Text>>>,
    /// A directory served over HTTP to the guest (at `http://{{ .HTTPIP }}:{{ .HTTPPort }}`);
    /// by content in the key.
    #[serde(serialize_with = "key::path_or_tree")]
    pub http_directory: Option<Text>,
    /// Files served over HTTP from memory: path → content.
    pub http_content: BTreeMap<String, Text>,
    /// Where the HTTP server listens (default 127.0.0.1, which QEMU's user network reaches
    /// as 10.0.2.2; Packer's default is 0.0.0.0).
    #[serde(skip_serializing)]
    pub http_bind_address: Text,
    /// Lowest HTTP port (default 8000).
    #[serde(skip_serializing)]
    pub http_port_min: Port,
    /// Highest HTTP port (default 9000).
    #[serde(skip_serializing)]
    pub http_port_max: Port,
    /// Lowest host port forwarded to the guest's SSH port. Without host_port_min/max QEMU picks
    /// a free port itself and kiln reads it over QMP (no race); with them, kiln picks a free
    /// port in the range.
    #[serde(skip_serializing)]
    pub host_port_min: Option<Port>,
    /// Highest host port forwarded to the guest's SSH port.
    #[serde(skip_serializing)]
    pub host_port_max: Option<Port>,
    /// Deprecated name of host_port_min.
    #[serde(skip_serializing)]
    pub ssh_host_port_min: Option<Port>,
    /// Deprecated name of host_port_max.
    #[serde(skip_serializing)]
    pub ssh_host_port_max: Option<Port>,
    /// Forward no port: kiln connects to ssh_host:ssh_port as given (the guest is reachable
    /// another way: a bridge, or a forward in qemuargs).
    #[serde(skip_serializing)]
    pub skip_nat_mapping: Flag,
    /// Run in the guest to power it off; without it, kiln sends an ACPI power-down.
    pub shutdown_command: Option<Text>,
    /// How long the guest may take to power off (default 5m); past it, no image is written.
    #[serde(skip_serializing)]
    pub shutdown_timeout: Dur,
    /// Files and directories put on a CD (ISO 9660, via xorriso); by content in the key.
    #[serde(serialize_with = "key::files")]
    pub cd_files: Vec<Text>,
    /// Files put on the CD from memory: path → content.
    pub cd_content: BTreeMap<String, Text>,
    /// The CD's volume label (default `cidata`).
    pub cd_label: Option<Text>,
    /// Files put in the root of a 1.44 MB FAT floppy (mtools, no mounting); a directory adds
    /// the files in it. By content in the key.
    #[serde(serialize_with = "key::files")]
    pub floppy_files: Vec<Text>,
    /// Directories copied onto the floppy with their structure.
    #[serde(serialize_with = "key::files")]
    pub floppy_dirs: Vec<Text>,
    /// Files put on the floppy from memory: path → content.
    pub floppy_content: BTreeMap<String, Text>,
    /// The floppy's volume label (default `packer`; at most 11 characters).
    pub floppy_label: Option<Text>,
    /// Wait this long after connecting before the first provisioner.
    #[serde(skip_serializing)]
    pub pause_before_connecting: Option<Dur>,
}

impl Default for QemuConfig {
    /// Packer's defaults (and kiln's, where docs/compatibility.md says it departs).
    fn default() -> Self {
        QemuConfig {
            iso_url: None,
            iso_urls: None,
            iso_checksum: None,
            iso_target_path: None,
            iso_target_extension: None,
            iso_skip_cache: Flag(false),
            disk_image: Flag(false),
            use_backing_file: Flag(false),
            disk_size: None,
            skip_resize_disk: Flag(false),
            disk_additional_size: None,
            format: Format::Qcow2,
            disk_interface: DiskInterface::Virtio,
            disk_cache: DiskCache::Writeback,
            disk_discard: DiskDiscard::Ignore,
            disk_detect_zeroes: None,
            disk_compression: Flag(false),
            skip_compaction: None,
            qemu_img_args: QemuImgArgs::default(),
            output_directory: None,
            vm_name: None,
            accelerator: Accelerator::Auto,
            cpus: None,
            sockets: None,
            cores: None,
            threads: None,
            memory: MemoryMib(512),
            machine_type: Text("pc".into()),
            cpu_model: None,
            qemu_binary: Text("qemu-system-x86_64".into()),
            net_device: Text("virtio-net".into()),
            net_bridge: None,
            headless: Flag(false),
            display: None,
            use_default_display: Flag(false),
            vga: None,
            efi_boot: Flag(false),
            efi_firmware_code: None,
            efi_firmware_vars: None,
            efi_drop_efivars: None,
            firmware: None,
            use_pflash: Flag(false),
            tpm_device_type: None,
            vtpm: Flag(false),
            use_tpm1: Flag(false),
            cdrom_interface: CdromInterface::Ide,
            qemuargs: Vec::new(),
            qemu_extra_args: Vec::new(),
            kernel: None,
            initrd: None,
            kernel_args: None,
            vnc_bind_address: None,
            vnc_port_min: None,
            vnc_port_max: None,
            vnc_use_password: Flag(false),
            boot_wait: None,
            boot_command: Vec::new(),
            boot_key_interval: Dur(Duration::from_millis(100)),
            boot_keygroup_interval: None,
            boot_steps: None,
            http_directory: None,
            http_content: BTreeMap::new(),
            http_bind_address: Text("127.0.0.1".into()),
            http_port_min: Port(8000),
            http_port_max: Port(9000),
            http_network_protocol: None,
            host_port_min: None,
            host_port_max: None,
            ssh_host_port_min: None,
            ssh_host_port_max: None,
            skip_nat_mapping: Flag(false),
            shutdown_command: None,
            shutdown_timeout: Dur(Duration::from_secs(300)),
            cd_files: Vec::new(),
            cd_content: BTreeMap::new(),
            cd_label: None,
            floppy_files: Vec::new(),
            floppy_dirs: Vec::new(),
            floppy_content: BTreeMap::new(),
            floppy_label: None,
            pause_before_connecting: None,
        }
    }
}

/// Options accepted for compatibility that kiln does not act on yet (named in a warning).
pub const INERT: &[(&str, &str)] = &[
    ("disk_additional_size", "a kiln image holds one disk; remove it, or grow the main disk with disk_size and partition it in a provisioner"),
    ("net_bridge", "not built in yet: the guest is on QEMU's user network; for a bridge use qemuargs = [[\"-netdev\", \"bridge,id=user.0,br=BR\"]] with skip_nat_mapping and ssh_host"),
    ("boot_keygroup_interval", "kiln waits boot_key_interval after every key; put <waitXs> in boot_command for longer pauses"),
];

/// Debian's OVMF, used when efi_boot is set without firmware paths.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Debian's AAVMF (qemu-efi-aarch64), for arm64 guests.
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// The guest architecture a qemu binary emulates: `qemu-system-aarch64` → `aarch64`.
pub fn target_arch(binary: &str) -> &str {
    let name = binary.rsplit('/').next().unwrap_or(binary);
    name.strip_prefix("qemu-system-").unwrap_or("x86_64")
}

/// Whether this host's KVM could run a guest of `arch` (same architecture family).
pub fn host_runs(arch: &str) -> bool {
    let host = std::env::consts::ARCH;
    arch == host || (host == "x86_64" && arch == "i386") || (host == "aarch64" && arch == "arm")
}

/// The Debian package that has qemu for `arch`.
pub fn qemu_package(arch: &str) -> &'static str {
    match arch {
        "x86_64" | "i386" => "qemu-system-x86",
        "aarch64" | "arm" => "qemu-system-arm",
        _ => "qemu-system-misc",
    }
}

pub use kiln_core::ResolvedBase;

/// What the builder runs with: the options (defaults applied) and what follows from them.
#[derive(Debug)]
pub struct Settings {
    pub build: String,
    pub cfg: QemuConfig,
    /// The communicator's options, for the cache key's view (`ssh_username`).
    pub ssh_opts: SshOptions,
    pub comm: Comm,
    /// The base image as a path or URL (iso_url, or the first of iso_urls, or the resolved
    /// oci:// base) and its checksum spec.
    pub base_url: String,
    pub checksum: String,
    /// Where the base came from when kiln resolved it (an `oci://` reference and its digest).
    pub base_source: Option<String>,
    /// Every base candidate in order (iso_urls, or the one iso_url): tried until one works.
    pub base_urls: Vec<String>,
    /// qemu's `-smp` value (cpus and topology, resolved as Packer does).
    pub smp: String,
    /// What is typed at boot: boot_command's strings, or boot_steps with their descriptions.
    pub boot: Vec<(String, Option<String>)>,
    /// The host port range for the SSH forward (host_port_min/max), when one was asked for.
    pub host_ports: Option<(u16, u16)>,
    /// The disk's size in bytes, unless skip_resize_disk.
    pub disk_size: Option<u64>,
    pub output_directory: PathBuf,
    pub vm_name: String,
    /// (bind address, port range, password) when a VNC server was asked for.
    pub vnc: Option<(String, u16, u16, bool)>,
    /// (code, vars) firmware images with efi_boot.
    pub efi: Option<(String, String)>,
    /// `-display`, unless headless.
    pub display: Option<String>,
}

/// Decodes a `qemu` source's options (and the communicator's from the same block).
pub fn decode_all(c: &Component) -> Result<(QemuConfig, SshOptions, Diagnostics), Diagnostics> {
    let q = decode::<QemuConfig>(c, fields_of::<SshOptions>());
    let s = decode::<SshOptions>(c, fields_of::<QemuConfig>());
    match (q, s) {
        (Ok(q), Ok(s)) => {
            let mut warnings = Diagnostics::default();
            warn_inert(c, INERT, &mut warnings);
            warn_inert(c, kiln_ssh::options::INERT, &mut warnings);
            Ok((q, s, warnings))
        }
        (q, s) => {
            let mut d = Diagnostics::default();
            // Unknown options are found by both decoders: report them once.
            if let Err(e) = q {
                d.extend(e);
            }
            if let Err(e) = s {
                for x in e.0 {
                    if !d.0.iter().any(|y| y.to_string() == x.to_string()) {
                        d.push(x);
                    }
                }
            }
            // In the order of the template's lines, whichever decoder found them.
            d.0.sort_by_key(|x| x.span.as_ref().map(|s| (s.line, s.col)));
            Err(d)
        }
    }
}

/// `-smp` as Packer's qemu plugin writes it: the cpu count (1, or the topology's product, or the
/// smaller of the two when both are given), then each topology term that was set.
fn smp(q: &QemuConfig) -> String {
    let terms = [q.sockets, q.cores, q.threads];
    let product = terms
        .iter()
        .flatten()
        .map(|c| u64::from(c.0))
        .reduce(|a, b| a * b);
    let cpus = match (q.cpus.map(|c| u64::from(c.0)), product) {
        (Some(c), Some(p)) => c.min(p),
        (Some(c), None) => c,
        (None, Some(p)) => p,
        (None, None) => 1,
    };
    let mut s = cpus.to_string();
    for (name, v) in [
        ("sockets", q.sockets),
        ("cores", q.cores),
        ("threads", q.threads),
    ] {
        if let Some(v) = v {
            s.push_str(&format!(",{name}={v}"));
        }
    }
    s
}

impl QemuConfig {
    /// The rules between options and the forms a value must have, each error at its attribute.
    fn check(
        &self,
        c: &Component,
        base: Option<&ResolvedBase>,
        base_url: &str,
        checksum: &str,
        vm_name: &str,
    ) -> Diagnostics {
        let mut d = Diagnostics::default();
        let at = |attr: &str, msg: String, hint: Option<String>| {
            let x = Diagnostic::error(msg, Some(c.span_of(attr).clone()));
            match hint {
                Some(h) => x.with_hint(h),
                None => x,
            }
        };
        if self.iso_url.is_none() && self.iso_urls.as_ref().is_none_or(|v| v.is_empty()) {
            d.push(Diagnostic::error("iso_url is required: the base disk image (with disk_image = true) or installer ISO", Some(c.span.clone())).with_hint("set iso_url = \"path/to/base.qcow2\" and disk_image = true"));
        }
        if self.iso_checksum.is_none() && base.is_none() {
            d.push(
                Diagnostic::error("iso_checksum is required", Some(c.span.clone())).with_hint(
                    "set iso_checksum = \"sha256:…\", \"file:URL\", or \"none\" to skip the check",
                ),
            );
        }
        if self.iso_url.is_some() && self.iso_urls.is_some() {
            d.push(at(
                "iso_urls",
                "set iso_url or iso_urls, not both".into(),
                Some("iso_urls lists every place the base may be fetched from, in order".into()),
            ));
        }
        if let Some(p) = self
            .http_network_protocol
            .filter(|p| !matches!(p, HttpProtocol::Tcp | HttpProtocol::Tcp4))
        {
            d.push(at(
                "http_network_protocol",
                format!("http_network_protocol = \"{p}\": the guest reaches kiln's HTTP server through QEMU's user network at 10.0.2.2, which forwards IPv4 TCP only"),
                Some("use \"tcp\" (the default) or \"tcp4\"".into()),
            ));
        }
        if self.disk_detect_zeroes == Some(DetectZeroes::Unmap)
            && self.disk_discard != DiskDiscard::Unmap
        {
            d.push(at(
                "disk_detect_zeroes",
                "disk_detect_zeroes = \"unmap\" needs disk_discard = \"unmap\" (qemu refuses it otherwise)".into(),
                None,
            ));
        }
        if !self.boot_command.is_empty() && self.boot_steps.is_some() {
            d.push(at(
                "boot_steps",
                "boot_steps and boot_command are mutually exclusive".into(),
                Some("put every command in boot_steps as [\"command\", \"what it does\"]".into()),
            ));
        }
        for (i, step) in self.boot_steps.iter().flatten().enumerate() {
            if step.is_empty() || step.len() > 2 {
                d.push(at(
                    "boot_steps",
                    format!("boot_steps[{i}] must be [\"command\"] or [\"command\", \"description\"], not {} elements", step.len()),
                    None,
                ));
            }
        }
        // Each typed command with the option and index it is reported under.
        let typed = self
            .boot_command
            .iter()
            .enumerate()
            .map(|(i, c)| ("boot_command", i, c))
            .chain(
                self.boot_steps
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, st)| st.first().map(|c| ("boot_steps", i, c))),
            );
        for (attr, i, cmd) in typed {
            for (k, hint) in super::bootcmd::unknown_keys(cmd) {
                let h = hint.map_or_else(|| "kiln knows Packer's key names (<enter>, <tab>, <f1>, <wait5>, <leftCtrlOn>, ...)".to_string(), |h| format!("did you mean {h}?"));
                d.push(at(attr, format!("{attr}[{i}]: unknown key {k}"), Some(h)));
            }
            if let Err(e) = super::bootcmd::parse(cmd) {
                d.push(at(attr, format!("{attr}[{i}]: {e}"), None));
            }
        }
        for (i, a) in self.qemuargs.iter().enumerate() {
            if a.is_empty() || !a[0].starts_with('-') {
                d.push(at(
                    "qemuargs",
                    format!("qemuargs entry {i} must start with a flag such as \"-device\""),
                    None,
                ));
            }
        }
        // A file name, not a path: it is joined to output_directory (vm_name) or written onto media.
        for (attr, v, hint) in [
            ("vm_name", Some(vm_name), "it is the image's file name inside output_directory; use output_directory to choose the directory"),
            ("cd_label", self.cd_label.as_deref(), "it is the CD's volume label"),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.contains('\0') {
                    d.push(at(attr, format!("{attr} = {v:?} must be a plain name (no `/`, not `.` or `..`): {hint}"), None));
                }
            }
        }
        if self.firmware.is_some() && (self.efi_boot.0 || self.efi_firmware_code.is_some()) {
            d.push(at(
                "firmware",
                "firmware and efi_boot/efi_firmware_code both choose the firmware: set one".into(),
                Some("for UEFI use efi_boot (and efi_firmware_code/efi_firmware_vars)".into()),
            ));
        }
        for (attr, v) in [
            ("firmware", &self.firmware),
            ("efi_firmware_code", &self.efi_firmware_code),
            ("efi_firmware_vars", &self.efi_firmware_vars),
        ] {
            if let Some(f) = v.as_ref().filter(|f| !std::path::Path::new(&f.0).is_file()) {
                d.push(at(
                    attr,
                    format!("{attr} {} does not exist", f.0),
                    Some(
                        "Debian's UEFI firmware is in the ovmf package: apt-get install ovmf"
                            .into(),
                    ),
                ));
            }
        }
        if self.tpm_device_type.is_some() && !self.vtpm.0 {
            d.push(at(
                "tpm_device_type",
                "tpm_device_type without vtpm = true: there is no TPM to attach".into(),
                None,
            ));
        }
        if let Some(l) = &self.floppy_label {
            if l.is_empty()
                || l.len() > 11
                || !l
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-".contains(ch))
            {
                d.push(at(
                    "floppy_label",
                    format!("floppy_label {:?} must be 1 to 11 letters, digits, _ or - (a FAT volume label)", l.0),
                    None,
                ));
            }
        }
        for (attr, list) in [
            ("floppy_files", &self.floppy_files),
            ("floppy_dirs", &self.floppy_dirs),
        ] {
            for f in list {
                let p = std::path::Path::new(&f.0);
                let ok = if attr == "floppy_dirs" {
                    p.is_dir()
                } else {
                    p.exists()
                };
                if !ok {
                    d.push(at(
                        attr,
                        format!(
                            "{attr}: {} does not exist{}",
                            f.0,
                            if attr == "floppy_dirs" {
                                " or is not a directory"
                            } else {
                                ""
                            }
                        ),
                        Some("paths are relative to the directory kiln runs in".into()),
                    ));
                }
            }
        }
        if self.cd_label.as_ref().is_some_and(|l| l.len() > 32) {
            d.push(at(
                "cd_label",
                "cd_label is at most 32 characters (an ISO 9660 volume id)".into(),
                None,
            ));
        }
        for (lo, l, hi, h) in [
            (
                "vnc_port_min",
                self.vnc_port_min,
                "vnc_port_max",
                self.vnc_port_max,
            ),
            (
                "http_port_min",
                Some(self.http_port_min),
                "http_port_max",
                Some(self.http_port_max),
            ),
        ] {
            if let (Some(l), Some(h)) = (l, h) {
                if l > h {
                    d.push(at(lo, format!("{lo} = {l} is above {hi} = {h}"), None));
                }
            }
        }
        if let Err(m) = super::image::check_checksum_form(checksum) {
            d.push(at("iso_checksum", m.to_string(), None));
        }
        if self.disk_image.0
            && base.is_none()
            && !super::download::is_remote(base_url)
            && !base_url.is_empty()
        {
            if let Ok(p) = super::image::resolve_url(base_url) {
                if p.is_file() {
                    if let Some(why) = super::image::not_a_disk(&p) {
                        let attr = if c.attrs.contains_key("iso_url") {
                            "iso_url"
                        } else {
                            "iso_urls"
                        };
                        d.push(at(attr, format!("base image (iso_url): {why}"), None));
                    }
                }
            }
        }
        d
    }

    /// Applies the defaults that depend on the build (and on the resolved base), checks the
    /// rules that span options, and returns the settings with the warnings. Every error points
    /// at its attribute.
    pub fn resolve(
        mut self,
        build: &str,
        ssh_opts: SshOptions,
        base: Option<&ResolvedBase>,
        c: &Component,
    ) -> Result<(Settings, Diagnostics), Diagnostics> {
        let mut d = Diagnostics::default();
        let comm = match ssh_opts.resolve(c) {
            Ok(r) => Some(r),
            Err(e) => {
                for x in e.0 {
                    d.push(x);
                }
                None
            }
        };
        let t = |o: &Option<Text>| o.as_ref().map(|t| t.0.clone());
        let base_urls: Vec<String> = match base {
            Some(b) => {
                self.disk_image = Flag(self.disk_image.0 || !c.attrs.contains_key("disk_image"));
                vec![b.path.display().to_string()]
            }
            None => t(&self.iso_url)
                .into_iter()
                .chain(self.iso_urls.iter().flatten().map(|u| u.0.clone()))
                .collect(),
        };
        // A local candidate that exists is the one used; else the first (downloads are tried
        // in order when the base is fetched).
        let base_url = base_urls
            .iter()
            .find(|u| {
                !super::download::is_remote(u)
                    && super::image::resolve_url(u).is_ok_and(|p| p.is_file())
            })
            .or(base_urls.first())
            .cloned()
            .unwrap_or_default();
        let checksum = match base {
            Some(b) => b.digest.clone(),
            None => t(&self.iso_checksum).unwrap_or_else(|| "none".into()),
        };
        let vm_name = t(&self.vm_name).unwrap_or_else(|| format!("packer-{build}"));
        d.extend(self.check(c, base, &base_url, &checksum, &vm_name));
        let mut warnings = Diagnostics::default();
        if let Some(dir) = &self.http_directory {
            // A warning here (Packer's own examples name directories that exist only on the
            // user's machine); the build's preflight refuses it.
            if !std::path::Path::new(&dir.0).is_dir() {
                warnings.push(Diagnostic::warning(
                    format!(
                        "http_directory {} is not a directory (yet): a build stops on it",
                        dir.0
                    ),
                    Some(c.span_of("http_directory").clone()),
                ));
            }
        }
        let Some(comm) = comm.filter(|_| !d.has_errors()) else {
            return Err(d);
        };
        if self.efi_firmware_code.is_some() || self.efi_firmware_vars.is_some() {
            self.efi_boot = Flag(true);
        }
        let arch = target_arch(&self.qemu_binary.0).to_string();
        // Defaults follow the guest's architecture: Arm and RISC-V boards are `virt`.
        if !c.attrs.contains_key("machine_type")
            && matches!(arch.as_str(), "aarch64" | "arm" | "riscv64" | "riscv32")
        {
            self.machine_type = Text("virt".into());
        }
        if self.efi_boot.0 {
            let mut missing = Diagnostics::default();
            let (code, vars, package) = if arch == "aarch64" {
                (AAVMF_CODE, AAVMF_VARS, "qemu-efi-aarch64")
            } else {
                (OVMF_CODE, OVMF_VARS, "ovmf")
            };
            for (attr, slot, default) in [
                ("efi_firmware_code", &mut self.efi_firmware_code, code),
                ("efi_firmware_vars", &mut self.efi_firmware_vars, vars),
            ] {
                if slot.is_none() {
                    if !std::path::Path::new(default).is_file() {
                        missing.push(
                            Diagnostic::error(
                                format!("efi_boot needs UEFI firmware, and {default} ({attr}'s default) does not exist"),
                                Some(c.span_of("efi_boot").clone()),
                            )
                            .with_hint(format!("apt-get install {package}, or set efi_firmware_code and efi_firmware_vars")),
                        );
                    }
                    *slot = Some(Text(default.into()));
                }
            }
            if missing.has_errors() {
                return Err(missing);
            }
        }
        if self.shutdown_command.as_ref().is_some_and(|s| s.is_empty()) {
            self.shutdown_command = None;
        }
        let efi = self.efi_boot.0.then(|| {
            (
                t(&self.efi_firmware_code).unwrap_or_default(),
                t(&self.efi_firmware_vars).unwrap_or_default(),
            )
        });
        let vnc = (self.vnc_bind_address.is_some()
            || self.vnc_port_min.is_some()
            || self.vnc_port_max.is_some()
            || self.vnc_use_password.0)
            .then(|| {
                (
                    t(&self.vnc_bind_address).unwrap_or_else(|| "127.0.0.1".into()),
                    self.vnc_port_min.map_or(5900, |n| n.0),
                    self.vnc_port_max.map_or(6000, |n| n.0),
                    self.vnc_use_password.0,
                )
            });
        let settings = Settings {
            build: build.to_string(),
            output_directory: PathBuf::from(
                t(&self.output_directory).unwrap_or_else(|| format!("output-{build}")),
            ),
            vm_name,
            disk_size: self
                .disk_size
                .filter(|_| !self.skip_resize_disk.0)
                .map(|b| b.0),
            smp: smp(&self),
            boot: match &self.boot_steps {
                Some(steps) => steps
                    .iter()
                    .filter_map(|st| {
                        st.first()
                            .map(|c| (c.0.clone(), st.get(1).map(|d| d.0.clone())))
                    })
                    .collect(),
                None => self
                    .boot_command
                    .iter()
                    .map(|c| (c.0.clone(), None))
                    .collect(),
            },
            host_ports: {
                let lo = self.host_port_min.or(self.ssh_host_port_min);
                let hi = self.host_port_max.or(self.ssh_host_port_max);
                (lo.is_some() || hi.is_some())
                    .then(|| (lo.map_or(2222, |p| p.0), hi.map_or(4444, |p| p.0)))
            },
            base_urls,
            display: if self.use_default_display.0 {
                None
            } else {
                Some(
                    t(&self.display)
                        .filter(|_| !self.headless.0)
                        .unwrap_or_else(|| "none".into()),
                )
            },
            base_source: base.map(|b| b.source.clone()),
            base_url,
            checksum,
            vnc,
            efi,
            comm,
            ssh_opts,
            cfg: self,
        };
        Ok((settings, warnings))
    }
}

#[cfg(test)]
mod docs {
    //! docs/qemu.md is generated from the option declarations above (and the SSH
    //! communicator's): `KILN_UPDATE_DOCS=1 cargo test -p kiln-builders docs` rewrites it;
    //! without it, the test fails when the page and the code disagree.

    struct Opt {
        name: String,
        ty: String,
        doc: String,
        key: &'static str,
    }

    /// The fields of `pub struct NAME` in `src`, with their `///` docs and serde attributes.
    fn fields(src: &str, name: &str) -> Vec<Opt> {
        let start = src
            .find(&format!("pub struct {name} {{"))
            .expect("struct present");
        let body = &src[start..src[start..].find("\n}\n").map_or(src.len(), |e| start + e)];
        let mut out = Vec::new();
        let (mut doc, mut attr) = (Vec::new(), String::new());
        for line in body.lines().skip(1) {
            let l = line.trim();
            if let Some(d) = l.strip_prefix("///") {
                doc.push(d.trim().to_string());
            } else if l.starts_with("#[") {
                attr.push_str(l);
            } else if let Some(f) = l.strip_prefix("pub ") {
                let (n, t) = f.split_once(':').expect("field: type");
                let key = if attr.contains("skip_serializing") {
                    "no"
                } else if attr.contains("key::") {
                    "by content"
                } else {
                    "yes"
                };
                out.push(Opt {
                    name: n.trim().to_string(),
                    ty: t.trim().trim_end_matches(',').to_string(),
                    doc: doc.join(" "),
                    key,
                });
                doc.clear();
                attr.clear();
            }
        }
        out
    }

    /// The type as a template writer reads it.
    fn user_type(t: &str) -> String {
        let t = t.trim();
        if let Some(inner) = t.strip_prefix("Option<").and_then(|x| x.strip_suffix('>')) {
            return user_type(inner);
        }
        if let Some(inner) = t.strip_prefix("Vec<").and_then(|x| x.strip_suffix('>')) {
            return format!("list of {}", user_type(inner));
        }
        if let Some(inner) = t
            .strip_prefix("BTreeMap<String,")
            .and_then(|x| x.strip_suffix('>'))
        {
            return format!("map of {}", user_type(inner));
        }
        let names = |n: &[&str]| {
            n.iter()
                .map(|x| format!("`{x}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match t {
            "Text" => "string".into(),
            "Flag" => "bool".into(),
            "Dur" => "duration".into(),
            "Port" => "port (1–65535)".into(),
            "Count" => "number (1–1024)".into(),
            "Attempts" => "number (1–10000)".into(),
            "MemoryMib" => "MiB (16–16777216)".into(),
            "Num" => "number".into(),
            "ByteSize" => "size (MiB, or `10G`)".into(),
            "serde_json::Value" => "any".into(),
            "Format" => names(super::Format::NAMES),
            "Accelerator" => names(super::Accelerator::NAMES),
            "DiskInterface" => names(super::DiskInterface::NAMES),
            "DiskCache" => names(super::DiskCache::NAMES),
            "DiskDiscard" => names(super::DiskDiscard::NAMES),
            "DetectZeroes" => names(super::DetectZeroes::NAMES),
            "HttpProtocol" => names(super::HttpProtocol::NAMES),
            "TpmDevice" => names(super::TpmDevice::NAMES),
            "CdromInterface" => names(super::CdromInterface::NAMES),
            "QemuImgArgs" => "block: `convert`, `create`, `resize` (lists of strings)".into(),
            "CommunicatorKind" => names(kiln_ssh::options::CommunicatorKind::NAMES),
            "KeyType" => names(kiln_ssh::options::KeyType::NAMES),
            "Transfer" => names(kiln_ssh::Transfer::NAMES),
            other => panic!("docs: no reader's name for type {other}: add it to user_type"),
        }
    }

    fn table(opts: &[Opt], inert: &[(&str, &str)]) -> String {
        let mut s = String::from(
            "| option | type | kiln | in the cache key | what it does |\n|---|---|---|---|---|\n",
        );
        for o in opts {
            let status = if let Some((_, why)) = inert.iter().find(|(n, _)| *n == o.name) {
                format!("warns, not acted on: {}", why.replace('|', "\\|"))
            } else if o.doc.contains("not built in") {
                "accepted, refused at use".to_string()
            } else {
                "acts".to_string()
            };
            s.push_str(&format!(
                "| `{}` | {} | {status} | {} | {} |\n",
                o.name,
                user_type(&o.ty),
                o.key,
                o.doc.replace('|', "\\|")
            ));
        }
        s
    }

    #[test]
    fn docs_qemu_md_is_generated_from_the_option_declarations() {
        let qemu = fields(include_str!("config.rs"), "QemuConfig");
        let ssh = fields(
            include_str!("../../../crates/kiln-ssh/src/options.rs"),
            "SshOptions",
        );
        assert!(
            qemu.len() > 60 && ssh.len() > 30,
            "parsed {} + {}",
            qemu.len(),
            ssh.len()
        );
        let acted = |v: &[Opt], inert: &[(&str, &str)]| {
            v.iter()
                .filter(|o| !inert.iter().any(|(n, _)| *n == o.name))
                .count()
        };
        let page = format!(
            "# The qemu builder's options\n\n\
             Generated from the option declarations (`builders/src/qemu/config.rs`,\n\
             `crates/kiln-ssh/src/options.rs`) by\n\
             `KILN_UPDATE_DOCS=1 cargo test -p kiln-builders docs`; do not edit by hand.\n\n\
             Option names and loose value forms are Packer's: a number may be written `1024` or\n\
             `\"1024\"`, a bool `true` or `\"true\"`, a duration as Go writes it (`\"1m30s\"`).\n\
             Every value is checked at `kiln validate`, with the range or the allowed names in the\n\
             error. An option not listed here is an error with the nearest name. \"In the cache key\"\n\
             says whether changing it rebuilds the image (\"by content\": the file's digest, not its\n\
             path).\n\n\
             kiln acts on {} of the {} qemu options and {} of the {} communicator options.\n\n\
             ## Builder options\n\n{}\n## Communicator options (SSH)\n\n{}",
            acted(&qemu, super::INERT),
            qemu.len(),
            acted(&ssh, kiln_ssh::options::INERT),
            ssh.len(),
            table(&qemu, super::INERT),
            table(&ssh, kiln_ssh::options::INERT),
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/qemu.md");
        if std::env::var_os("KILN_UPDATE_DOCS").is_some() {
            std::fs::write(path, &page).expect("write docs/qemu.md");
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == page,
            "docs/qemu.md is out of date: run KILN_UPDATE_DOCS=1 cargo test -p kiln-builders docs"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(pairs: &[(&str, serde_json::Value)]) -> Component {
        let mut attrs: Vec<(&str, serde_json::Value)> = vec![
            ("iso_url", "base.qcow2".into()),
            ("iso_checksum", "none".into()),
            ("ssh_username", "root".into()),
        ];
        attrs.extend(pairs.iter().cloned());
        Component::from_pairs("qemu", &attrs)
    }

    fn settings(pairs: &[(&str, serde_json::Value)]) -> Result<Settings, String> {
        let c = comp(pairs);
        let (q, ssh, _) = decode_all(&c).map_err(|d| d.to_string())?;
        q.resolve("x", ssh, None, &c)
            .map(|(s, _)| s)
            .map_err(|d| d.to_string())
    }

    fn key(pairs: &[(&str, serde_json::Value)]) -> serde_json::Value {
        let s = settings(pairs).expect("resolves");
        serde_json::json!([
            serde_json::to_value(&s.cfg).expect("serializes"),
            serde_json::to_value(&s.ssh_opts).expect("serializes")
        ])
    }

    #[test]
    fn defaults_are_packers_and_depend_on_the_build_where_packer_says() {
        let s = settings(&[]).expect("resolves");
        assert_eq!(s.cfg.memory, MemoryMib(512));
        assert_eq!(s.smp, "1");
        assert_eq!(s.cfg.format, Format::Qcow2);
        assert_eq!(s.cfg.disk_interface, DiskInterface::Virtio);
        assert_eq!(s.cfg.accelerator, Accelerator::Auto);
        assert_eq!(s.output_directory, PathBuf::from("output-x"));
        assert_eq!(s.vm_name, "packer-x");
        assert_eq!(s.comm.ssh.as_ref().map(|c| c.port), Some(22));
        assert_eq!(
            s.comm.ssh.as_ref().map(|c| c.timeout),
            Some(Duration::from_secs(300))
        );
        assert!(s.efi.is_none() && s.vnc.is_none());
    }

    #[test]
    fn loose_values_decode_into_their_final_types() {
        let s = settings(&[
            ("memory", "1024".into()),
            ("cpus", 2.into()),
            ("headless", "true".into()),
            ("disk_size", "10G".into()),
            ("ssh_port", "2222".into()),
            ("ssh_timeout", "90s".into()),
            ("format", "raw".into()),
        ])
        .expect("resolves");
        assert_eq!(s.cfg.memory, MemoryMib(1024));
        assert_eq!(s.cfg.cpus, Some(Count(2)));
        assert!(s.cfg.headless.0);
        assert_eq!(s.disk_size, Some(10 << 30));
        assert_eq!(s.cfg.format, Format::Raw);
        let ssh = s.comm.ssh.expect("ssh");
        assert_eq!((ssh.port, ssh.timeout), (2222, Duration::from_secs(90)));
    }

    #[test]
    fn the_cache_key_follows_the_declared_rule() {
        let base = key(&[]);
        // Options that change the disk change the key...
        for (k, v) in [
            ("memory", serde_json::Value::from(1024)),
            ("disk_size", "20G".into()),
            ("format", "raw".into()),
            ("boot_command", serde_json::json!(["<enter>"])),
            ("shutdown_command", "poweroff".into()),
            ("ssh_username", "admin".into()),
        ] {
            assert_ne!(key(&[(k, v)]), base, "{k} must be in the key");
        }
        // ...and those that cannot, do not.
        for (k, v) in [
            ("accelerator", serde_json::Value::from("tcg")),
            ("ssh_port", 2222.into()),
            ("ssh_timeout", "1h".into()),
            ("output_directory", "elsewhere".into()),
            ("vm_name", "disk.img".into()),
            ("boot_wait", "1s".into()),
            ("headless", true.into()),
            ("ssh_password", "hunter22".into()),
            ("qemu_binary", "/usr/bin/qemu-system-x86_64".into()),
        ] {
            assert_eq!(key(&[(k, v)]), base, "{k} must not be in the key");
        }
        // Files count by content: a marker the engine turns into a digest, never the path alone.
        let k = key(&[("kernel", "/boot/vmlinuz".into())]);
        assert_eq!(
            k[0]["kernel"],
            serde_json::json!({ kiln_core::config::key::PATH_DIGEST: "/boot/vmlinuz" })
        );
        // A sensitive password is never in the key's view at all.
        assert!(!key(&[("ssh_password", "hunter22".into())])
            .to_string()
            .contains("hunter22"));
    }

    #[test]
    fn rules_across_options_are_checked_at_their_attributes() {
        let err = settings(&[("vnc_port_min", 5990.into()), ("vnc_port_max", 5900.into())])
            .expect_err("min above max");
        assert!(
            err.contains("vnc_port_min = 5990 is above vnc_port_max = 5900"),
            "{err}"
        );
        let err = settings(&[("vm_name", "../x".into())]).expect_err("a path");
        assert!(err.contains("must be a plain name"), "{err}");
        let err = settings(&[("qemuargs", serde_json::json!([["m", "1G"]]))]).expect_err("no dash");
        assert!(
            err.contains("qemuargs entry 0 must start with a flag"),
            "{err}"
        );
        let err = settings(&[("communicator", "winrm".into())]).expect_err("no winrm");
        assert!(
            err.contains("the winrm communicator is not built into kiln"),
            "{err}"
        );
        let err = settings(&[("iso_checksum", "sha256:abc".into())]).expect_err("short hex");
        assert!(err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn an_aarch64_qemu_gets_virt_max_and_aavmf_unless_told_otherwise() {
        let s = settings(&[
            ("qemu_binary", "qemu-system-aarch64".into()),
            ("accelerator", "tcg".into()),
        ])
        .expect("resolves");
        assert_eq!(s.cfg.machine_type.0, "virt");
        let s = settings(&[
            ("qemu_binary", "/usr/bin/qemu-system-aarch64".into()),
            ("machine_type", "virt-7.2".into()),
        ])
        .expect("resolves");
        assert_eq!(s.cfg.machine_type.0, "virt-7.2");
        assert_eq!(settings(&[]).expect("resolves").cfg.machine_type.0, "pc");
        assert_eq!(target_arch("/usr/bin/qemu-system-aarch64"), "aarch64");
        assert_eq!(qemu_package("aarch64"), "qemu-system-arm");
        assert!(!host_runs("aarch64") || std::env::consts::ARCH == "aarch64");
        if std::path::Path::new(AAVMF_CODE).is_file() {
            let s = settings(&[
                ("qemu_binary", "qemu-system-aarch64".into()),
                ("efi_boot", true.into()),
            ])
            .expect("resolves");
            assert_eq!(
                s.efi,
                Some((AAVMF_CODE.to_string(), AAVMF_VARS.to_string()))
            );
        }
    }

    #[test]
    fn efi_boot_uses_debians_ovmf_unless_told_otherwise_and_an_oci_base_is_a_disk() {
        let s = settings(&[("efi_boot", true.into())]).expect("resolves");
        assert_eq!(s.efi, Some((OVMF_CODE.to_string(), OVMF_VARS.to_string())));
        let c = comp(&[]);
        let (q, ssh, _) = decode_all(&c).expect("decodes");
        let base = ResolvedBase {
            path: PathBuf::from("/store/blobs/sha256/abc"),
            digest: format!("sha256:{}", "a".repeat(64)),
            source: "oci://r/b:1 (sha256:…)".into(),
        };
        let (s, _) = q.resolve("x", ssh, Some(&base), &c).expect("resolves");
        assert!(s.cfg.disk_image.0, "an oci:// base is a disk image");
        assert_eq!(s.base_url, "/store/blobs/sha256/abc");
        assert_eq!(s.checksum, base.digest);
        assert_eq!(s.base_source.as_deref(), Some(base.source.as_str()));
    }
}

#[cfg(test)]
mod acting {
    //! Options that used to be "accepted but not acted on" (issue 14), each checked where it
    //! reaches qemu.
    use super::*;

    fn cfg(f: impl FnOnce(&mut QemuConfig)) -> QemuConfig {
        let mut q = QemuConfig {
            iso_url: Some(Text("base.qcow2".into())),
            iso_checksum: Some(Text("none".into())),
            ..QemuConfig::default()
        };
        f(&mut q);
        q
    }

    #[test]
    fn cpu_topology_becomes_smp_as_packer_writes_it() {
        assert_eq!(smp(&cfg(|_| {})), "1");
        assert_eq!(smp(&cfg(|q| q.cpus = Some(Count(4)))), "4");
        // The topology's product when cpus is not given...
        let t = |q: &mut QemuConfig| {
            q.sockets = Some(Count(2));
            q.cores = Some(Count(2));
            q.threads = Some(Count(2));
        };
        assert_eq!(smp(&cfg(t)), "8,sockets=2,cores=2,threads=2");
        // ...and the smaller of the two when both are.
        assert_eq!(
            smp(&cfg(|q| {
                t(q);
                q.cpus = Some(Count(16));
            })),
            "8,sockets=2,cores=2,threads=2"
        );
        assert_eq!(
            smp(&cfg(|q| {
                t(q);
                q.cpus = Some(Count(4));
            })),
            "4,sockets=2,cores=2,threads=2"
        );
        assert_eq!(smp(&cfg(|q| q.cores = Some(Count(3)))), "3,cores=3");
    }

    #[test]
    fn iso_urls_are_candidates_in_order_and_the_first_local_one_that_exists_is_used() {
        let dir = std::env::temp_dir().join(format!("kiln-isourls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let there = dir.join("there.img");
        std::fs::write(&there, b"x").expect("file");
        let c = Component::from_pairs("qemu", &[]);
        let ssh = SshOptions {
            communicator: Some(kiln_ssh::options::CommunicatorKind::None),
            ..SshOptions::default()
        };
        let q = cfg(|q| {
            q.iso_url = None;
            q.iso_urls = Some(vec![
                Text(dir.join("missing.img").display().to_string()),
                Text(there.display().to_string()),
                Text("https://example.invalid/base.img".into()),
            ]);
        });
        let (s, _) = q.resolve("x", ssh, None, &c).expect("resolves");
        assert_eq!(s.base_urls.len(), 3);
        assert_eq!(s.base_url, there.display().to_string());
        // Both at once is refused, as Packer does.
        let both = cfg(|q| q.iso_urls = Some(vec![Text("a.img".into())]));
        let ssh = SshOptions {
            communicator: Some(kiln_ssh::options::CommunicatorKind::None),
            ..SshOptions::default()
        };
        let err = both.resolve("x", ssh, None, &c).expect_err("both");
        assert!(
            err.to_string()
                .contains("set iso_url or iso_urls, not both"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn boot_steps_are_typed_in_order_with_their_descriptions() {
        let c = Component::from_pairs("qemu", &[]);
        let none = || SshOptions {
            communicator: Some(kiln_ssh::options::CommunicatorKind::None),
            ..SshOptions::default()
        };
        let steps = |v: &[&[&str]]| {
            Some(
                v.iter()
                    .map(|st| st.iter().map(|x| Text((*x).into())).collect())
                    .collect(),
            )
        };
        let q = cfg(|q| q.boot_steps = steps(&[&["1<enter>", "Install"], &["b<enter>"]]));
        let (s, _) = q.resolve("x", none(), None, &c).expect("resolves");
        assert_eq!(
            s.boot,
            [
                ("1<enter>".to_string(), Some("Install".to_string())),
                ("b<enter>".to_string(), None)
            ]
        );
        let both = cfg(|q| {
            q.boot_steps = steps(&[&["a"]]);
            q.boot_command = vec![Text("b".into())];
        });
        let e = both
            .resolve("x", none(), None, &c)
            .expect_err("both")
            .to_string();
        assert!(e.contains("mutually exclusive"), "{e}");
        let bad = cfg(|q| q.boot_steps = steps(&[&["a", "b", "c"], &["<entr>"]]));
        let e = bad
            .resolve("x", none(), None, &c)
            .expect_err("bad")
            .to_string();
        assert!(e.contains("boot_steps[0] must be"), "{e}");
        assert!(e.contains("boot_steps[1]: unknown key <entr>"), "{e}");
    }

    #[test]
    fn detect_zeroes_unmap_needs_discard_unmap() {
        let c = Component::from_pairs("qemu", &[]);
        let none = || SshOptions {
            communicator: Some(kiln_ssh::options::CommunicatorKind::None),
            ..SshOptions::default()
        };
        let bad = cfg(|q| q.disk_detect_zeroes = Some(DetectZeroes::Unmap));
        let err = bad.resolve("x", none(), None, &c).expect_err("refused");
        assert!(
            err.to_string().contains("needs disk_discard = \"unmap\""),
            "{err}"
        );
        let good = cfg(|q| {
            q.disk_detect_zeroes = Some(DetectZeroes::Unmap);
            q.disk_discard = DiskDiscard::Unmap;
        });
        assert!(good.resolve("x", none(), None, &c).is_ok());
    }
}
