//! The Plan: plain, fully evaluated data. Nothing past this point knows about HCL or JSON
//! templates; the engine decodes each `Component` into the typed config of its builder,
//! provisioner or post-processor.

use crate::diag::Span;
use indexmap::IndexMap;
use serde_json::Value;
use std::path::PathBuf;

/// One evaluated attribute with the place it was written.
#[derive(Debug, Clone)]
pub struct Attr {
    pub value: Value,
    pub span: Span,
}

/// A builder source, provisioner or post-processor, with its evaluated options.
#[derive(Debug, Clone)]
pub struct Component {
    /// The plugin type, e.g. `qemu`, `shell`, `manifest`.
    pub kind: String,
    /// The block's name (`source "qemu" "NAME"`, `provisioner "shell" { name = ... }`).
    pub name: Option<String>,
    /// Where the block starts.
    pub span: Span,
    pub attrs: IndexMap<String, Attr>,
}

impl Component {
    /// A component of `kind` named `x` with these attributes, all placed at `t.pkr.hcl` (no
    /// line): what unit tests of plugins decode, instead of a template on disk.
    pub fn from_pairs(kind: &str, pairs: &[(&str, Value)]) -> Component {
        let span = Span::file_only(std::path::Path::new("t.pkr.hcl"));
        Component {
            kind: kind.to_string(),
            name: Some("x".into()),
            span: span.clone(),
            attrs: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Attr {
                            value: v.clone(),
                            span: span.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The attributes as one JSON object, for decoding into a typed config.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.attrs
                .iter()
                .map(|(k, a)| (k.clone(), a.value.clone()))
                .collect(),
        )
    }

    /// The span of attribute `key`, else of the block.
    pub fn span_of(&self, key: &str) -> &Span {
        self.attrs.get(key).map_or(&self.span, |a| &a.span)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attrs.get(key).map(|a| &a.value)
    }
}

/// Options every provisioner and post-processor takes (Packer's common options), taken out of the
/// component so the plugin's own config only holds its own options.
#[derive(Debug, Clone, Default)]
pub struct StepCommon {
    pub only: Vec<String>,
    pub except: Vec<String>,
    pub pause_before: Option<String>,
    pub max_retries: u32,
    pub timeout: Option<String>,
    pub keep_input_artifact: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub component: Component,
    pub common: StepCommon,
}

/// One build to run: a source (builder) and what runs on it.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// `TYPE.NAME` as Packer names it, e.g. `qemu.tiny` (what -only/-except match).
    pub full_name: String,
    /// The `build` block's name, if any.
    pub build_name: Option<String>,
    pub builder: Component,
    pub provisioners: Vec<Step>,
    pub error_cleanup: Option<Step>,
    /// Each inner list is a chain of post-processors.
    pub post_processors: Vec<Vec<Step>>,
}

impl BuildPlan {
    /// The source's name (the part after the type).
    pub fn source_name(&self) -> &str {
        self.full_name
            .split_once('.')
            .map_or(&self.full_name[..], |(_, n)| n)
    }
}

/// A declared variable after values were applied.
#[derive(Debug, Clone)]
pub struct VarInfo {
    pub name: String,
    pub value: Value,
    pub type_expr: Option<String>,
    pub description: Option<String>,
    pub sensitive: bool,
    /// Where the value came from: default, env, var-file, -var.
    pub origin: String,
}

/// Template file that went into the plan (for manifests and cache keys).
#[derive(Debug, Clone)]
pub struct TemplateFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// A template, fully evaluated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `hcl2` or `json`.
    pub format: &'static str,
    /// Directory of the template (`path.root`, `{{template_dir}}`).
    pub root: PathBuf,
    pub files: Vec<TemplateFile>,
    pub variables: Vec<VarInfo>,
    pub builds: Vec<BuildPlan>,
    /// Every sensitive value, so that logs and errors can mask it.
    pub sensitive_values: Vec<String>,
}

impl Plan {
    /// Replaces every sensitive value in `s` with `<sensitive>`.
    pub fn redact(&self, s: &str) -> String {
        redact(&self.sensitive_values, s)
    }
}

/// Replaces every occurrence of any of `secrets` in `s` with `<sensitive>`.
pub fn redact(secrets: &[String], s: &str) -> String {
    let mut out = s.to_string();
    for secret in secrets {
        if !secret.is_empty() {
            out = out.replace(secret.as_str(), "<sensitive>");
        }
    }
    out
}
