//! From template to jobs: load the template, then decode every component into its typed config.
//! `validate` stops here; `build` runs the jobs.

use kiln_core::config::parse_duration;
use kiln_core::engine::{Job, StepSpec};
use kiln_core::ResolvedBase;
use kiln_template::{BuildPlan, Diagnostic, Diagnostics, LoadOptions, Plan, Step};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// `kiln plugins installed`: every component, from the tables.
pub fn list_components() {
    let plugin = |p: Option<&str>| {
        p.map_or_else(
            || "Packer core".to_string(),
            |p| format!("github.com/hashicorp/{p}"),
        )
    };
    for r in kiln_builders::BUILDERS {
        say!(
            "builder        {:<13} {:<30} {}",
            r.name,
            plugin(r.plugin),
            r.summary
        );
    }
    for r in kiln_provisioners::PROVISIONERS {
        say!(
            "provisioner    {:<13} {:<30} {}",
            r.name,
            plugin(r.plugin),
            r.summary
        );
    }
    for r in kiln_provisioners::POST_PROCESSORS {
        say!(
            "post-processor {:<13} {:<30} {}",
            r.name,
            plugin(r.plugin),
            r.summary
        );
    }
    for r in kiln_builders::DATA_SOURCES {
        say!(
            "data source    {:<13} {:<30} {}",
            r.name,
            "Packer core",
            r.summary
        );
    }
    for (kind, have) in kiln_ssh::options::COMMUNICATORS {
        let what = if *have { "built in" } else { "not built in" };
        say!(
            "communicator   {:<13} {:<30} {what}",
            kind.as_str(),
            "Packer core"
        );
    }
}

/// The Packer plugins whose components kiln has built in, from the component tables.
pub fn plugins() -> Vec<String> {
    let mut p: Vec<String> = kiln_core::plugins::plugins(kiln_builders::BUILDERS)
        .chain(kiln_core::plugins::plugins(kiln_provisioners::PROVISIONERS))
        .chain(kiln_core::plugins::plugins(
            kiln_provisioners::POST_PROCESSORS,
        ))
        .map(str::to_string)
        .collect();
    p.sort();
    p.dedup();
    p
}

pub struct Prepared {
    pub jobs: Vec<Job>,
    pub diags: Diagnostics,
}

fn step_spec<T: ?Sized>(s: &Step, step: Box<T>, d: &mut Diagnostics) -> StepSpec<T> {
    let mut dur = |v: &Option<String>, key: &str| -> Option<std::time::Duration> {
        let text = v.as_ref()?;
        parse_duration(text)
            .map_err(|m| {
                d.push(Diagnostic::error(
                    format!("{key}: {m}"),
                    Some(s.component.span.clone()),
                ))
            })
            .ok()
    };
    let pause_before = dur(&s.common.pause_before, "pause_before");
    let timeout = dur(&s.common.timeout, "timeout");
    let label = match &s.component.name {
        Some(n) => format!("{} ({n})", s.component.kind),
        None => s.component.kind.clone(),
    };
    StepSpec {
        label,
        pause_before,
        max_retries: s.common.max_retries,
        timeout,
        keep_input_artifact: s.common.keep_input_artifact,
        step,
    }
}

/// Refuses sensitive values in options that end up on a child's command line (readable by any
/// local user in /proc/PID/cmdline, whatever kiln masks in its own output).
fn secret_on_argv(b: &BuildPlan, plan: &Plan, options: &[&str], d: &mut Diagnostics) -> bool {
    let mut found = false;
    for name in options {
        let Some(attr) = b.builder.attrs.get(*name) else {
            continue;
        };
        let text = attr.value.to_string();
        if plan
            .sensitive_values
            .iter()
            .any(|s| s.len() >= 2 && text.contains(s.as_str()))
        {
            found = true;
            d.push(Diagnostic::error(
                format!("{name} holds a sensitive value, and {name} goes on qemu's command line, which every local user can read (/proc/PID/cmdline)"),
                Some(attr.span.clone()),
            ).with_hint("pass the secret through a file instead: e.g. qemuargs = [[\"-object\", \"secret,id=s0,file=/path/to/secret\"]] and refer to it by id, or provide it to the guest over http_content or cd_content"));
        }
    }
    found
}

fn job(
    b: &BuildPlan,
    plan: &Plan,
    run_uuid: &str,
    base: Option<&ResolvedBase>,
    d: &mut Diagnostics,
) -> Option<Job> {
    // Steps are made even when the builder is not, so every problem is reported at once.
    let builder = make_builder(b, plan, base, d);
    let (provisioners, error_cleanup, post) = steps(b, run_uuid, d);
    let tag = tag_for(b, d);
    let builder = builder?;
    Some(Job {
        name: b.source_name().to_string(),
        builder,
        provisioners,
        error_cleanup,
        post,
        secrets: Arc::new(plan.sensitive_values.clone()),
        template_dir: plan.root.clone(),
        template_meta: template_meta(plan),
        tag,
    })
}

/// Loads and checks everything. `Err` carries every diagnostic when anything is wrong.
/// Where `iso_url = "oci://…"` base images are pulled to (build only; validate pulls nothing).
pub struct BaseResolver<'a> {
    pub store: &'a kiln_store::Store,
    pub plain_http: bool,
}

/// Pulls the `oci://` base images builds name (in their builder's base option, e.g. `iso_url`)
/// into the store: the builder then boots the stored disk, verified by its digest, and the cache
/// key sees its content. Keyed by the build's index in the plan.
fn resolve_oci_bases(
    plan: &Plan,
    r: &BaseResolver<'_>,
    diags: &mut Diagnostics,
) -> BTreeMap<usize, ResolvedBase> {
    let mut out = BTreeMap::new();
    for (i, b) in plan.builds.iter().enumerate() {
        let option = kiln_builders::BUILDERS
            .iter()
            .find(|r| r.name == b.builder.kind)
            .and_then(|r| r.base_option);
        let Some(attr) = option.and_then(|o| b.builder.attrs.get(o)) else {
            continue;
        };
        let Some(url) = attr.value.as_str().filter(|u| u.starts_with("oci://")) else {
            continue;
        };
        let err = |m: String| Diagnostic::error(m, Some(attr.span.clone()));
        let reference = match kiln_registry::Reference::parse(url) {
            Ok(x) => x,
            Err(e) => {
                diags.push(err(e.to_string()));
                continue;
            }
        };
        let client = match kiln_registry::Client::new(&reference.registry, r.plain_http, None) {
            Ok(c) => c,
            Err(e) => {
                diags.push(err(e.to_string()));
                continue;
            }
        };
        let id = match client.pull(r.store, &reference, None, &mut |_, _, _| {}) {
            Ok(Some(id)) => id,
            Ok(None) => {
                diags.push(err(format!(
                    "base image {url} does not exist in the registry"
                )));
                continue;
            }
            Err(e) => {
                diags.push(err(format!("cannot pull base image {url}: {e}")));
                continue;
            }
        };
        if reference.digest.is_none() {
            diags.push(Diagnostic::warning(format!("base image {url} is a tag; it resolved to {id} (pin it as {}@{id} for repeatable builds)", url.split(':').take(2).collect::<Vec<_>>().join(":").trim_end_matches(&format!(":{}", reference.tag.clone().unwrap_or_default()))), Some(attr.span.clone())));
        }
        let layer = r
            .store
            .read_json(&id)
            .ok()
            .and_then(|m| m["layers"][0]["digest"].as_str().map(str::to_string));
        let Some((layer, layer_path)) =
            layer.and_then(|l| r.store.blob_path(&l).ok().map(|p| (l, p)))
        else {
            diags.push(err(format!("base image {url} has no disk layer")));
            continue;
        };
        out.insert(
            i,
            ResolvedBase {
                path: layer_path,
                digest: layer,
                source: format!("{url} ({id})"),
            },
        );
    }
    out
}

pub fn prepare(
    path: &Path,
    opts: &LoadOptions,
    run_uuid: &str,
    bases: Option<&BaseResolver<'_>>,
) -> Result<Prepared, Diagnostics> {
    let (plan, mut diags) = kiln_template::load(path, opts);
    let Some(plan) = plan else {
        return Err(diags);
    };
    let bases = match bases {
        Some(r) => resolve_oci_bases(&plan, r, &mut diags),
        None => BTreeMap::new(),
    };
    if opts.syntax_only {
        return Ok(Prepared {
            jobs: Vec::new(),
            diags,
        });
    }
    if plan.builds.is_empty() {
        let empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
        let msg = if empty {
            format!(
                "{} is empty: a template needs at least a source and a build block",
                path.display()
            )
        } else if opts.only.is_empty() && opts.except.is_empty() {
            format!(
                "{} defines no builds: add a build block that names a source",
                path.display()
            )
        } else {
            "-only/-except left no builds to run".to_string()
        };
        diags.push(Diagnostic::error(msg, None));
        return Err(diags);
    }
    let run_uuid = run_uuid.to_string();
    let jobs: Vec<Job> = plan
        .builds
        .iter()
        .enumerate()
        .filter_map(|(i, b)| job(b, &plan, &run_uuid, bases.get(&i), &mut diags))
        .collect();
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Prepared { jobs, diags })
}

/// What the image manifest records about the template: each file with its digest, and the
/// variables (sensitive ones by name only).
fn template_meta(plan: &Plan) -> serde_json::Value {
    let vars: serde_json::Map<String, serde_json::Value> = plan
        .variables
        .iter()
        .filter(|v| !v.sensitive)
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    let sensitive: Vec<&str> = plan
        .variables
        .iter()
        .filter(|v| v.sensitive)
        .map(|v| v.name.as_str())
        .collect();
    serde_json::json!({
        "format": plan.format,
        "files": plan.files.iter().map(|f| serde_json::json!({"path": f.path.display().to_string(), "digest": format!("sha256:{}", f.sha256)})).collect::<Vec<_>>(),
        "variables": vars,
        "sensitiveVariables": sensitive,
    })
}

/// The builder a build's source names, made from its table row.
fn make_builder(
    b: &BuildPlan,
    plan: &Plan,
    base: Option<&ResolvedBase>,
    d: &mut Diagnostics,
) -> Option<Box<dyn kiln_core::Builder>> {
    use kiln_core::plugins::{find, BuildContext};
    match find(kiln_builders::BUILDERS, "builder type", &b.builder) {
        Ok(row) => {
            if secret_on_argv(b, plan, row.argv_options, d) {
                return None;
            }
            let cx = BuildContext {
                build: b.source_name(),
                base,
            };
            collect((row.make)(&b.builder, &cx), d)
        }
        Err(_) => {
            let names: Vec<&str> = kiln_builders::BUILDERS.iter().map(|r| r.name).collect();
            d.push(
                Diagnostic::error(
                    format!(
                        "builder type {:?} ({}) is not built into kiln (kiln has: {})",
                        b.builder.kind,
                        b.full_name,
                        names.join(", ")
                    ),
                    Some(b.builder.span.clone()),
                )
                .with_hint(format!(
                    "build only the sources kiln supports, e.g. -only='{}.*' or -except='{}'",
                    names[0], b.full_name
                )),
            );
            None
        }
    }
}

/// A made component, its warnings added to `d`; or its errors added and `None`.
fn collect<T: ?Sized>(made: kiln_core::plugins::Made<T>, d: &mut Diagnostics) -> Option<Box<T>> {
    match made {
        Ok((x, w)) => {
            d.extend(w);
            Some(x)
        }
        Err(e) => {
            d.extend(e);
            None
        }
    }
}

type Steps = (
    Vec<StepSpec<dyn kiln_core::Provisioner>>,
    Option<StepSpec<dyn kiln_core::Provisioner>>,
    Vec<Vec<StepSpec<dyn kiln_core::PostProcessor>>>,
);

/// A build's provisioners, error-cleanup provisioner and post-processor chains, from the tables.
fn steps(b: &BuildPlan, run_uuid: &str, d: &mut Diagnostics) -> Steps {
    use kiln_core::plugins::find;
    let provisioner = |c: &kiln_template::Component, d: &mut Diagnostics| {
        collect(
            find(kiln_provisioners::PROVISIONERS, "provisioner", c).and_then(|r| (r.make)(c)),
            d,
        )
    };
    let mut provisioners = Vec::new();
    for p in &b.provisioners {
        if let Some(x) = provisioner(&p.component, d) {
            provisioners.push(step_spec(p, x, d));
        }
    }
    let error_cleanup = b.error_cleanup.as_ref().and_then(|p| {
        let x = provisioner(&p.component, d)?;
        Some(step_spec(p, x, d))
    });
    let mut post = Vec::new();
    for chain in &b.post_processors {
        let mut c = Vec::new();
        for p in chain {
            let made = find(
                kiln_provisioners::POST_PROCESSORS,
                "post-processor",
                &p.component,
            )
            .and_then(|r| (r.make)(&p.component, run_uuid));
            if let Some(x) = collect(made, d) {
                c.push(step_spec(p, x, d));
            }
        }
        post.push(c);
    }
    (provisioners, error_cleanup, post)
}

/// The image is tagged with the build's name; a legacy JSON `name` may hold characters a tag
/// cannot, so those become `-`, and the build says so.
fn tag_for(b: &BuildPlan, d: &mut Diagnostics) -> String {
    let name = b.source_name();
    let tag: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphanumeric() || c == '_' || (i > 0 && (c == '.' || c == '-')) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    let tag = if kiln_store::check_tag(&tag).is_ok() {
        tag
    } else {
        format!("_{}", &tag[..tag.len().min(127)])
    };
    if tag != name {
        d.push(Diagnostic::warning(
            format!("build {name:?} is stored under the tag {tag:?}: a tag is A-Z a-z 0-9 _ . - (the OCI tag grammar)"),
            Some(b.builder.span.clone()),
        ));
    }
    tag
}
