//! Provisioners (shell, file, shell-local, breakpoint) and post-processors (manifest, checksum,
//! compress, shell-local), each built from a template `Component` with Packer's option names.

mod file;
mod local;
mod post;
mod shell;

use kiln_core::{PostProcessor, Provisioner};
use kiln_template::{did_you_mean, Component, Diagnostic, Diagnostics};

pub const PROVISIONERS: &[&str] = &["shell", "file", "shell-local", "breakpoint"];
pub const POST_PROCESSORS: &[&str] =
    &["manifest", "checksum", "compress", "shell-local", "vagrant"];

fn unknown(kind: &str, what: &str, known: &[&str], c: &Component) -> Diagnostics {
    let hint = did_you_mean(&c.kind, known.iter().copied()).map_or_else(
        || format!("kiln has: {}", known.join(", ")),
        |s| format!("did you mean {s:?}?"),
    );
    Diagnostics(vec![Diagnostic::error(
        format!("{what} {kind:?} is not built into kiln"),
        Some(c.span.clone()),
    )
    .with_hint(hint)])
}

/// Builds the provisioner a component describes.
pub fn provisioner(c: &Component) -> Result<Box<dyn Provisioner>, Diagnostics> {
    Ok(match c.kind.as_str() {
        "shell" => Box::new(shell::from_component(c)?),
        "file" => Box::new(file::from_component(c)?),
        "shell-local" => Box::new(local::shell_local(c)?),
        "breakpoint" => Box::new(local::breakpoint(c)?),
        other => return Err(unknown(other, "provisioner", PROVISIONERS, c)),
    })
}

/// Builds the post-processor a component describes.
pub fn post_processor(
    c: &Component,
    run_uuid: &str,
) -> Result<Box<dyn PostProcessor>, Diagnostics> {
    Ok(match c.kind.as_str() {
        "manifest" => Box::new(post::manifest(c, run_uuid)?),
        "checksum" => Box::new(post::checksum(c)?),
        "compress" => Box::new(post::compress(c)?),
        "vagrant" => Box::new(post::vagrant(c)?),
        "shell-local" => Box::new(local::shell_local(c)?),
        other => return Err(unknown(other, "post-processor", POST_PROCESSORS, c)),
    })
}
