//! The rows of the component tables. Each kind of component has one table (`kiln_builders::BUILDERS`,
//! `kiln_provisioners::PROVISIONERS` and `POST_PROCESSORS`, `kiln_ssh::options::COMMUNICATORS`,
//! kiln-template's function table); dispatch, the "kiln has: …" lists, "did you mean",
//! `required_plugins` and docs are all read from them. Adding a component is its module and
//! one row.

use crate::{Builder, PostProcessor, Provisioner, ResolvedBase};
use kiln_template::{did_you_mean, Component, Diagnostic, Diagnostics};

/// What a builder is made with besides its options.
pub struct BuildContext<'a> {
    /// The build's name (`source_name`), used for defaults such as `output-NAME`.
    pub build: &'a str,
    /// The `oci://` base kiln pulled for the builder's `base_option`, if any (build only).
    pub base: Option<&'a ResolvedBase>,
}

/// A made builder and the warnings about its options.
pub type Made<T> = Result<(Box<T>, Diagnostics), Diagnostics>;

pub struct BuilderRow {
    /// The source type in templates (`source "qemu" "x"`).
    pub name: &'static str,
    pub summary: &'static str,
    /// The Packer plugin that provides it (`required_plugins` names it), if it is a plugin.
    pub plugin: Option<&'static str>,
    /// The option that may name an `oci://` base image, pulled before the builder is made.
    pub base_option: Option<&'static str>,
    /// Options whose values go on a child's command line (a sensitive value in one is refused).
    pub argv_options: &'static [&'static str],
    pub make: fn(&Component, &BuildContext<'_>) -> Made<dyn Builder>,
}

pub struct ProvisionerRow {
    pub name: &'static str,
    pub summary: &'static str,
    pub plugin: Option<&'static str>,
    pub make: fn(&Component) -> Made<dyn Provisioner>,
}

pub struct PostProcessorRow {
    pub name: &'static str,
    pub summary: &'static str,
    pub plugin: Option<&'static str>,
    /// Made with the run's UUID (the manifest post-processor records it).
    pub make: fn(&Component, &str) -> Made<dyn PostProcessor>,
}

/// A table row: its name and plugin.
pub trait Row {
    fn name(&self) -> &'static str;
    fn plugin(&self) -> Option<&'static str>;
}

macro_rules! row {
    ($t:ty) => {
        impl Row for $t {
            fn name(&self) -> &'static str {
                self.name
            }
            fn plugin(&self) -> Option<&'static str> {
                self.plugin
            }
        }
    };
}
row!(BuilderRow);
row!(ProvisionerRow);
row!(PostProcessorRow);

/// The row named `c.kind`, or an error at the component naming what kiln has (and the nearest
/// name). `what` is "builder type", "provisioner", …
/// Packer components that only work with the WinRM communicator, which kiln does not have.
const WINDOWS_ONLY: &[(&str, &str)] = &[
    (
        "powershell",
        "it needs the WinRM communicator, which kiln does not have",
    ),
    (
        "windows-shell",
        "it needs the WinRM communicator, which kiln does not have",
    ),
    (
        "windows-restart",
        "it needs the WinRM communicator, which kiln does not have",
    ),
];

pub fn find<'a, R: Row>(table: &'a [R], what: &str, c: &Component) -> Result<&'a R, Diagnostics> {
    if let Some(r) = table.iter().find(|r| r.name() == c.kind) {
        return Ok(r);
    }
    let names: Vec<&str> = table.iter().map(Row::name).collect();
    if let Some((_, why)) = WINDOWS_ONLY.iter().find(|(n, _)| *n == c.kind) {
        return Err(Diagnostics(vec![Diagnostic::error(
            format!("{what} {:?} is not built into kiln: {why}", c.kind),
            Some(c.span.clone()),
        )
        .with_hint(
            "see docs/compatibility.md (Provisioners) for what implementing it needs",
        )]));
    }
    let hint = did_you_mean(&c.kind, names.iter().copied()).map_or_else(
        || format!("kiln has: {}", names.join(", ")),
        |s| format!("did you mean {s:?}?"),
    );
    Err(Diagnostics(vec![Diagnostic::error(
        format!("{what} {:?} is not built into kiln", c.kind),
        Some(c.span.clone()),
    )
    .with_hint(hint)]))
}

/// The Packer plugins whose components are all built in (what `required_plugins` may name).
pub fn plugins<R: Row>(table: &[R]) -> impl Iterator<Item = &'static str> + '_ {
    table.iter().filter_map(Row::plugin)
}
