//! The `file` provisioner: uploads files, directories or inline content, or downloads files from
//! the guest. Directory sources follow Packer's rule: "dir/" copies the contents, "dir" copies the
//! directory itself into the destination.

use kiln_core::config::{decode, Flag, Text};
use kiln_core::{Communicator, Error, Provisioner, Result, Source, StepCx};
use kiln_ssh::shell_quote;
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

kiln_core::choice! {
    /// Which way files go (`direction`).
    pub enum Direction { Upload = "upload", Download = "download" }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub source: Option<Text>,
    pub sources: Option<Vec<Text>>,
    pub content: Option<Text>,
    pub destination: Option<Text>,
    pub direction: Option<Direction>,
    pub generated: Option<Flag>,
}

pub struct FileProv {
    sources: Vec<String>,
    content: Option<String>,
    destination: String,
    download: bool,
}

pub fn from_component(c: &Component) -> std::result::Result<FileProv, Diagnostics> {
    let cfg: FileConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    let download = cfg.direction == Some(Direction::Download);
    let mut sources: Vec<String> = cfg.source.iter().map(|s| s.0.clone()).collect();
    sources.extend(cfg.sources.iter().flatten().map(|s| s.0.clone()));
    let n = usize::from(!sources.is_empty()) + usize::from(cfg.content.is_some());
    if n != 1 || (cfg.source.is_some() && cfg.sources.is_some()) {
        d.push(Diagnostic::error(
            "the file provisioner needs exactly one of source, sources or content",
            Some(c.span.clone()),
        ));
    }
    if download && cfg.content.is_some() {
        d.push(Diagnostic::error(
            "content cannot be downloaded: use source with direction = \"download\"",
            Some(c.span_of("content").clone()),
        ));
    }
    let destination = match cfg.destination {
        Some(t) => t.0,
        None => {
            d.push(Diagnostic::error(
                "the file provisioner needs a destination",
                Some(c.span.clone()),
            ));
            String::new()
        }
    };
    if !download && !cfg.generated.is_some_and(|g| g.0) {
        for s in &sources {
            if !Path::new(s).exists() {
                let key = if cfg.source.is_some() {
                    "source"
                } else {
                    "sources"
                };
                d.push(
                    Diagnostic::error(
                        format!("source {s} does not exist"),
                        Some(c.span_of(key).clone()),
                    )
                    .with_hint("set generated = true if an earlier step creates it"),
                );
            }
        }
    }
    if download && (destination.ends_with('/') || sources.len() > 1) {
        // Each download lands under its remote file name: that name must be a plain file name.
        for s in &sources {
            let b = basename(s);
            if b.is_empty() || b == "." || b == ".." {
                let key = if cfg.source.is_some() {
                    "source"
                } else {
                    "sources"
                };
                d.push(Diagnostic::error(
                    format!("download source {s:?} has no file name to write under {destination}: name a file, not a directory step"),
                    Some(c.span_of(key).clone()),
                ));
            }
        }
    }
    if d.has_errors() {
        return Err(d);
    }
    Ok(FileProv {
        sources,
        content: cfg.content.map(|t| t.0),
        destination,
        download,
    })
}

fn basename(p: &str) -> String {
    Path::new(p.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn upload_dir(
    comm: &mut dyn Communicator,
    cx: &StepCx<'_>,
    src: &Path,
    dest: &str,
) -> Result<()> {
    let mut dirs = vec![dest.to_string()];
    let mut files: Vec<(PathBuf, String, u32)> = Vec::new();
    let mut stack = vec![(src.to_path_buf(), dest.to_string())];
    while let Some((dir, rdir)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let r = format!(
                "{}/{}",
                rdir.trim_end_matches('/'),
                e.file_name().to_string_lossy()
            );
            let meta = std::fs::metadata(&p)
                .map_err(|err| Error::io(format!("cannot stat {}", p.display()), err))?;
            if meta.is_dir() {
                dirs.push(r.clone());
                stack.push((p, r));
            } else {
                files.push((p, r, meta.permissions().mode() & 0o7777));
            }
        }
    }
    let mkdir = format!(
        "mkdir -p {}",
        dirs.iter()
            .map(|d| shell_quote(d))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let code = comm.exec(&mkdir, &mut |l| cx.em.output(l))?;
    if code != 0 {
        return Err(Error::failed(format!(
            "cannot create directory {dest} in the guest (exit {code})"
        )));
    }
    for (p, r, mode) in files {
        cx.cancel.check()?;
        comm.upload(&Source::File(&p), &r, mode)?;
    }
    Ok(())
}

impl Provisioner for FileProv {
    fn kind(&self) -> &str {
        "file"
    }

    fn key_inputs(&self) -> Result<serde_json::Value> {
        let mut sources = Vec::new();
        for s in &self.sources {
            // Uploads count by content (a generated source that is not there yet counts by name).
            let digest = if !self.download && Path::new(s).exists() {
                Some(kiln_core::digest_path(Path::new(s))?)
            } else {
                None
            };
            sources.push(serde_json::json!({"source": basename(s), "dir_contents": s.ends_with('/'), "digest": digest}));
        }
        Ok(serde_json::json!({
            "sources": sources,
            "content": self.content.as_deref().map(kiln_core::text_digest),
            "destination": self.destination,
            "download": self.download,
        }))
    }

    fn provision(&self, comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
        let comm = comm.ok_or_else(|| {
            Error::failed(
                "the file provisioner needs a communicator (communicator = \"none\" has none)",
            )
        })?;
        if let Some(content) = &self.content {
            cx.em
                .say(format!("uploading content to {}", self.destination));
            return comm.upload(&Source::Bytes(content.as_bytes()), &self.destination, 0o644);
        }
        let many = self.sources.len() > 1;
        for src in &self.sources {
            cx.cancel.check()?;
            if self.download {
                let local = if self.destination.ends_with('/') || many {
                    PathBuf::from(&self.destination).join(basename(src))
                } else {
                    PathBuf::from(&self.destination)
                };
                if let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
                }
                cx.em
                    .say(format!("downloading {src} => {}", local.display()));
                let tmp = local.with_extension("kiln-part");
                let mut f = std::fs::File::create(&tmp)
                    .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
                let r = comm.download(src, &mut f);
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                    return r;
                }
                std::fs::rename(&tmp, &local)
                    .map_err(|e| Error::io(format!("cannot write {}", local.display()), e))?;
                continue;
            }
            let p = Path::new(src);
            let meta = std::fs::metadata(p)
                .map_err(|e| Error::io(format!("cannot read source {src}"), e))?;
            if meta.is_dir() {
                let dest = if src.ends_with('/') {
                    self.destination.clone()
                } else {
                    format!(
                        "{}/{}",
                        self.destination.trim_end_matches('/'),
                        basename(src)
                    )
                };
                cx.em.say(format!("uploading directory {src} => {dest}"));
                upload_dir(comm, cx, p, &dest)?;
            } else {
                let dest = if self.destination.ends_with('/') || many {
                    format!(
                        "{}/{}",
                        self.destination.trim_end_matches('/'),
                        basename(src)
                    )
                } else {
                    self.destination.clone()
                };
                cx.em.say(format!("uploading {src} => {dest}"));
                comm.upload(&Source::File(p), &dest, meta.permissions().mode() & 0o7777)?;
            }
        }
        Ok(())
    }
}
