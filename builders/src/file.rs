//! The `file` builder, as Packer's: no VM. Its artifact is one file, copied from `source` or
//! written from `content` to `target`, for post-processors to work on. The file appears whole or
//! not at all (written beside the target, then renamed). Its builds are not stored or cached.

use kiln_core::config::{decode, Text};
use kiln_core::plugins::{BuildContext, Made};
use kiln_core::{
    BuildMeta, Builder, Built, Cancel, Communicator, Emitter, Error, Machine, Output, Publish,
    Result,
};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    /// A file to copy to `target`.
    pub source: Option<Text>,
    /// Text to write to `target`.
    pub content: Option<Text>,
    /// The artifact's path (required); missing directories are created.
    pub target: Option<Text>,
}

pub struct FileBuilder {
    from: From,
    target: PathBuf,
}

enum From {
    Source(PathBuf),
    Content(String),
}

pub fn make(c: &Component, _: &BuildContext<'_>) -> Made<dyn Builder> {
    let cfg: FileConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    let from = match (cfg.source, cfg.content) {
        (Some(s), None) => {
            if let Err(e) = std::fs::metadata(s.as_str()).and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("it is not a file"))
                }
            }) {
                d.push(Diagnostic::error(
                    format!("source {} cannot be read: {e}", s.as_str()),
                    Some(c.span_of("source").clone()),
                ));
            }
            Some(From::Source(PathBuf::from(s.0)))
        }
        (None, Some(t)) => Some(From::Content(t.0)),
        (Some(_), Some(_)) => {
            d.push(Diagnostic::error(
                "the file builder takes source or content, not both",
                Some(c.span_of("content").clone()),
            ));
            None
        }
        (None, None) => {
            d.push(
                Diagnostic::error(
                    "the file builder needs source (a file to copy) or content (text to write)",
                    Some(c.span.clone()),
                )
                .with_hint("add `content = \"...\"` or `source = \"path\"`"),
            );
            None
        }
    };
    let target = match cfg.target {
        Some(t) if !t.is_empty() => Some(PathBuf::from(t.0)),
        _ => {
            d.push(
                Diagnostic::error(
                    "the file builder needs target: the file to create",
                    Some(c.span.clone()),
                )
                .with_hint("add `target = \"out/file.txt\"`"),
            );
            None
        }
    };
    match (from, target) {
        (Some(from), Some(target)) if !d.has_errors() => Ok((
            Box::new(FileBuilder { from, target }),
            Diagnostics::default(),
        )),
        _ => Err(d),
    }
}

impl Builder for FileBuilder {
    fn kind(&self) -> &str {
        "file"
    }
    fn preflight(&self, _: bool) -> Result<()> {
        Ok(())
    }
    fn publish(&self) -> Option<Publish> {
        None
    }
    fn key_inputs(&self, _: &Emitter, _: &Cancel) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    fn launch(&self, _: &Emitter, _: &Cancel) -> Result<Box<dyn Machine>> {
        Ok(Box::new(FileMachine {
            from: match &self.from {
                From::Source(p) => From::Source(p.clone()),
                From::Content(t) => From::Content(t.clone()),
            },
            target: self.target.clone(),
            vars: BTreeMap::new(),
        }))
    }
}

struct FileMachine {
    from: From,
    target: PathBuf,
    vars: BTreeMap<String, String>,
}

/// Writes `from` to `target` through a temporary file beside it, renamed into place.
fn write_whole(from: &From, target: &Path) -> Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kiln-{}", std::process::id()));
    let res = match from {
        From::Source(p) => std::fs::copy(p, &tmp)
            .map(|_| ())
            .map_err(|e| Error::io(format!("cannot copy {}", p.display()), e)),
        From::Content(t) => std::fs::write(&tmp, t)
            .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e)),
    }
    .and_then(|()| {
        std::fs::rename(&tmp, target)
            .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

impl Machine for FileMachine {
    fn communicator(&mut self) -> Option<&mut dyn Communicator> {
        None
    }
    fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
    fn access(&self) -> String {
        "no machine (file builder)".into()
    }
    fn shutdown(self: Box<Self>, em: &Emitter, _: &Cancel, _: &Path) -> Result<Built> {
        write_whole(&self.from, &self.target)?;
        em.say(format!("wrote {}", self.target.display()));
        Ok(Built {
            output: Output::Files {
                id: self.target.display().to_string(),
                files: vec![self.target.clone()],
            },
            meta: BuildMeta::default(),
        })
    }
}
