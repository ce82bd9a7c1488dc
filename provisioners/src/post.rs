//! Post-processors that work on the exported image: `manifest` (Packer's packer-manifest.json
//! shape), `checksum` and `compress`.

use kiln_core::config::{decode, Flag, Num, Text};
use kiln_core::placeholders::fill;
use kiln_core::{Artifact, Error, PostProcessor, Result, StepCx};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Parallel builds append to one manifest file: serialize the read-modify-write.
static MANIFEST_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ManifestConfig {
    pub output: Option<Text>,
    pub strip_path: Option<Flag>,
    pub strip_time: Option<Flag>,
    pub custom_data: Option<BTreeMap<String, Text>>,
}

pub struct Manifest {
    output: String,
    strip_path: bool,
    strip_time: bool,
    custom_data: BTreeMap<String, String>,
    run_uuid: String,
}

pub fn manifest(c: &Component, run_uuid: &str) -> std::result::Result<Manifest, Diagnostics> {
    let cfg: ManifestConfig = decode(c, &[])?;
    Ok(Manifest {
        output: cfg
            .output
            .map_or_else(|| "packer-manifest.json".into(), |t| t.0),
        strip_path: cfg.strip_path.is_some_and(|f| f.0),
        strip_time: cfg.strip_time.is_some_and(|f| f.0),
        custom_data: cfg
            .custom_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
        run_uuid: run_uuid.to_string(),
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let tmp = path.with_extension(format!("kiln-tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

impl PostProcessor for Manifest {
    fn kind(&self) -> &str {
        "manifest"
    }

    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let _g = MANIFEST_LOCK
            .lock()
            .map_err(|_| Error::failed("manifest lock poisoned"))?;
        let path = PathBuf::from(fill(&self.output, cx.vars));
        let mut doc: serde_json::Value = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| {
                Error::failed(format!(
                    "existing manifest {} is not valid JSON ({e}); move it away",
                    path.display()
                ))
            })?,
            Err(_) => serde_json::json!({ "builds": [] }),
        };
        let files: Vec<serde_json::Value> = a
            .files
            .iter()
            .map(|f| {
                let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                let name = if self.strip_path {
                    f.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                } else {
                    f.display().to_string()
                };
                serde_json::json!({ "name": name, "size": size })
            })
            .collect();
        let mut custom: serde_json::Map<String, serde_json::Value> = self
            .custom_data
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(fill(v, cx.vars))))
            .collect();
        for (k, v) in &a.facts() {
            custom
                .entry(format!("kiln_{k}"))
                .or_insert_with(|| serde_json::Value::String(v.clone()));
        }
        let build_time = if self.strip_time {
            0
        } else {
            kiln_template::timefmt::now_unix()
        };
        let entry = serde_json::json!({
            "name": cx.build_name,
            "builder_type": a.builder_type,
            "build_time": build_time,
            "files": files,
            "artifact_id": a.id,
            "packer_run_uuid": self.run_uuid,
            "custom_data": custom,
        });
        match doc.get_mut("builds").and_then(|b| b.as_array_mut()) {
            Some(list) => list.push(entry),
            None => doc["builds"] = serde_json::json!([entry]),
        }
        doc["last_run_uuid"] = serde_json::Value::String(self.run_uuid.clone());
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::failed(e.to_string()))?;
        write_atomic(&path, text.as_bytes())?;
        cx.em.say(format!("wrote manifest {}", path.display()));
        Ok(a.clone())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChecksumConfig {
    pub checksum_types: Option<Vec<Text>>,
    pub output: Option<Text>,
}

pub struct Checksum {
    types: Vec<String>,
    output: String,
}

const CHECKSUM_TYPES: &[&str] = &["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

pub fn checksum(c: &Component) -> std::result::Result<Checksum, Diagnostics> {
    let cfg: ChecksumConfig = decode(c, &[])?;
    let types: Vec<String> = cfg.checksum_types.map_or_else(
        || vec!["md5".into()],
        |v| v.into_iter().map(|t| t.0).collect(),
    );
    let mut d = Diagnostics::default();
    for t in &types {
        if !CHECKSUM_TYPES.contains(&t.as_str()) {
            d.push(
                Diagnostic::error(
                    format!("checksum type {t:?} is not supported"),
                    Some(c.span_of("checksum_types").clone()),
                )
                .with_hint(format!("use one of: {}", CHECKSUM_TYPES.join(", "))),
            );
        }
    }
    if d.has_errors() {
        return Err(d);
    }
    Ok(Checksum {
        types,
        output: cfg.output.map_or_else(
            || "packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum".into(),
            |t| t.0,
        ),
    })
}

impl PostProcessor for Checksum {
    fn kind(&self) -> &str {
        "checksum"
    }

    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let mut out = a.clone();
        for t in &self.types {
            let mut vars = cx.vars.clone();
            vars.insert("BuildName".into(), cx.build_name.to_string());
            vars.insert("BuilderType".into(), cx.builder_type.to_string());
            vars.insert("ChecksumType".into(), t.clone());
            let path = PathBuf::from(fill(&self.output, &vars));
            let mut text = String::new();
            for f in &a.files {
                let h = match t.as_str() {
                    "md5" => kiln_core::hash_file_hex::<md5::Md5>(f)?,
                    "sha224" => kiln_core::hash_file_hex::<sha2::Sha224>(f)?,
                    "sha256" => a
                        .image
                        .as_ref()
                        .filter(|_| a.files.len() == 1)
                        .map(|i| i.disk_digest.trim_start_matches("sha256:").to_string())
                        .map_or_else(|| kiln_core::hash_file_hex::<sha2::Sha256>(f), Ok)?,
                    "sha384" => kiln_core::hash_file_hex::<sha2::Sha384>(f)?,
                    "sha1" => kiln_core::hash_file_hex::<sha1::Sha1>(f)?,
                    _ => kiln_core::hash_file_hex::<sha2::Sha512>(f)?,
                };
                text.push_str(&format!(
                    "{h}\t{}\n",
                    f.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ));
            }
            write_atomic(&path, text.as_bytes())?;
            cx.em.say(format!("wrote {t} checksum {}", path.display()));
            out.files.push(path);
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CompressConfig {
    pub output: Option<Text>,
    pub format: Option<Text>,
    pub compression_level: Option<Num>,
    pub keep_input_artifact: Option<Flag>,
}

/// Archive formats by output extension, as Packer's compress post-processor picks them.
const COMPRESS_FORMATS: &[(&str, &str)] = &[
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar.zst", "tar.zst"),
    (".tar.xz", "tar.xz"),
    (".tar", "tar"),
    (".gz", "gz"),
    (".zst", "zst"),
    (".xz", "xz"),
    (".zip", "zip"),
];

pub struct Compress {
    output: String,
    format: String,
    level: u64,
}

pub fn compress(c: &Component) -> std::result::Result<Compress, Diagnostics> {
    let cfg: CompressConfig = decode(c, &[])?;
    let output = cfg.output.map_or_else(
        || "packer_{{.BuildName}}_{{.BuilderType}}.tar.gz".into(),
        |t| t.0,
    );
    let by_ext = COMPRESS_FORMATS
        .iter()
        .find(|(ext, _)| output.ends_with(ext))
        .map(|(_, f)| f.to_string());
    let format = match cfg.format.map(|t| t.0.trim_start_matches('.').to_string()) {
        Some(f) if COMPRESS_FORMATS.iter().any(|(_, x)| *x == f) => f,
        Some(f) => {
            return Err(Diagnostics(vec![Diagnostic::error(format!("compress format {f:?} is not supported"), Some(c.span_of("format").clone()))
                .with_hint("use .gz, .tar.gz, .zst, .tar.zst, .xz, .tar.xz, .tar or .zip")]))
        }
        None => match by_ext {
            Some(f) => f,
            None => {
                return Err(Diagnostics(vec![Diagnostic::error(format!("cannot tell the compression format from {output:?}"), Some(c.span_of("output").clone()))
                    .with_hint("end output with .gz, .tar.gz, .zst, .tar.zst, .xz, .tar.xz, .tar or .zip, or set format")]))
            }
        },
    };
    Ok(Compress {
        output,
        format,
        level: cfg.compression_level.map_or(6, |n| n.0.clamp(1, 9)),
    })
}

/// Runs `script` (tar, gzip, zstd…) in its own process group: killed whole on cancel, and if
/// kiln dies its supervisor removes `partial` (the half-written output) and kills the group.
fn run_sh(script: &str, what: &str, cx: &StepCx<'_>, partial: &Path) -> Result<()> {
    let argv = ["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
    let mut child = kiln_core::process::Guarded::spawn_group(
        &argv,
        |c: &mut std::process::Command| {
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
        },
        Some(partial),
        what,
    )?;
    let pid = child.id();
    let _hook = cx
        .cancel
        .on_cancel(move || kiln_core::process::kill_group(pid));
    let mut err = String::new();
    if let Some(e) = child.child().and_then(|c| c.stderr.take()) {
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(e), &mut err);
    }
    let st = child.wait()?;
    cx.cancel.check()?;
    if !st.success() {
        return Err(Error::failed(format!(
            "{what} failed ({st}): {}",
            err.trim()
        )));
    }
    Ok(())
}

fn q(p: &Path) -> String {
    kiln_ssh::shell_quote(&p.display().to_string())
}

impl PostProcessor for Compress {
    fn kind(&self) -> &str {
        "compress"
    }

    fn keeps_input_by_default(&self) -> bool {
        false
    }

    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let mut vars = cx.vars.clone();
        vars.insert("BuildName".into(), cx.build_name.to_string());
        vars.insert("BuilderType".into(), cx.builder_type.to_string());
        let out = PathBuf::from(fill(&self.output, &vars));
        if let Some(d) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
        }
        let tmp = out.with_extension("kiln-part");
        let files: Vec<String> = a.files.iter().map(|f| q(f)).collect();
        let l = self.level;
        let (t, fl) = (q(&tmp), files.join(" "));
        // Archives hold the files by name, next to each other, as Packer's do.
        let tar_names: Vec<String> = a
            .files
            .iter()
            .map(|f| {
                format!(
                    "-C {} {}",
                    q(f.parent().unwrap_or(Path::new("."))),
                    q(Path::new(f.file_name().unwrap_or_default()))
                )
            })
            .collect();
        let tn = tar_names.join(" ");
        let script = match self.format.as_str() {
            "tar.gz" => format!("tar -cf - {tn} | gzip -{l} > {t}"),
            "tar.zst" => format!("tar -cf - {tn} | zstd -q -{l} -o {t}"),
            "tar.xz" => format!("tar -cf - {tn} | xz -{l} > {t}"),
            "tar" => format!("tar -cf {t} {tn}"),
            "gz" => format!("cat {fl} | gzip -{l} > {t}"),
            "zst" => format!("cat {fl} | zstd -q -{l} -o {t}"),
            "xz" => format!("cat {fl} | xz -{l} > {t}"),
            _ => format!("rm -f {t} && zip -q -j -{l} {t} {fl}"),
        };
        let r = run_sh(&script, &format!("compress ({})", self.format), cx, &tmp);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
            r?;
        }
        std::fs::rename(&tmp, &out)
            .map_err(|e| Error::io(format!("cannot write {}", out.display()), e))?;
        cx.em.say(format!("compressed to {}", out.display()));
        Ok(Artifact {
            files: vec![out],
            ..a.clone()
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VagrantConfig {
    pub output: Option<Text>,
    pub compression_level: Option<Num>,
    pub include: Option<Vec<Text>>,
    pub vagrantfile_template: Option<Text>,
    pub vagrantfile_template_generated: Option<Flag>,
    pub provider_override: Option<Text>,
    pub keep_input_artifact: Option<Flag>,
    pub architecture: Option<Text>,
}

/// The `vagrant` post-processor: a box for the libvirt provider (box.img, metadata.json,
/// Vagrantfile, in a gzipped tar).
pub struct Vagrant {
    output: String,
    level: u64,
    include: Vec<PathBuf>,
    template: Option<PathBuf>,
}

pub fn vagrant(c: &Component) -> std::result::Result<Vagrant, Diagnostics> {
    let cfg: VagrantConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    if let Some(p) = cfg.provider_override.as_deref() {
        if p != "libvirt" {
            d.push(Diagnostic::error(
                format!("provider_override {p:?}: kiln makes libvirt boxes only"),
                Some(c.span_of("provider_override").clone()),
            ));
        }
    }
    let include: Vec<PathBuf> = cfg
        .include
        .unwrap_or_default()
        .into_iter()
        .map(|t| PathBuf::from(t.0))
        .collect();
    for f in &include {
        if !f.is_file() {
            d.push(Diagnostic::error(
                format!("include file {} does not exist", f.display()),
                Some(c.span_of("include").clone()),
            ));
        }
    }
    let template = cfg.vagrantfile_template.map(|t| PathBuf::from(t.0));
    if let Some(t) = &template {
        if !t.is_file() && !cfg.vagrantfile_template_generated.is_some_and(|g| g.0) {
            d.push(Diagnostic::error(
                format!("vagrantfile_template {} does not exist", t.display()),
                Some(c.span_of("vagrantfile_template").clone()),
            ));
        }
    }
    if d.has_errors() {
        return Err(d);
    }
    Ok(Vagrant {
        output: cfg
            .output
            .map_or_else(|| "packer_{{.BuildName}}_{{.Provider}}.box".into(), |t| t.0),
        level: cfg.compression_level.map_or(6, |n| n.0.clamp(1, 9)),
        include,
        template,
    })
}

const DEFAULT_VAGRANTFILE: &str = "Vagrant.configure(\"2\") do |config|\n  config.vm.provider :libvirt do |libvirt|\n    libvirt.driver = \"kvm\"\n  end\nend\n";

impl PostProcessor for Vagrant {
    fn kind(&self) -> &str {
        "vagrant"
    }

    fn keeps_input_by_default(&self) -> bool {
        false
    }

    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let disk = a
            .files
            .first()
            .ok_or_else(|| Error::failed("vagrant: the build produced no disk"))?;
        if a.disk.as_ref().is_some_and(|d| d.format != "qcow2") {
            return Err(Error::failed(
                "vagrant: libvirt boxes need a qcow2 disk; set format = \"qcow2\"",
            ));
        }
        let mut vars = cx.vars.clone();
        vars.insert("BuildName".into(), cx.build_name.to_string());
        vars.insert("BuilderType".into(), cx.builder_type.to_string());
        vars.insert("Provider".into(), "libvirt".into());
        vars.insert("ArtifactId".into(), "libvirt".into());
        let out = PathBuf::from(fill(&self.output, &vars));
        let work = kiln_core::workdir::WorkDir::create(&std::env::temp_dir(), "kiln-box")?;
        let dir = work.path().to_path_buf();
        kiln_core::workdir::copy_file(disk, &dir.join("box.img"))?;
        let vsize: u64 = a.disk.as_ref().map_or(0, |d| d.virtual_size);
        let gib = vsize.div_ceil(1 << 30).max(1);
        let meta =
            serde_json::json!({"provider": "libvirt", "format": "qcow2", "virtual_size": gib});
        std::fs::write(dir.join("metadata.json"), meta.to_string())
            .map_err(|e| Error::io("cannot write metadata.json", e))?;
        let vf = match &self.template {
            Some(t) => std::fs::read_to_string(t)
                .map_err(|e| Error::io(format!("cannot read {}", t.display()), e))?,
            None => DEFAULT_VAGRANTFILE.to_string(),
        };
        std::fs::write(dir.join("Vagrantfile"), vf)
            .map_err(|e| Error::io("cannot write Vagrantfile", e))?;
        for f in &self.include {
            kiln_core::workdir::copy_file(f, &dir.join(f.file_name().unwrap_or_default()))?;
        }
        if let Some(d) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
        }
        let tmp = out.with_extension("kiln-part");
        let r = run_sh(
            &format!(
                "tar -C {} -cf - . | gzip -{} > {}",
                q(&dir),
                self.level,
                q(&tmp)
            ),
            "vagrant box",
            cx,
            &tmp,
        );
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
            r?;
        }
        std::fs::rename(&tmp, &out)
            .map_err(|e| Error::io(format!("cannot write {}", out.display()), e))?;
        cx.em
            .say(format!("wrote vagrant box {} (libvirt)", out.display()));
        Ok(Artifact {
            builder_type: "vagrant".into(),
            files: vec![out],
            ..a.clone()
        })
    }
}

/// `artifice`, as Packer's: the artifact becomes the listed files (made by an earlier step, such
/// as a shell-local post-processor), for the post-processors after it. Each must exist then.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ArtificeConfig {
    pub files: Option<Vec<Text>>,
}

pub struct Artifice {
    files: Vec<String>,
}

pub fn artifice(c: &Component) -> std::result::Result<Artifice, Diagnostics> {
    let cfg: ArtificeConfig = decode(c, &[])?;
    match cfg.files {
        Some(f) if !f.is_empty() => Ok(Artifice {
            files: f.into_iter().map(|t| t.0).collect(),
        }),
        _ => Err(Diagnostics(vec![Diagnostic::error(
            "the artifice post-processor needs files: the paths that make the new artifact",
            Some(c.span.clone()),
        )
        .with_hint("add `files = [\"output/disk.vmdk\"]`")])),
    }
}

impl PostProcessor for Artifice {
    fn kind(&self) -> &str {
        "artifice"
    }
    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let mut files = Vec::new();
        for f in &self.files {
            let p = PathBuf::from(fill(f, cx.vars));
            if !p.is_file() {
                return Err(Error::failed(format!(
                    "artifice: {} does not exist: an earlier step must make it",
                    p.display()
                )));
            }
            files.push(p);
        }
        cx.em.say(format!(
            "artifice: the artifact is now {}",
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(Artifact {
            builder_type: "packer.post-processor.artifice".into(),
            id: files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
            files,
            disk: None,
            image: None,
            cached: false,
            meta: a.meta.clone(),
        })
    }
}
