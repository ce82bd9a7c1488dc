//! Packer's legacy JSON templates: `variables`, `sensitive-variables`, `builders`, `provisioners`
//! and `post-processors` (a string, an object, or a nested array = a chain), with `{{ }}`
//! interpolation. Produces the same Plan as HCL2.

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::gotmpl::{render, GoCtx};
use crate::jsonspan::{Node, NodeValue};
use crate::plan::{Attr, BuildPlan, Component, Plan, Step, StepCommon, TemplateFile, VarInfo};
use crate::LoadOptions;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TOP_KEYS: &[&str] = &[
    "description",
    "min_packer_version",
    "variables",
    "sensitive-variables",
    "builders",
    "provisioners",
    "post-processors",
];

struct Cx<'a> {
    file: Arc<Path>,
    text: &'a str,
    diags: Diagnostics,
}

impl Cx<'_> {
    fn span(&self, offset: usize) -> Span {
        Span::from_offset(&self.file, self.text, offset)
    }
    fn err(&mut self, msg: impl Into<String>, offset: usize, hint: Option<&str>) {
        let mut d = Diagnostic::error(msg, Some(self.span(offset)));
        d.hint = hint.map(str::to_string);
        self.diags.push(d);
    }
}

pub(crate) fn load(path: &Path, opts: &LoadOptions, root: PathBuf) -> (Option<Plan>, Diagnostics) {
    let text = match crate::read_text(path) {
        Ok(t) => t,
        Err(d) => return (None, Diagnostics(vec![d])),
    };
    let mut cx = Cx {
        file: Arc::from(path),
        text: &text,
        diags: Diagnostics::default(),
    };
    let doc = match crate::jsonspan::parse(&text) {
        Ok(d) => d,
        Err(e) => {
            cx.err(
                format!("invalid JSON: {}", e.message),
                e.offset,
                Some("a legacy template is one JSON object; run it through a JSON linter"),
            );
            return (None, cx.diags);
        }
    };
    let NodeValue::Object(top) = &doc.value else {
        cx.err("a legacy template must be a JSON object", doc.offset, None);
        return (None, cx.diags);
    };
    let mut plan = Plan {
        format: "json",
        root: root.clone(),
        files: vec![TemplateFile {
            path: path.to_path_buf(),
            sha256: crate::sha256_hex(text.as_bytes()),
        }],
        variables: Vec::new(),
        builds: Vec::new(),
        sensitive_values: Vec::new(),
    };
    for (k, _) in top {
        if !TOP_KEYS.contains(&k.text.as_str()) && !k.text.starts_with('_') {
            let hint = did_you_mean(&k.text, TOP_KEYS.iter().copied())
                .map(|s| format!("did you mean {s:?}?"));
            cx.err(
                format!("unknown top-level key {:?}", k.text),
                k.offset,
                hint.as_deref(),
            );
        }
    }
    if opts.syntax_only {
        let ok = !cx.diags.has_errors();
        return (ok.then_some(plan), cx.diags);
    }
    if let Some(n) = doc.get("min_packer_version") {
        if let NodeValue::String(v) = &n.value {
            if let Err(m) = crate::version::check(&format!(">= {v}"), crate::PACKER_COMPAT_VERSION)
            {
                cx.err(m, n.offset, None);
            }
        }
    }
    let now = crate::timefmt::now_unix();
    let template_dir = root.to_string_lossy().into_owned();
    let vars = variables(&mut cx, &doc, opts, now, &template_dir);
    plan.variables = vars.infos;
    plan.sensitive_values = vars.sensitive_values;
    plan.builds = builds(&mut cx, &doc, opts, &vars.user, now, &template_dir);
    let ok = !cx.diags.has_errors();
    (ok.then_some(plan), cx.diags)
}

/// The variables' values after defaults, the environment, var-files and -var, in Packer's order.
struct Vars {
    user: HashMap<String, String>,
    infos: Vec<VarInfo>,
    sensitive_values: Vec<String>,
}

fn variables(
    cx: &mut Cx<'_>,
    doc: &Node,
    opts: &LoadOptions,
    now: i64,
    template_dir: &str,
) -> Vars {
    let sensitive: Vec<String> = match doc.get("sensitive-variables").map(|n| n.to_json()) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            cx.err(
                "\"sensitive-variables\" must be a list of variable names",
                doc.key_offset("sensitive-variables").unwrap_or(0),
                None,
            );
            Vec::new()
        }
        None => Vec::new(),
    };
    let mut user: HashMap<String, String> = HashMap::new();
    let mut declared: Vec<(String, usize, Option<String>)> = Vec::new();
    if let Some(vars) = doc.get("variables") {
        match &vars.value {
            NodeValue::Object(entries) => {
                for (k, v) in entries {
                    let default = match &v.value {
                        NodeValue::Null => None,
                        NodeValue::String(s) => {
                            let gc = GoCtx {
                                user: &user,
                                env_allowed: true,
                                template_dir: template_dir.to_string(),
                                build_name: None,
                                build_type: None,
                                now,
                            };
                            match render(s, &gc) {
                                Ok(r) => Some(r),
                                Err(m) => {
                                    cx.err(m, v.offset, None);
                                    Some(String::new())
                                }
                            }
                        }
                        NodeValue::Bool(b) => Some(b.to_string()),
                        NodeValue::Number(n) => Some(n.to_string()),
                        _ => {
                            cx.err(format!("variable {:?} must have a string default (or null when required)", k.text), v.offset, None);
                            None
                        }
                    };
                    if let Some(d) = &default {
                        user.insert(k.text.clone(), d.clone());
                    }
                    declared.push((k.text.clone(), k.offset, default));
                }
            }
            _ => cx.err(
                "\"variables\" must be an object of name: default",
                vars.offset,
                None,
            ),
        }
    }
    let mut origins: HashMap<String, &'static str> = HashMap::new();
    let names: Vec<String> = declared.iter().map(|d| d.0.clone()).collect();
    for (k, v) in &opts.env {
        for prefix in ["PKR_VAR_", "KILN_VAR_"] {
            if let Some(name) = k.strip_prefix(prefix) {
                if names.contains(&name.to_string()) {
                    user.insert(name.to_string(), v.clone());
                    origins.insert(name.to_string(), "env");
                }
            }
        }
    }
    for f in &opts.var_files {
        apply_json_var_file(f, &names, &mut user, &mut origins, &mut cx.diags);
    }
    for (name, value) in &opts.vars {
        if names.contains(name) {
            user.insert(name.clone(), value.clone());
            origins.insert(name.clone(), "-var");
        } else {
            let hint = did_you_mean(name, names.iter().map(String::as_str))
                .map(|s| format!("did you mean {s}?"))
                .unwrap_or_else(|| "declare it in \"variables\"".into());
            cx.diags.push(
                Diagnostic::error(
                    format!("-var {name}=…: the template declares no variable {name:?}"),
                    None,
                )
                .with_hint(hint),
            );
        }
    }
    for (name, offset, _) in &declared {
        if !user.contains_key(name) {
            // An empty value keeps later {{user}} references from repeating this error.
            user.insert(name.clone(), String::new());
            cx.err(
                format!("required variable {name:?} has no value"),
                *offset,
                Some(&format!("set it with -var {name}=... or a -var-file")),
            );
        }
    }
    for s in &sensitive {
        if !names.contains(s) {
            let off = doc.key_offset("sensitive-variables").unwrap_or(0);
            cx.err(
                format!("sensitive variable {s:?} is not declared in \"variables\""),
                off,
                None,
            );
        }
    }
    let infos = declared
        .iter()
        .map(|(name, _, _)| VarInfo {
            name: name.clone(),
            value: serde_json::Value::String(user.get(name).cloned().unwrap_or_default()),
            type_expr: None,
            description: None,
            sensitive: sensitive.contains(name),
            origin: origins.get(name).copied().unwrap_or("default").to_string(),
        })
        .collect();
    let sensitive_values = sensitive
        .iter()
        .filter_map(|s| user.get(s))
        .filter(|v| !v.is_empty())
        .cloned()
        .collect();
    Vars {
        user,
        infos,
        sensitive_values,
    }
}

/// One BuildPlan per builder -only/-except keeps, each with the template's provisioners and
/// post-processor chains rendered for it.
fn builds(
    cx: &mut Cx<'_>,
    doc: &Node,
    opts: &LoadOptions,
    user: &HashMap<String, String>,
    now: i64,
    template_dir: &str,
) -> Vec<BuildPlan> {
    let mut out = Vec::new();
    let builders: Vec<&Node> = match doc.get("builders") {
        Some(Node {
            value: NodeValue::Array(items),
            ..
        }) => items.iter().collect(),
        Some(n) => {
            cx.err(
                "\"builders\" must be a list of builder objects",
                n.offset,
                None,
            );
            Vec::new()
        }
        None => {
            cx.err(
                "the template has no \"builders\"",
                doc.offset,
                Some("add \"builders\": [{\"type\": \"qemu\", ...}]"),
            );
            Vec::new()
        }
    };
    let mut seen_names: Vec<String> = Vec::new();
    for b in builders {
        let Some(kind) = b.get("type").and_then(|t| {
            if let NodeValue::String(s) = &t.value {
                Some(s.clone())
            } else {
                None
            }
        }) else {
            cx.err(
                "every builder needs a \"type\"",
                b.offset,
                Some("e.g. \"type\": \"qemu\""),
            );
            continue;
        };
        let name = match b.get("name").map(|n| &n.value) {
            Some(NodeValue::String(s)) => s.clone(),
            _ => kind.clone(),
        };
        if seen_names.contains(&name) {
            cx.err(
                format!("two builders are named {name:?}"),
                b.offset,
                Some("give each builder a unique \"name\""),
            );
            continue;
        }
        seen_names.push(name.clone());
        // A legacy build answers to its name and to TYPE.NAME: -only keeps it when either
        // matches, -except drops it when either matches.
        let names = [name.clone(), format!("{kind}.{name}")];
        let kept = opts.only.is_empty()
            || names
                .iter()
                .any(|n| !crate::selected(&[], &opts.only, n, None));
        let dropped = names
            .iter()
            .any(|n| !crate::selected(&[], &opts.except, n, None));
        if !kept || dropped {
            continue;
        }
        let gc = GoCtx {
            user,
            env_allowed: false,
            template_dir: template_dir.to_string(),
            build_name: Some(name.clone()),
            build_type: Some(kind.clone()),
            now,
        };
        let builder = component(cx, b, &kind, Some(name.clone()), &gc, &["type", "name"]);
        let mut provisioners = Vec::new();
        if let Some(list) = doc.get("provisioners") {
            match &list.value {
                NodeValue::Array(items) => {
                    for p in items {
                        if let Some(s) = step(cx, p, &name, &gc) {
                            provisioners.push(s);
                        }
                    }
                }
                _ => cx.err("\"provisioners\" must be a list", list.offset, None),
            }
        }
        let mut post = Vec::new();
        if let Some(list) = doc.get("post-processors") {
            match &list.value {
                NodeValue::Array(items) => {
                    for item in items {
                        let chain: Vec<Step> = match &item.value {
                            NodeValue::Array(inner) => inner
                                .iter()
                                .filter_map(|p| step(cx, p, &name, &gc))
                                .collect(),
                            _ => step(cx, item, &name, &gc).into_iter().collect(),
                        };
                        if !chain.is_empty() {
                            post.push(chain);
                        }
                    }
                }
                _ => cx.err("\"post-processors\" must be a list", list.offset, None),
            }
        }
        out.push(BuildPlan {
            full_name: name,
            build_name: None,
            builder,
            provisioners,
            error_cleanup: None,
            post_processors: post,
        });
    }
    out
}

fn apply_json_var_file(
    f: &Path,
    names: &[String],
    user: &mut HashMap<String, String>,
    origins: &mut HashMap<String, &'static str>,
    diags: &mut Diagnostics,
) {
    let text = match crate::read_text(f) {
        Ok(t) => t,
        Err(d) => return diags.push(d),
    };
    let arc: Arc<Path> = Arc::from(f);
    match crate::jsonspan::parse(&text) {
        Ok(Node {
            value: NodeValue::Object(entries),
            ..
        }) => {
            for (k, v) in entries {
                let value = match v.to_json() {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                if names.contains(&k.text) {
                    user.insert(k.text.clone(), value);
                    origins.insert(k.text.clone(), "var-file");
                } else {
                    diags.push(Diagnostic::warning(
                        format!(
                            "variables file sets {:?}, which the template does not declare",
                            k.text
                        ),
                        Some(Span::from_offset(&arc, &text, k.offset)),
                    ));
                }
            }
        }
        Ok(n) => diags.push(Diagnostic::error(
            "a variables file for a JSON template must be a JSON object",
            Some(Span::from_offset(&arc, &text, n.offset)),
        )),
        Err(e) => diags.push(Diagnostic::error(
            format!("invalid JSON: {}", e.message),
            Some(Span::from_offset(&arc, &text, e.offset)),
        )),
    }
}

/// Interpolates every string in a value.
fn interpolate(cx: &mut Cx<'_>, n: &Node, gc: &GoCtx<'_>) -> serde_json::Value {
    match &n.value {
        NodeValue::String(s) => match render(s, gc) {
            Ok(r) => serde_json::Value::String(r),
            Err(m) => {
                cx.err(m, n.offset, None);
                serde_json::Value::Null
            }
        },
        NodeValue::Array(items) => {
            serde_json::Value::Array(items.iter().map(|i| interpolate(cx, i, gc)).collect())
        }
        NodeValue::Object(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.text.clone(), interpolate(cx, v, gc)))
                .collect(),
        ),
        _ => n.to_json(),
    }
}

fn component(
    cx: &mut Cx<'_>,
    n: &Node,
    kind: &str,
    name: Option<String>,
    gc: &GoCtx<'_>,
    skip: &[&str],
) -> Component {
    let mut attrs = IndexMap::new();
    if let NodeValue::Object(entries) = &n.value {
        for (k, v) in entries {
            if skip.contains(&k.text.as_str()) || k.text.starts_with('_') {
                continue;
            }
            let value = interpolate(cx, v, gc);
            attrs.insert(
                k.text.clone(),
                Attr {
                    value,
                    span: cx.span(k.offset),
                },
            );
        }
    }
    Component {
        kind: kind.to_string(),
        name,
        span: cx.span(n.offset),
        attrs,
    }
}

/// A provisioner or post-processor for builder `build`, or None when only/except leave it out.
fn step(cx: &mut Cx<'_>, n: &Node, build: &str, gc: &GoCtx<'_>) -> Option<Step> {
    let kind = match &n.value {
        NodeValue::String(s) => {
            return Some(Step {
                component: Component {
                    kind: s.clone(),
                    name: None,
                    span: cx.span(n.offset),
                    attrs: IndexMap::new(),
                },
                common: StepCommon::default(),
            })
        }
        NodeValue::Object(_) => match n.get("type").map(|t| &t.value) {
            Some(NodeValue::String(s)) => s.clone(),
            _ => {
                cx.err(
                    "every provisioner and post-processor needs a \"type\"",
                    n.offset,
                    Some("e.g. \"type\": \"shell\""),
                );
                return None;
            }
        },
        _ => {
            cx.err("expected an object with a \"type\"", n.offset, None);
            return None;
        }
    };
    let list = |key: &str| -> Vec<String> {
        n.get(key)
            .map(|v| v.to_json())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let common = StepCommon {
        only: list("only"),
        except: list("except"),
        pause_before: n
            .get("pause_before")
            .and_then(|v| v.to_json().as_str().map(str::to_string)),
        max_retries: n
            .get("max_retries")
            .map(|v| v.to_json())
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        timeout: n
            .get("timeout")
            .and_then(|v| v.to_json().as_str().map(str::to_string)),
        keep_input_artifact: n
            .get("keep_input_artifact")
            .and_then(|v| v.to_json().as_bool()),
    };
    if (!common.only.is_empty() && !common.only.iter().any(|o| o == build))
        || common.except.iter().any(|e| e == build)
    {
        return None;
    }
    let mut c = component(
        cx,
        n,
        &kind,
        None,
        gc,
        &[
            "type",
            "only",
            "except",
            "pause_before",
            "max_retries",
            "timeout",
            "keep_input_artifact",
            "override",
            "name",
        ],
    );
    c.name = n
        .get("name")
        .and_then(|v| v.to_json().as_str().map(str::to_string));
    if let Some(ov) = n.get("override").and_then(|o| o.get(build)) {
        if let NodeValue::Object(entries) = &ov.value {
            for (k, v) in entries {
                let value = interpolate(cx, v, gc);
                c.attrs.insert(
                    k.text.clone(),
                    Attr {
                        value,
                        span: cx.span(k.offset),
                    },
                );
            }
        }
    }
    Some(Step {
        component: c,
        common,
    })
}

#[cfg(test)]
mod tests {
    use crate::{load, LoadOptions, Plan};

    fn load_json(name: &str, text: &str, opts: &LoadOptions) -> (Option<Plan>, String) {
        let dir = std::env::temp_dir().join(format!("kiln-legacy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("t.json");
        std::fs::write(&p, text).expect("write");
        let (plan, d) = load(&p, opts);
        let _ = std::fs::remove_dir_all(&dir);
        (plan, d.to_string())
    }

    const T: &str = r#"{
  "variables": {"mem": "512", "token": "tok-123456789", "name": "img"},
  "sensitive-variables": ["token"],
  "builders": [
    {"type": "qemu", "name": "one", "memory": "{{user `mem`}}", "vm_name": "{{user `name`}}-{{build_name}}"},
    {"type": "qemu", "name": "two", "memory": 256}
  ],
  "provisioners": [{"type": "shell", "inline": ["echo {{build_name}} {{build_type}}"], "only": ["two"]}],
  "post-processors": ["manifest", [{"type": "checksum"}, {"type": "compress"}]]
}"#;

    #[test]
    fn builders_provisioners_and_post_processor_chains_render_per_build() {
        let opts = LoadOptions {
            vars: vec![("mem".into(), "1024".into())],
            ..LoadOptions::default()
        };
        let (plan, d) = load_json("render", T, &opts);
        let plan = plan.unwrap_or_else(|| panic!("{d}"));
        assert_eq!(plan.format, "json");
        let one = &plan.builds[0];
        assert_eq!(one.full_name, "one");
        assert_eq!(one.builder.get("memory"), Some(&serde_json::json!("1024")));
        assert_eq!(
            one.builder.get("vm_name"),
            Some(&serde_json::json!("img-one"))
        );
        // The provisioner's `only` keeps it to build "two".
        assert!(one.provisioners.is_empty());
        let two = &plan.builds[1];
        assert_eq!(
            two.provisioners[0].component.get("inline"),
            Some(&serde_json::json!(["echo two qemu"]))
        );
        // A string is a chain of one; a nested list is one chain.
        let chains: Vec<usize> = two.post_processors.iter().map(Vec::len).collect();
        assert_eq!(chains, [1, 2]);
        assert_eq!(plan.sensitive_values, ["tok-123456789"]);
    }

    #[test]
    fn only_selects_builders_and_mistakes_point_at_their_key() {
        let opts = LoadOptions {
            only: vec!["two".into()],
            ..LoadOptions::default()
        };
        let (plan, _) = load_json("only", T, &opts);
        assert_eq!(plan.map(|p| p.builds.len()), Some(1));
        // -except drops builds by name or TYPE.NAME (it used to keep them all).
        for except in [vec!["one".to_string()], vec!["qemu.one".to_string()]] {
            let opts = LoadOptions {
                except,
                ..LoadOptions::default()
            };
            let (plan, d) = load_json("except", T, &opts);
            let names: Vec<String> = plan
                .unwrap_or_else(|| panic!("{d}"))
                .builds
                .into_iter()
                .map(|b| b.full_name)
                .collect();
            assert_eq!(names, ["two"]);
        }
        let (plan, d) = load_json(
            "typo",
            "{\n  \"builderz\": [],\n  \"builders\": [{\"type\": \"qemu\"}]\n}",
            &LoadOptions::default(),
        );
        assert!(plan.is_none());
        assert!(
            d.contains("t.json:2:3: unknown top-level key \"builderz\""),
            "{d}"
        );
        assert!(d.contains("did you mean \"builders\"?"), "{d}");
        let (_, d) = load_json(
            "novalue",
            "{\"variables\": {\"v\": null}, \"builders\": [{\"type\": \"qemu\"}]}",
            &LoadOptions::default(),
        );
        assert!(d.contains("required variable \"v\" has no value"), "{d}");
    }
}
