//! Post-processors that work on the exported image: `manifest` (Packer's packer-manifest.json
//! shape), `checksum` and `compress`.

use kiln_core::config::{decode, Flag, Num, Text};
use kiln_core::placeholders::fill;
use kiln_core::{Artifact, Error, PostProcessor, Result, StepCx};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
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
        for (k, v) in &a.data {
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

const CHECKSUM_TYPES: &[&str] = &["md5", "sha224", "sha256", "sha384", "sha512"];

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

fn digest_hex<D: sha2::Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
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
                    "md5" => digest_hex::<md5::Md5>(f)?,
                    "sha224" => digest_hex::<sha2::Sha224>(f)?,
                    "sha256" => a
                        .data
                        .get("disk_sha256")
                        .filter(|_| a.files.len() == 1)
                        .cloned()
                        .map_or_else(|| digest_hex::<sha2::Sha256>(f), Ok)?,
                    "sha384" => digest_hex::<sha2::Sha384>(f)?,
                    _ => digest_hex::<sha2::Sha512>(f)?,
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

pub struct Compress {
    output: String,
    level: u64,
}

pub fn compress(c: &Component) -> std::result::Result<Compress, Diagnostics> {
    let cfg: CompressConfig = decode(c, &[])?;
    let output = cfg.output.map_or_else(
        || "packer_{{.BuildName}}_{{.BuilderType}}.tar.gz".into(),
        |t| t.0,
    );
    let fmt = cfg.format.map(|t| t.0).unwrap_or_else(|| {
        if output.ends_with(".gz") {
            "gz".into()
        } else {
            String::new()
        }
    });
    if !(output.ends_with(".tar.gz") || output.ends_with(".tgz") || output.ends_with(".gz"))
        || !(fmt.is_empty() || fmt == "gz" || fmt == "tar.gz" || fmt == ".gz" || fmt == ".tar.gz")
    {
        return Err(Diagnostics(vec![Diagnostic::error(
            "compress: only gzip output (.gz, .tar.gz, .tgz) is supported so far",
            Some(c.span_of("output").clone()),
        )]));
    }
    Ok(Compress {
        output,
        level: cfg.compression_level.map_or(6, |n| n.0.clamp(1, 9)),
    })
}

impl PostProcessor for Compress {
    fn kind(&self) -> &str {
        "compress"
    }

    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let mut vars = cx.vars.clone();
        vars.insert("BuildName".into(), cx.build_name.to_string());
        vars.insert("BuilderType".into(), cx.builder_type.to_string());
        let out = PathBuf::from(fill(&self.output, &vars));
        let tmp = out.with_extension("kiln-part");
        let tar = self.output.ends_with(".tar.gz") || self.output.ends_with(".tgz");
        let mut cmd = std::process::Command::new("sh");
        let files = a
            .files
            .iter()
            .map(|f| kiln_ssh::shell_quote(&f.display().to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let script = if tar {
            format!(
                "tar -cf - {files} | gzip -{} > {}",
                self.level,
                kiln_ssh::shell_quote(&tmp.display().to_string())
            )
        } else {
            format!(
                "cat {files} | gzip -{} > {}",
                self.level,
                kiln_ssh::shell_quote(&tmp.display().to_string())
            )
        };
        cmd.args(["-c", &script]);
        let st = cmd.status().map_err(|e| Error::io("cannot run gzip", e))?;
        if !st.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::failed(format!("compress failed ({st})")));
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
