//! HCL2 templates as Packer reads them: a file or a directory of `*.pkr.hcl` files, variables with
//! types, defaults, validation and the documented precedence, locals in dependency order, sources,
//! and build blocks with overrides, provisioners and post-processor chains.

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::eval::{evaluate, from_json, references, to_json, undeclared_message};
use crate::plan::{Attr, BuildPlan, Component, Plan, Step, StepCommon, TemplateFile, VarInfo};
use crate::types::Type;
use crate::{funcs, glob_match, LoadOptions, PACKER_COMPAT_VERSION};
use hcl::edit::expr::Expression as EditExpr;
use hcl::edit::structure::{Block, Body, Structure};
use hcl::edit::Span as _;
use hcl::eval::Context;
use hcl::{Map, Value};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct SrcFile {
    path: Arc<Path>,
    text: String,
    body: Body,
}

struct Var {
    name: String,
    span: Span,
    ty: Option<Type>,
    type_text: Option<String>,
    default: Option<Value>,
    description: Option<String>,
    sensitive: bool,
    nullable: bool,
    /// (file, condition, error message expr)
    validations: Vec<(usize, EditExpr, Option<EditExpr>)>,
    value: Option<Value>,
    origin: &'static str,
}

struct Local {
    file: usize,
    expr: EditExpr,
    span: Span,
    sensitive: bool,
}

struct SourceDef {
    kind: String,
    name: String,
    file: usize,
    block: Block,
}

const TOP_BLOCKS: &[&str] = &[
    "packer",
    "variable",
    "variables",
    "locals",
    "local",
    "source",
    "build",
    "data",
];
const BUILD_BLOCKS: &[&str] = &[
    "source",
    "provisioner",
    "error-cleanup-provisioner",
    "post-processor",
    "post-processors",
    "hcp_packer_registry",
];
const COMMON_STEP_KEYS: &[&str] = &[
    "only",
    "except",
    "pause_before",
    "max_retries",
    "timeout",
    "override",
    "name",
    "keep_input_artifact",
];

/// A source a build names: (source key, label span, override body, name override).
type Instance = (String, Span, Option<Body>, Option<String>);

pub(crate) struct Loader<'o> {
    opts: &'o LoadOptions,
    diags: Diagnostics,
    files: Vec<SrcFile>,
    root: PathBuf,
    vars: IndexMap<String, Var>,
    locals: IndexMap<String, Local>,
    local_values: Map<String, Value>,
    sensitive_locals: Vec<String>,
    /// Raw text given for sensitive variables (-var, env, var-files), valid or not: masked in
    /// every diagnostic.
    raw_sensitive: Vec<String>,
    /// Variables whose given value was refused (so "has no value" is not said as well).
    refused: Vec<String>,
    sources: IndexMap<String, SourceDef>,
    /// `data` blocks by `TYPE.NAME`, and the results of those evaluated.
    datas: IndexMap<String, SourceDef>,
    data_values: IndexMap<String, Value>,
    builds: Vec<(usize, Block)>,
    unknown_plugins: Vec<(String, Span)>,
}

impl<'o> Loader<'o> {
    pub(crate) fn new(opts: &'o LoadOptions, root: PathBuf) -> Self {
        Loader {
            opts,
            diags: Diagnostics::default(),
            files: Vec::new(),
            root,
            vars: IndexMap::new(),
            locals: IndexMap::new(),
            local_values: Map::new(),
            sensitive_locals: Vec::new(),
            raw_sensitive: Vec::new(),
            refused: Vec::new(),
            sources: IndexMap::new(),
            datas: IndexMap::new(),
            data_values: IndexMap::new(),
            builds: Vec::new(),
            unknown_plugins: Vec::new(),
        }
    }

    fn span(&self, file: usize, range: Option<std::ops::Range<usize>>) -> Span {
        let f = &self.files[file];
        match range {
            Some(r) => Span::from_offset(&f.path, &f.text, r.start),
            None => Span::file_only(&f.path),
        }
    }

    fn err(&mut self, msg: impl Into<String>, span: Span, hint: Option<String>) {
        let mut d = Diagnostic::error(msg, Some(span));
        d.hint = hint;
        self.diags.push(d);
    }

    /// Reads and parses one file; a parse error becomes a diagnostic.
    pub(crate) fn add_file(&mut self, path: &Path) -> Option<usize> {
        let text = match crate::read_text(path) {
            Ok(t) => t,
            Err(d) => {
                self.diags.push(d);
                return None;
            }
        };
        let arc: Arc<Path> = Arc::from(path);
        match hcl::edit::parser::parse_body(&text) {
            Ok(body) => {
                self.files.push(SrcFile {
                    path: arc,
                    text,
                    body,
                });
                Some(self.files.len() - 1)
            }
            Err(e) => {
                let loc = e.location();
                let span = Span::from_offset(&arc, &text, loc.offset());
                let msg = format!("syntax error: {}", e.message());
                let hint = if e.message().contains("redefined attribute") {
                    "an attribute may be set only once per block: remove one of the two"
                } else {
                    "check the brackets, quotes and `=` signs around this position"
                };
                self.diags
                    .push(Diagnostic::error(msg, Some(span)).with_hint(hint));
                None
            }
        }
    }

    pub(crate) fn run(mut self, var_files: &[PathBuf]) -> (Option<Plan>, Diagnostics) {
        if self.opts.syntax_only {
            let ok = !self.diags.has_errors();
            return (ok.then(|| self.empty_plan()), self.diags);
        }
        for i in 0..self.files.len() {
            self.collect(i);
        }
        self.apply_values(var_files);
        let var_obj = self.finish_vars();
        self.eval_locals(&var_obj);
        let builds = self.expand_builds(&var_obj);
        let mut plan = self.empty_plan();
        plan.builds = builds;
        plan.variables = self
            .vars
            .values()
            .map(|v| VarInfo {
                name: v.name.clone(),
                value: to_json(v.value.as_ref().unwrap_or(&Value::Null)),
                type_expr: v.type_text.clone(),
                description: v.description.clone(),
                sensitive: v.sensitive,
                origin: v.origin.to_string(),
            })
            .collect();
        let mut secrets = Vec::new();
        for v in self.vars.values().filter(|v| v.sensitive) {
            collect_strings(v.value.as_ref().unwrap_or(&Value::Null), &mut secrets);
        }
        for name in &self.sensitive_locals {
            collect_strings(
                self.local_values.get(name).unwrap_or(&Value::Null),
                &mut secrets,
            );
        }
        secrets.extend(self.raw_sensitive.iter().cloned());
        self.diags.redact(&secrets);
        plan.sensitive_values = secrets;
        if !self.unknown_plugins.is_empty() {
            let filtered = !self.opts.only.is_empty() || !self.opts.except.is_empty();
            for (name, span) in std::mem::take(&mut self.unknown_plugins) {
                let msg = format!(
                    "required plugin {name:?} is not built into kiln (built in: {})",
                    self.opts.plugins.as_deref().unwrap_or_default().join(", ")
                );
                let d = if filtered {
                    Diagnostic::warning(msg, Some(span))
                } else {
                    Diagnostic::error(msg, Some(span))
                };
                self.diags.push(d.with_hint(
                    "use -only to build just the sources kiln supports, e.g. -only='qemu.*'",
                ));
            }
        }
        let ok = !self.diags.has_errors();
        (ok.then_some(plan), self.diags)
    }

    /// An invalid value for a sensitive variable: says what is wrong without the value, and
    /// replaces the shown source line.
    fn sensitive_value_error(&mut self, name: &str, origin: &str, span: Option<Span>) {
        let ty = self
            .vars
            .get(name)
            .and_then(|v| v.type_text.clone())
            .unwrap_or_else(|| "string".into());
        self.refused.push(name.to_string());
        let span = span.map(|mut s| {
            s.text = std::sync::Arc::from(format!("{name} = <sensitive>").as_str());
            s.col = 1;
            s
        });
        self.diags.push(Diagnostic::error(
            format!("invalid value for sensitive variable {name:?} (from {origin}): it is not a valid {ty} (the value is not shown)"),
            span,
        ));
    }

    fn empty_plan(&self) -> Plan {
        Plan {
            format: "hcl2",
            root: self.root.clone(),
            files: self
                .files
                .iter()
                .map(|f| TemplateFile {
                    path: f.path.to_path_buf(),
                    sha256: crate::sha256_hex(f.text.as_bytes()),
                })
                .collect(),
            variables: Vec::new(),
            builds: Vec::new(),
            sensitive_values: Vec::new(),
        }
    }

    fn base_ctx(&self, with_env: bool) -> Context<'static> {
        let mut ctx = Context::new();
        funcs::register(&mut ctx, with_env);
        let cwd = std::env::current_dir().unwrap_or_default();
        ctx.declare_var(
            "path",
            Value::from_iter([
                (
                    "root",
                    Value::from(self.root.to_string_lossy().into_owned()),
                ),
                ("cwd", Value::from(cwd.to_string_lossy().into_owned())),
            ]),
        );
        ctx.declare_var(
            "packer",
            Value::from_iter([("version", Value::from(PACKER_COMPAT_VERSION))]),
        );
        ctx
    }

    /// Evaluates an expression from file `file`, reporting errors at its position.
    fn eval(&mut self, file: usize, expr: &EditExpr, ctx: &Context<'_>) -> Option<Value> {
        let range = expr.span();
        let span = self.span(file, range.clone());
        if let Some(r) = range {
            let text = self.files[file]
                .text
                .get(r.clone())
                .unwrap_or("")
                .to_string();
            let mut bad = false;
            for (kind, name, off) in references(&text) {
                let known = match kind {
                    "var" => self.vars.contains_key(&name),
                    "data" => self.datas.contains_key(&name),
                    _ => self.locals.contains_key(&name),
                };
                if !known {
                    let (msg, hint) = match kind {
                        "var" => {
                            undeclared_message(kind, &name, self.vars.keys().map(String::as_str))
                        }
                        "data" => {
                            undeclared_message(kind, &name, self.datas.keys().map(String::as_str))
                        }
                        _ => {
                            undeclared_message(kind, &name, self.locals.keys().map(String::as_str))
                        }
                    };
                    let f = &self.files[file];
                    let s = Span::from_offset(&f.path, &f.text, r.start + off);
                    self.err(msg, s, hint);
                    bad = true;
                }
            }
            if bad {
                return None;
            }
        }
        let hexpr = hcl::Expression::from(expr.clone());
        match evaluate(&hexpr, ctx) {
            Ok(v) => Some(v),
            Err(msg) => {
                let hint = unknown_function_hint(&msg);
                self.err(msg, span, hint);
                None
            }
        }
    }

    fn collect(&mut self, file: usize) {
        let structures: Vec<Structure> = self.files[file].body.iter().cloned().collect();
        for s in structures {
            match s {
                Structure::Attribute(a) => {
                    let span = self.span(file, a.span());
                    self.err(
                        format!("unexpected attribute {:?} at the top level", a.key.as_str()),
                        span,
                        Some(
                            "top-level attributes belong in a *.pkrvars.hcl file or inside a block"
                                .into(),
                        ),
                    );
                }
                Structure::Block(b) => self.collect_block(file, b),
            }
        }
    }

    fn labels(&mut self, file: usize, b: &Block, n: usize, usage: &str) -> Option<Vec<String>> {
        if b.labels.len() != n {
            let span = self.span(file, b.ident.span());
            self.err(
                format!(
                    "block {:?} takes {n} label(s), found {}",
                    b.ident.as_str(),
                    b.labels.len()
                ),
                span,
                Some(format!("write it as {usage}")),
            );
            return None;
        }
        Some(b.labels.iter().map(|l| l.as_str().to_string()).collect())
    }

    fn collect_block(&mut self, file: usize, b: Block) {
        let span = self.span(file, b.ident.span());
        self.check_duplicates(file, &b.body);
        match b.ident.as_str() {
            "packer" => self.packer_block(file, &b),
            "variable" => {
                let Some(l) = self.labels(file, &b, 1, "variable \"name\" { ... }") else {
                    return;
                };
                self.variable_block(file, &l[0], &b, span);
            }
            "variables" => {
                for a in b.body.attributes() {
                    let name = a.key.as_str().to_string();
                    let aspan = self.span(file, a.span());
                    let ctx = self.base_ctx(true);
                    let default = self.eval(file, &a.value, &ctx);
                    self.declare(Var {
                        name,
                        span: aspan,
                        ty: None,
                        type_text: None,
                        default,
                        description: None,
                        sensitive: false,
                        nullable: true,
                        validations: Vec::new(),
                        value: None,
                        origin: "default",
                    });
                }
            }
            "locals" => {
                for a in b.body.attributes() {
                    let name = a.key.as_str().to_string();
                    let aspan = self.span(file, a.span());
                    self.declare_local(
                        name,
                        Local {
                            file,
                            expr: a.value.clone(),
                            span: aspan,
                            sensitive: false,
                        },
                    );
                }
                if let Some(inner) = b.body.blocks().next() {
                    let s = self.span(file, inner.ident.span());
                    self.err("blocks are not allowed inside `locals`", s, None);
                }
            }
            "local" => {
                let Some(l) = self.labels(file, &b, 1, "local \"name\" { expression = ... }")
                else {
                    return;
                };
                let Some(expr) = b.body.get_attribute("expression").map(|a| a.value.clone()) else {
                    self.err(
                        format!("local {:?} has no `expression`", l[0]),
                        span,
                        Some("add `expression = ...`".into()),
                    );
                    return;
                };
                let sensitive = self.literal_bool(file, &b.body, "sensitive");
                self.check_keys(file, &b.body, &["expression", "sensitive"], &[]);
                self.declare_local(
                    l[0].clone(),
                    Local {
                        file,
                        expr,
                        span,
                        sensitive,
                    },
                );
            }
            "source" => {
                let Some(l) = self.labels(file, &b, 2, "source \"qemu\" \"name\" { ... }") else {
                    return;
                };
                let key = format!("{}.{}", l[0], l[1]);
                if let Some(prev) = self.sources.get(&key) {
                    let prev_span = self.span(prev.file, prev.block.ident.span());
                    self.err(
                        format!("duplicate source {key}; it is already declared at {prev_span}"),
                        span,
                        Some("give each source a unique name".into()),
                    );
                    return;
                }
                self.sources.insert(
                    key,
                    SourceDef {
                        kind: l[0].clone(),
                        name: l[1].clone(),
                        file,
                        block: b,
                    },
                );
            }
            "build" => self.builds.push((file, b)),
            "data" => {
                let Some(l) = self.labels(file, &b, 2, "data \"http\" \"name\" { ... }") else {
                    return;
                };
                let key = format!("{}.{}", l[0], l[1]);
                let table = self.opts.data_sources;
                if !table.iter().any(|r| r.name == l[0]) {
                    let names: Vec<&str> = table.iter().map(|r| r.name).collect();
                    let hint = match did_you_mean(&l[0], names.iter().copied()) {
                        Some(s) => format!("did you mean {s:?}?"),
                        None if names.is_empty() => {
                            "replace the data source with a variable or local".into()
                        }
                        None => format!(
                            "kiln has: {}; otherwise replace it with a variable or local",
                            names.join(", ")
                        ),
                    };
                    self.err(
                        format!("data source {:?} is not built into kiln ({key})", l[0]),
                        span,
                        Some(hint),
                    );
                    return;
                }
                if let Some(prev) = self.datas.get(&key) {
                    let prev_span = self.span(prev.file, prev.block.ident.span());
                    self.err(
                        format!("duplicate data source data.{key}; it is already declared at {prev_span}"),
                        span,
                        Some("give each data source a unique name".into()),
                    );
                    return;
                }
                self.datas.insert(
                    key,
                    SourceDef {
                        kind: l[0].clone(),
                        name: l[1].clone(),
                        file,
                        block: b,
                    },
                );
            }
            other => {
                let hint = did_you_mean(other, TOP_BLOCKS.iter().copied())
                    .map(|s| format!("did you mean `{s}`?"));
                self.err(
                    format!("unknown block type {other:?}"),
                    span,
                    hint.or_else(|| {
                        Some(format!("top-level blocks are: {}", TOP_BLOCKS.join(", ")))
                    }),
                );
            }
        }
    }

    fn check_duplicates(&mut self, file: usize, body: &Body) {
        let mut seen: Vec<(&str, Option<std::ops::Range<usize>>)> = Vec::new();
        let mut dups = Vec::new();
        for a in body.attributes() {
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == a.key.as_str()) {
                dups.push((a.key.as_str().to_string(), a.span(), first.clone()));
            } else {
                seen.push((a.key.as_str(), a.span()));
            }
        }
        for (k, at, first) in dups {
            let first = self.span(file, first);
            let s = self.span(file, at);
            self.err(
                format!("duplicate attribute {k:?}; it was already set at {first}"),
                s,
                Some("remove one of the two".into()),
            );
        }
    }

    fn check_keys(&mut self, file: usize, body: &Body, attrs: &[&str], blocks: &[&str]) {
        for a in body.attributes() {
            if !attrs.contains(&a.key.as_str()) {
                let s = self.span(file, a.span());
                let hint = did_you_mean(a.key.as_str(), attrs.iter().copied())
                    .map(|x| format!("did you mean `{x}`?"));
                self.err(format!("unknown attribute {:?}", a.key.as_str()), s, hint);
            }
        }
        for b in body.blocks() {
            if !blocks.contains(&b.ident.as_str()) {
                let s = self.span(file, b.ident.span());
                let hint = did_you_mean(b.ident.as_str(), blocks.iter().copied())
                    .map(|x| format!("did you mean `{x}`?"));
                self.err(format!("unknown block {:?}", b.ident.as_str()), s, hint);
            }
        }
    }

    fn literal_bool(&mut self, file: usize, body: &Body, key: &str) -> bool {
        let Some(a) = body.get_attribute(key) else {
            return false;
        };
        let ctx = self.base_ctx(false);
        match self.eval(file, &a.value.clone(), &ctx) {
            Some(Value::Bool(b)) => b,
            Some(_) => {
                let s = self.span(file, a.value.span());
                self.err(format!("`{key}` must be true or false"), s, None);
                false
            }
            None => false,
        }
    }

    fn packer_block(&mut self, file: usize, b: &Block) {
        self.check_keys(file, &b.body, &["required_version"], &["required_plugins"]);
        if let Some(a) = b.body.get_attribute("required_version") {
            let ctx = self.base_ctx(false);
            if let Some(Value::String(c)) = self.eval(file, &a.value.clone(), &ctx) {
                if let Err(msg) = crate::version::check(&c, PACKER_COMPAT_VERSION) {
                    let s = self.span(file, a.value.span());
                    self.err(
                        msg,
                        s,
                        Some(format!(
                            "kiln reads templates written for Packer {PACKER_COMPAT_VERSION}"
                        )),
                    );
                }
            }
        }
        for rp in b.body.get_blocks("required_plugins") {
            for a in rp.body.attributes() {
                let name = a.key.as_str().to_string();
                let ctx = self.base_ctx(false);
                let v = self.eval(file, &a.value.clone(), &ctx);
                let source = v
                    .as_ref()
                    .and_then(|v| v.as_object())
                    .and_then(|o| o.get("source"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let plugin = source.rsplit('/').next().unwrap_or(&name).to_string();
                let built_in = |n: &str| {
                    self.opts
                        .plugins
                        .as_ref()
                        .is_none_or(|ps| ps.iter().any(|p| p == n))
                };
                if !built_in(&plugin) && !built_in(&name) {
                    let s = self.span(file, a.span());
                    self.unknown_plugins
                        .push((if source.is_empty() { name } else { source }, s));
                }
            }
        }
    }

    fn variable_block(&mut self, file: usize, name: &str, b: &Block, span: Span) {
        self.check_keys(
            file,
            &b.body,
            &["type", "default", "description", "sensitive", "nullable"],
            &["validation"],
        );
        let (ty, type_text) = match b.body.get_attribute("type") {
            Some(a) => {
                let text = a
                    .value
                    .span()
                    .and_then(|r| self.files[file].text.get(r).map(str::to_string));
                match Type::parse(&hcl::Expression::from(a.value.clone())) {
                    Ok(t) => (Some(t), text),
                    Err(msg) => {
                        let s = self.span(file, a.value.span());
                        self.err(msg, s, None);
                        (None, text)
                    }
                }
            }
            None => (None, None),
        };
        let default = match b.body.get_attribute("default") {
            Some(a) => {
                let ctx = self.base_ctx(true);
                let v = self.eval(file, &a.value.clone(), &ctx);
                match (v, &ty) {
                    (Some(v), Some(t)) => {
                        match t.convert(&v) {
                            Ok(c) => Some(c),
                            Err(msg) => {
                                let s = self.span(file, a.value.span());
                                self.err(format!("default of variable {name:?} does not match its type: {msg}"), s, None);
                                Some(v) // keep the raw default so "has no value" does not follow
                            }
                        }
                    }
                    (v, _) => v,
                }
            }
            None => None,
        };
        let description = b.body.get_attribute("description").and_then(|a| {
            match hcl::Expression::from(a.value.clone()) {
                hcl::Expression::String(s) => Some(s),
                _ => None,
            }
        });
        let sensitive = self.literal_bool(file, &b.body, "sensitive");
        let nullable = b.body.get_attribute("nullable").is_none()
            || self.literal_bool(file, &b.body, "nullable");
        let mut validations = Vec::new();
        for v in b.body.get_blocks("validation") {
            self.check_keys(file, &v.body, &["condition", "error_message"], &[]);
            match v.body.get_attribute("condition") {
                Some(c) => validations.push((
                    file,
                    c.value.clone(),
                    v.body
                        .get_attribute("error_message")
                        .map(|m| m.value.clone()),
                )),
                None => {
                    let s = self.span(file, v.ident.span());
                    self.err("validation block has no `condition`", s, None);
                }
            }
        }
        self.declare(Var {
            name: name.to_string(),
            span,
            ty,
            type_text,
            default,
            description,
            sensitive,
            nullable,
            validations,
            value: None,
            origin: "default",
        });
    }

    fn declare(&mut self, v: Var) {
        if let Some(prev) = self.vars.get(&v.name) {
            let msg = format!(
                "duplicate variable {:?}; it is already declared at {}",
                v.name, prev.span
            );
            self.err(msg, v.span, None);
            return;
        }
        self.vars.insert(v.name.clone(), v);
    }

    fn declare_local(&mut self, name: String, l: Local) {
        if let Some(prev) = self.locals.get(&name) {
            let msg = format!(
                "duplicate local {name:?}; it is already defined at {}",
                prev.span
            );
            self.err(msg, l.span, None);
            return;
        }
        self.locals.insert(name, l);
    }

    /// Applies values in Packer's order: env < auto var files < -var-file < -var.
    fn apply_values(&mut self, var_files: &[PathBuf]) {
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.opts.env {
            for prefix in ["PKR_VAR_", "KILN_VAR_"] {
                if let Some(name) = k.strip_prefix(prefix) {
                    env.push((name.to_string(), v.clone()));
                }
            }
        }
        for (name, raw) in env {
            if self.vars.contains_key(&name) {
                self.set_from_string(&name, &raw, "env", None);
            }
        }
        for f in var_files {
            self.apply_var_file(f);
        }
        for (name, raw) in self.opts.vars.clone() {
            if !self.vars.contains_key(&name) {
                let (msg, hint) =
                    undeclared_message("var", &name, self.vars.keys().map(String::as_str));
                self.diags.push(
                    Diagnostic::error(format!("-var {name}=…: {msg}"), None)
                        .with_hint(hint.unwrap_or_default()),
                );
                continue;
            }
            self.set_from_string(&name, &raw, "-var", None);
        }
    }

    fn set_from_string(&mut self, name: &str, raw: &str, origin: &'static str, span: Option<Span>) {
        let Some(var) = self.vars.get(name) else {
            return;
        };
        if var.sensitive {
            self.raw_sensitive.push(raw.to_string());
        }
        let sensitive = var.sensitive;
        let value = match &var.ty {
            None | Some(Type::String) => Ok(Value::from(raw)),
            Some(_) => hcl::edit::parser::parse_expr(raw)
                .map_err(|e| {
                    format!(
                        "value of {name} ({origin}) is not a valid HCL expression: {}",
                        e.message()
                    )
                })
                .and_then(|e| {
                    let ctx = self.base_ctx(false);
                    evaluate(&hcl::Expression::from(e), &ctx)
                }),
        };
        match value {
            Ok(v) => self.set_value(name, v, origin, span),
            Err(_) if sensitive => self.sensitive_value_error(name, origin, span),
            Err(msg) => self.diags.push(Diagnostic::error(msg, span)),
        }
    }

    fn set_value(&mut self, name: &str, v: Value, origin: &'static str, span: Option<Span>) {
        if self.vars.get(name).is_some_and(|v| v.sensitive) {
            collect_strings(&v, &mut self.raw_sensitive);
        }
        let Some(var) = self.vars.get_mut(name) else {
            return;
        };
        let converted = match &var.ty {
            Some(t) => t.convert(&v),
            None => Ok(v),
        };
        let sensitive = var.sensitive;
        match converted {
            Ok(c) => {
                var.value = Some(c);
                var.origin = origin;
            }
            Err(_) if sensitive => self.sensitive_value_error(name, origin, span),
            Err(msg) => {
                self.refused.push(name.to_string());
                let d = Diagnostic::error(
                    format!("invalid value for variable {name:?} (from {origin}): {msg}"),
                    span,
                );
                self.diags.push(d);
            }
        }
    }

    fn apply_var_file(&mut self, path: &Path) {
        let text = match crate::read_text(path) {
            Ok(t) => t,
            Err(d) => return self.diags.push(d),
        };
        let arc: Arc<Path> = Arc::from(path);
        let is_json = path.extension().is_some_and(|e| e == "json");
        if is_json {
            match crate::jsonspan::parse(&text) {
                Ok(crate::jsonspan::Node {
                    value: crate::jsonspan::NodeValue::Object(entries),
                    ..
                }) => {
                    for (key, node) in entries {
                        let span = Span::from_offset(&arc, &text, key.offset);
                        self.var_file_value(&key.text, from_json(&node.to_json()), span);
                    }
                }
                Ok(n) => self.diags.push(Diagnostic::error(
                    "a JSON variables file must be an object of name: value",
                    Some(Span::from_offset(&arc, &text, n.offset)),
                )),
                Err(e) => self.diags.push(Diagnostic::error(
                    format!("invalid JSON: {}", e.message),
                    Some(Span::from_offset(&arc, &text, e.offset)),
                )),
            }
            return;
        }
        let body = match hcl::edit::parser::parse_body(&text) {
            Ok(b) => b,
            Err(e) => {
                let span = Span::from_offset(&arc, &text, e.location().offset());
                return self.diags.push(Diagnostic::error(
                    format!("syntax error: {}", e.message()),
                    Some(span),
                ));
            }
        };
        let ctx = self.base_ctx(false);
        for s in body.iter() {
            let start = s.span().map_or(0, |r| r.start);
            let span = Span::from_offset(&arc, &text, start);
            match s {
                Structure::Attribute(a) => {
                    let sensitive = self.vars.get(a.key.as_str()).is_some_and(|v| v.sensitive);
                    if sensitive {
                        // The attribute's source text, whatever it evaluates to.
                        let src = a
                            .value
                            .span()
                            .and_then(|r| text.get(r))
                            .unwrap_or_default()
                            .trim_matches('"')
                            .to_string();
                        self.raw_sensitive.push(src);
                    }
                    match evaluate(&hcl::Expression::from(a.value.clone()), &ctx) {
                        Ok(v) => self.var_file_value(a.key.as_str(), v, span),
                        Err(_) if sensitive => {
                            self.sensitive_value_error(a.key.as_str(), "var-file", Some(span))
                        }
                        Err(msg) => self.diags.push(Diagnostic::error(msg, Some(span))),
                    }
                }
                Structure::Block(_) => self.diags.push(Diagnostic::error(
                    "blocks are not allowed in a variables file; write `name = value`",
                    Some(span),
                )),
            }
        }
    }

    fn var_file_value(&mut self, name: &str, v: Value, span: Span) {
        if !self.vars.contains_key(name) {
            let (msg, hint) = undeclared_message("var", name, self.vars.keys().map(String::as_str));
            let mut d = Diagnostic::warning(
                format!("{msg} is set in a variables file and ignored"),
                Some(span),
            );
            d.hint = hint;
            self.diags.push(d);
            return;
        }
        self.set_value(name, v, "var-file", Some(span));
    }

    /// Checks required values and validations; returns the `var` object.
    fn finish_vars(&mut self) -> Value {
        let names: Vec<String> = self.vars.keys().cloned().collect();
        for name in &names {
            let Some(var) = self.vars.get_mut(name) else {
                continue;
            };
            if var.value.is_none() {
                var.value = var.default.clone();
            }
            let (missing, null_bad, span) = (
                var.value.is_none(),
                !var.nullable && var.value == Some(Value::Null),
                var.span.clone(),
            );
            if missing && self.refused.contains(name) {
                // Its value was refused above; that error says what to fix.
            } else if missing {
                self.err(format!("variable {name:?} has no value"), span, Some(format!("set it with -var {name}=..., a -var-file, or PKR_VAR_{name}, or give it a default")));
            } else if null_bad {
                self.err(
                    format!("variable {name:?} must not be null (nullable = false)"),
                    span,
                    None,
                );
            }
        }
        let obj: Map<String, Value> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone().unwrap_or(Value::Null)))
            .collect();
        let var_obj = Value::Object(obj);
        for name in &names {
            let validations = self
                .vars
                .get(name)
                .map(|v| v.validations.clone())
                .unwrap_or_default();
            for (file, cond, msg) in validations {
                let mut ctx = self.base_ctx(false);
                ctx.declare_var("var", var_obj.clone());
                match self.eval(file, &cond, &ctx) {
                    Some(Value::Bool(true)) | None => {}
                    Some(Value::Bool(false)) => {
                        let text = msg
                            .and_then(|m| self.eval(file, &m, &ctx))
                            .and_then(|v| v.as_str().map(str::to_string));
                        let s = self.span(file, cond.span());
                        self.err(
                            format!(
                                "invalid value for variable {name:?}: {}",
                                text.unwrap_or_else(|| "validation failed".into())
                            ),
                            s,
                            None,
                        );
                    }
                    Some(other) => {
                        let s = self.span(file, cond.span());
                        self.err(
                            format!(
                                "validation condition must be a bool, got {}",
                                funcs::type_name(&other)
                            ),
                            s,
                            None,
                        );
                    }
                }
            }
        }
        var_obj
    }

    /// `data.TYPE.NAME` for every data source evaluated so far.
    fn data_object(&self) -> Value {
        let mut by_type: Map<String, Value> = Map::new();
        for (key, v) in &self.data_values {
            let (t, n) = key.split_once('.').unwrap_or((key, ""));
            if let Value::Object(m) = by_type
                .entry(t.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                m.insert(n.to_string(), v.clone());
            }
        }
        Value::Object(by_type)
    }

    /// The source text of a local's expression or a data block's body.
    fn node_text(&self, node: &str) -> &str {
        let (file, range) = match node.split_once('.') {
            Some(("local", n)) => {
                let l = &self.locals[n];
                (l.file, l.expr.span())
            }
            Some((_, key)) => {
                let d = &self.datas[key];
                (d.file, d.block.body.span())
            }
            None => return "",
        };
        range
            .and_then(|r| self.files[file].text.get(r))
            .unwrap_or("")
    }

    /// Evaluates locals and data sources in dependency order (each may use the others), so they
    /// may be written in any order and cycles are named.
    fn eval_locals(&mut self, var_obj: &Value) {
        let names: Vec<String> = self
            .locals
            .keys()
            .map(|n| format!("local.{n}"))
            .chain(self.datas.keys().map(|k| format!("data.{k}")))
            .collect();
        let deps: IndexMap<String, Vec<String>> = names
            .iter()
            .map(|n| {
                let d = references(self.node_text(n))
                    .into_iter()
                    .filter(|(k, _, _)| *k != "var")
                    .map(|(k, n, _)| format!("{k}.{n}"))
                    .collect();
                (n.clone(), d)
            })
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        loop {
            let ready: Vec<String> = names
                .iter()
                .filter(|n| !done.contains(n) && !failed.contains(n))
                .filter(|n| {
                    deps[*n]
                        .iter()
                        .all(|d| done.contains(d) || !names.contains(d))
                })
                .cloned()
                .collect();
            if ready.is_empty() {
                break;
            }
            for n in ready {
                if deps[&n].iter().any(|d| failed.contains(d)) {
                    failed.push(n);
                    continue;
                }
                let mut ctx = self.base_ctx(false);
                ctx.declare_var("var", var_obj.clone());
                ctx.declare_var("local", Value::Object(self.local_values.clone()));
                ctx.declare_var("data", self.data_object());
                let ok = match n.split_once('.') {
                    Some(("local", name)) => self.eval_local(name, &ctx),
                    Some((_, key)) => self.eval_data(key, &ctx),
                    None => false,
                };
                if ok {
                    done.push(n);
                } else {
                    failed.push(n);
                }
            }
        }
        for n in names
            .iter()
            .filter(|n| !done.contains(n) && !failed.contains(n))
        {
            let cycle: Vec<&str> = deps[n]
                .iter()
                .filter(|d| !done.contains(d))
                .map(String::as_str)
                .collect();
            let (span, what, label) = match n.split_once('.') {
                Some(("local", name)) => (
                    self.locals[name].span.clone(),
                    "a local",
                    format!("local {name:?}"),
                ),
                Some((_, key)) => {
                    let d = &self.datas[key];
                    (
                        self.span(d.file, d.block.ident.span()),
                        "a data source",
                        format!("data source {n}"),
                    )
                }
                None => continue,
            };
            self.err(
                format!("{label} depends on itself through {}", cycle.join(", ")),
                span,
                Some(format!(
                    "break the cycle: {what} cannot refer back to itself"
                )),
            );
        }
    }

    fn eval_local(&mut self, n: &str, ctx: &Context<'_>) -> bool {
        let (file, expr, sensitive) = {
            let l = &self.locals[n];
            (l.file, l.expr.clone(), l.sensitive)
        };
        match self.eval(file, &expr, ctx) {
            Some(v) => {
                self.local_values.insert(n.to_string(), v);
                if sensitive {
                    self.sensitive_locals.push(n.to_string());
                }
                true
            }
            None => false,
        }
    }

    /// Evaluates a data block's attributes and runs the data source on them.
    fn eval_data(&mut self, key: &str, ctx: &Context<'_>) -> bool {
        let (kind, file, block) = {
            let d = &self.datas[key];
            (d.kind.clone(), d.file, d.block.clone())
        };
        let Some(row) = self.opts.data_sources.iter().find(|r| r.name == kind) else {
            return false;
        };
        self.check_keys(file, &block.body, row.options, &[]);
        let mut args = serde_json::Map::new();
        let mut ok = true;
        for a in block.body.attributes() {
            match self.eval(file, &a.value, ctx) {
                Some(v) => {
                    args.insert(a.key.as_str().to_string(), to_json(&v));
                }
                None => ok = false,
            }
        }
        if !ok {
            return false;
        }
        let span = self.span(file, block.ident.span());
        match (row.eval)(&args) {
            Ok(v) => {
                self.data_values.insert(key.to_string(), from_json(&v));
                true
            }
            Err(why) => {
                self.err(format!("data.{key}: {why}"), span, None);
                false
            }
        }
    }

    fn expand_builds(&mut self, var_obj: &Value) -> Vec<BuildPlan> {
        let builds = std::mem::take(&mut self.builds);
        let mut out = Vec::new();
        for (file, b) in &builds {
            self.check_keys(
                *file,
                &b.body,
                &["name", "description", "sources"],
                BUILD_BLOCKS,
            );
            let mut ctx = self.base_ctx(false);
            ctx.declare_var("var", var_obj.clone());
            ctx.declare_var("local", Value::Object(self.local_values.clone()));
            ctx.declare_var("data", self.data_object());
            let build_name = b
                .body
                .get_attribute("name")
                .and_then(|a| self.eval(*file, &a.value.clone(), &ctx))
                .and_then(|v| v.as_str().map(str::to_string));
            let instances = self.build_instances(*file, b, &ctx);
            if instances.is_empty() {
                let span = self.span(*file, b.ident.span());
                self.err("build block names no sources", span, Some("add `sources = [\"source.qemu.NAME\"]` or a `source \"source.qemu.NAME\" { }` block".into()));
            }
            for (key, span, overrides, name_override) in instances {
                let Some(src) = self.sources.get(&key) else {
                    let hint = did_you_mean(&key, self.sources.keys().map(String::as_str))
                        .map(|s| format!("did you mean source.{s}?"));
                    self.err(
                        format!("build refers to undeclared source {key:?}"),
                        span,
                        hint.or_else(|| {
                            Some("declare it with `source \"TYPE\" \"NAME\" { ... }`".into())
                        }),
                    );
                    continue;
                };
                let (kind, src_name, src_file, src_block) = (
                    src.kind.clone(),
                    src.name.clone(),
                    src.file,
                    src.block.clone(),
                );
                let name = name_override.unwrap_or(src_name);
                let full_name = format!("{kind}.{name}");
                if !self.selected(&full_name, build_name.as_deref()) {
                    continue;
                }
                let mut bctx = self.base_ctx(false);
                bctx.declare_var("var", var_obj.clone());
                bctx.declare_var("local", Value::Object(self.local_values.clone()));
                bctx.declare_var("data", self.data_object());
                bctx.declare_var(
                    "source",
                    Value::from_iter([
                        ("name", Value::from(name.clone())),
                        ("type", Value::from(kind.clone())),
                    ]),
                );
                bctx.declare_var(
                    "build",
                    build_object(build_name.as_deref().unwrap_or(&name)),
                );
                let mut attrs = self.eval_body(src_file, &src_block.body, &bctx);
                if let Some(ob) = &overrides {
                    self.check_duplicates(*file, ob);
                    let mut o = self.eval_body(*file, ob, &bctx);
                    o.shift_remove("name");
                    attrs.extend(o);
                }
                let builder = Component {
                    kind: kind.clone(),
                    name: Some(name.clone()),
                    span: self.span(src_file, src_block.ident.span()),
                    attrs,
                };
                let provisioners = self.steps(*file, b, "provisioner", &full_name, &name, &bctx);
                let error_cleanup = self
                    .steps(
                        *file,
                        b,
                        "error-cleanup-provisioner",
                        &full_name,
                        &name,
                        &bctx,
                    )
                    .into_iter()
                    .next();
                let post_processors = self.post_processors(*file, b, &full_name, &name, &bctx);
                out.push(BuildPlan {
                    full_name,
                    build_name: build_name.clone(),
                    builder,
                    provisioners,
                    error_cleanup,
                    post_processors,
                });
            }
        }
        self.builds = builds;
        out
    }

    /// The sources a build block names (`sources = [...]` and `source "..." { }` blocks).
    fn build_instances(&mut self, file: usize, b: &Block, ctx: &Context<'_>) -> Vec<Instance> {
        let mut instances: Vec<Instance> = Vec::new();
        if let Some(a) = b.body.get_attribute("sources") {
            let span = self.span(file, a.value.span());
            match self.eval(file, &a.value.clone(), ctx) {
                Some(Value::Array(items)) => {
                    for item in items {
                        match item.as_str() {
                            Some(s) => instances.push((
                                s.strip_prefix("source.").unwrap_or(s).to_string(),
                                span.clone(),
                                None,
                                None,
                            )),
                            None => self.err(
                                "`sources` must be a list of strings like \"source.qemu.name\"",
                                span.clone(),
                                None,
                            ),
                        }
                    }
                }
                Some(_) => self.err(
                    "`sources` must be a list of strings like \"source.qemu.name\"",
                    span,
                    None,
                ),
                None => {}
            }
        }
        for sb in b.body.get_blocks("source") {
            let span = self.span(file, sb.ident.span());
            let Some(l) = self.labels(file, sb, 1, "source \"source.qemu.name\" { ... }") else {
                continue;
            };
            let key = l[0].strip_prefix("source.").unwrap_or(&l[0]).to_string();
            let name = sb
                .body
                .get_attribute("name")
                .and_then(|a| self.eval(file, &a.value.clone(), ctx))
                .and_then(|v| v.as_str().map(str::to_string));
            instances.push((key, span, Some(sb.body.clone()), name));
        }
        instances
    }

    /// A build's post-processors: each `post-processor` block is a chain of one, each
    /// `post-processors` block one chain.
    fn post_processors(
        &mut self,
        file: usize,
        b: &Block,
        full_name: &str,
        name: &str,
        bctx: &Context<'_>,
    ) -> Vec<Vec<Step>> {
        let mut post_processors: Vec<Vec<Step>> = Vec::new();
        for s in &b.body {
            if let Structure::Block(pb) = s {
                match pb.ident.as_str() {
                    "post-processor" => {
                        if let Some(step) = self.step(file, pb, full_name, name, bctx) {
                            post_processors.push(vec![step]);
                        }
                    }
                    "post-processors" => {
                        self.check_keys(file, &pb.body, &[], &["post-processor"]);
                        let chain: Vec<Step> = pb
                            .body
                            .get_blocks("post-processor")
                            .filter_map(|p| self.step(file, p, full_name, name, bctx))
                            .collect();
                        if !chain.is_empty() {
                            post_processors.push(chain);
                        }
                    }
                    _ => {}
                }
            }
        }
        post_processors
    }

    fn selected(&self, full_name: &str, build_name: Option<&str>) -> bool {
        crate::selected(&self.opts.only, &self.opts.except, full_name, build_name)
    }

    fn steps(
        &mut self,
        file: usize,
        b: &Block,
        ident: &str,
        full: &str,
        name: &str,
        ctx: &Context<'_>,
    ) -> Vec<Step> {
        let blocks: Vec<Block> = b.body.get_blocks(ident).cloned().collect();
        blocks
            .iter()
            .filter_map(|p| self.step(file, p, full, name, ctx))
            .collect()
    }

    /// A provisioner or post-processor for one build, or None when its only/except leave it out.
    fn step(
        &mut self,
        file: usize,
        p: &Block,
        full: &str,
        name: &str,
        ctx: &Context<'_>,
    ) -> Option<Step> {
        let l = self.labels(
            file,
            p,
            1,
            &format!("{} \"TYPE\" {{ ... }}", p.ident.as_str()),
        )?;
        self.check_duplicates(file, &p.body);
        let mut attrs = self.eval_body(file, &p.body, ctx);
        let mut common = StepCommon::default();
        let list = |v: Option<Attr>| -> Vec<String> {
            v.and_then(|a| a.value.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|x| {
                    x.as_str()
                        .map(|s| s.strip_prefix("source.").unwrap_or(s).to_string())
                })
                .collect()
        };
        common.only = list(attrs.shift_remove("only"));
        common.except = list(attrs.shift_remove("except"));
        let matches = |pats: &[String]| pats.iter().any(|p| glob_match(p, full) || p == name);
        if (!common.only.is_empty() && !matches(&common.only)) || matches(&common.except) {
            return None;
        }
        let step_name = attrs
            .shift_remove("name")
            .and_then(|a| a.value.as_str().map(str::to_string));
        common.pause_before = attrs
            .shift_remove("pause_before")
            .and_then(|a| a.value.as_str().map(str::to_string));
        common.timeout = attrs
            .shift_remove("timeout")
            .and_then(|a| a.value.as_str().map(str::to_string));
        if let Some(a) = attrs.shift_remove("max_retries") {
            match a
                .value
                .as_u64()
                .or_else(|| a.value.as_str().and_then(|s| s.parse().ok()))
                .and_then(|n| u32::try_from(n).ok())
            {
                Some(n) => common.max_retries = n,
                None => self.err("max_retries must be a whole number", a.span, None),
            }
        }
        common.keep_input_artifact = attrs
            .shift_remove("keep_input_artifact")
            .and_then(|a| a.value.as_bool());
        if let Some(ov) = attrs.shift_remove("override") {
            if let Some(map) = ov.value.as_object() {
                let chosen = map
                    .get(full)
                    .or_else(|| map.get(name))
                    .or_else(|| map.get(&format!("source.{full}")));
                if let Some(serde_json::Value::Object(o)) = chosen {
                    for (k, v) in o {
                        attrs.insert(
                            k.clone(),
                            Attr {
                                value: v.clone(),
                                span: ov.span.clone(),
                            },
                        );
                    }
                }
            } else {
                self.err(
                    "`override` must be a map from source name to attributes",
                    ov.span,
                    None,
                );
            }
        }
        debug_assert!(COMMON_STEP_KEYS.len() == 8);
        Some(Step {
            component: Component {
                kind: l[0].clone(),
                name: step_name,
                span: self.span(file, p.ident.span()),
                attrs,
            },
            common,
        })
    }

    /// Evaluates every attribute of a body; nested blocks become lists of objects.
    fn eval_body(&mut self, file: usize, body: &Body, ctx: &Context<'_>) -> IndexMap<String, Attr> {
        let mut out = IndexMap::new();
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => {
                    let span = self.span(file, a.span());
                    if let Some(v) = self.eval(file, &a.value, ctx) {
                        out.insert(
                            a.key.as_str().to_string(),
                            Attr {
                                value: to_json(&v),
                                span,
                            },
                        );
                    }
                }
                Structure::Block(nb) => {
                    let span = self.span(file, nb.ident.span());
                    let inner = self.eval_body(file, &nb.body, ctx);
                    let mut obj: serde_json::Map<String, serde_json::Value> =
                        inner.into_iter().map(|(k, a)| (k, a.value)).collect();
                    for (i, l) in nb.labels.iter().enumerate() {
                        obj.insert(format!("__label{i}"), serde_json::Value::from(l.as_str()));
                    }
                    let entry = out.entry(nb.ident.as_str().to_string()).or_insert(Attr {
                        value: serde_json::Value::Array(Vec::new()),
                        span,
                    });
                    if let serde_json::Value::Array(list) = &mut entry.value {
                        list.push(serde_json::Value::Object(obj));
                    }
                }
            }
        }
        out
    }
}

/// The `build` object: `build.name` is known now; the rest are filled in at run time, as Packer
/// does, through Go-template placeholders.
fn build_object(name: &str) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(name));
    for key in [
        "ID",
        "Host",
        "Port",
        "User",
        "Password",
        "SSHPublicKey",
        "SSHPrivateKey",
        "PackerRunUUID",
        "PackerHTTPAddr",
        "PackerHTTPIP",
        "PackerHTTPPort",
    ] {
        m.insert(key.into(), Value::from(format!("{{{{ .{key} }}}}")));
    }
    Value::Object(m)
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

fn unknown_function_hint(msg: &str) -> Option<String> {
    let rest = msg.split("undefined function `").nth(1)?;
    let name = rest.split('`').next()?;
    if name == "__try_failed" {
        return Some("every argument of try() failed to evaluate".into());
    }
    if name == "env" {
        return Some("env() is only allowed in variable defaults, as in Packer".into());
    }
    Some(match did_you_mean(name, funcs::names()) {
        Some(s) => format!("did you mean {s}()?"),
        None => format!("kiln has no function {name}(); see docs/functions.md for the ones it has"),
    })
}

#[cfg(test)]
mod tests {
    use crate::{load, LoadOptions, Plan};

    fn load_text(name: &str, text: &str, opts: &LoadOptions) -> (Option<Plan>, String) {
        let dir = std::env::temp_dir().join(format!("kiln-hcl2-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("t.pkr.hcl");
        std::fs::write(&p, text).expect("write");
        let (plan, d) = load(&p, opts);
        let _ = std::fs::remove_dir_all(&dir);
        (plan, d.to_string())
    }

    const T: &str = r#"
variable "mem" {
  type    = number
  default = 512
}
variable "pw" {
  type      = string
  default   = "s3cret-value"
  sensitive = true
}
locals {
  name = "web-${var.mem}"
}
source "qemu" "a" {
  memory   = var.mem
  vm_name  = local.name
}
source "qemu" "b" {
  memory = 256
}
build {
  name    = "web"
  sources = ["source.qemu.a"]
  source "source.qemu.b" {
    name   = "b2"
    memory = 1024
  }
  provisioner "shell" {
    inline      = ["echo ${source.name} ${build.name}"]
    max_retries = 2
  }
  post-processors {
    post-processor "manifest" {}
    post-processor "checksum" {}
  }
}
"#;

    #[test]
    fn sources_builds_variables_locals_and_overrides_evaluate_as_packer_does() {
        let opts = LoadOptions {
            vars: vec![("mem".into(), "2048".into())],
            ..LoadOptions::default()
        };
        let (plan, d) = load_text("eval", T, &opts);
        let plan = plan.unwrap_or_else(|| panic!("{d}"));
        let names: Vec<&str> = plan.builds.iter().map(|b| b.full_name.as_str()).collect();
        assert_eq!(names, ["qemu.a", "qemu.b2"]);
        let a = &plan.builds[0];
        // -var beats the default, and locals see it.
        assert_eq!(a.builder.get("memory"), Some(&serde_json::json!(2048)));
        assert_eq!(
            a.builder.get("vm_name"),
            Some(&serde_json::json!("web-2048"))
        );
        // An override block replaces the source's value for its instance only.
        assert_eq!(
            plan.builds[1].builder.get("memory"),
            Some(&serde_json::json!(1024))
        );
        // source.name and build.name inside a provisioner; common options lifted out.
        let p = &a.provisioners[0];
        assert_eq!(
            p.component.get("inline"),
            Some(&serde_json::json!(["echo a web"]))
        );
        assert_eq!(p.common.max_retries, 2);
        assert_eq!(a.post_processors.len(), 1, "one chain");
        assert_eq!(a.post_processors[0].len(), 2);
        assert!(plan.sensitive_values.iter().any(|s| s == "s3cret-value"));
    }

    #[test]
    fn only_and_except_select_builds_by_name() {
        let only = LoadOptions {
            only: vec!["qemu.b2".into()],
            ..LoadOptions::default()
        };
        let (plan, d) = load_text("only", T, &only);
        let plan = plan.unwrap_or_else(|| panic!("{d}"));
        assert_eq!(plan.builds.len(), 1);
        assert_eq!(plan.builds[0].full_name, "qemu.b2");
        let except = LoadOptions {
            except: vec!["web.qemu.a".into()],
            ..LoadOptions::default()
        };
        let (plan, _) = load_text("except", T, &except);
        assert_eq!(plan.map(|p| p.builds.len()), Some(1));
    }

    #[test]
    fn mistakes_are_reported_at_their_place_with_the_nearest_name() {
        let (plan, d) = load_text(
            "undeclared",
            "source \"qemu\" \"tiny\" {}\nbuild {\n  sources = [\"source.qemu.tinny\"]\n}\n",
            &LoadOptions::default(),
        );
        assert!(plan.is_none());
        assert!(
            d.contains("t.pkr.hcl:3:13: build refers to undeclared source \"qemu.tinny\""),
            "{d}"
        );
        assert!(d.contains("did you mean source.qemu.tiny?"), "{d}");
        let (plan, d) = load_text(
            "badtype",
            "variable \"n\" {\n  type = number\n  default = \"many\"\n}\n",
            &LoadOptions::default(),
        );
        assert!(plan.is_none());
        assert!(d.contains("t.pkr.hcl:3:"), "{d}");
        let (_, d) = load_text(
            "fn",
            "locals {\n  x = uper(\"a\")\n}\n",
            &LoadOptions::default(),
        );
        assert!(d.contains("did you mean upper"), "{d}");
    }
}
