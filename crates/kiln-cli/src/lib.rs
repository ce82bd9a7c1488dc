//! The `kiln` command line: parses arguments (Packer's single-dash flags work too), runs a
//! command, prints, and maps results to exit codes: 0 success, 1 failure or invalid template,
//! 2 wrong usage, 130 interrupted (SIGINT), 143 terminated (SIGTERM).

#[macro_use]
mod output;
mod exit;
mod fmt;
mod images;
mod prepare;
mod registry;
mod signals;
mod ui;

use clap::{Args, Parser, Subcommand};
use kiln_core::engine::{self, OnError, RunOptions};
use kiln_core::{Cancel, Sink};
use kiln_template::{Diagnostics, LoadOptions, Plan};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use exit::{CliError, Status};

const AFTER_HELP: &str = "Examples:
  kiln build templates/quickstart.pkr.hcl
  kiln build -var memory=1024 -only 'qemu.*' templates/
  kiln validate -var-file prod.pkrvars.hcl templates/
  kiln inspect templates/quickstart.json

Packer's single-dash flags (-var, -only, -force, ...) work as written for Packer.";

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Builds immutable VM images from Packer templates", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// The image store (default: $KILN_STORE, else $XDG_DATA_HOME/kiln/store)
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
struct TemplateArgs {
    /// Set a variable: -var name=value (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Load variables from a file (.pkrvars.hcl or .json; repeatable)
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
    /// Only these builds (globs on TYPE.NAME, comma-separated or repeated)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// All builds except these (globs on TYPE.NAME)
    #[arg(long, value_delimiter = ',')]
    except: Vec<String>,
    /// A .pkr.hcl file, a legacy .json template, or a directory of .pkr.hcl files
    #[arg(value_name = "TEMPLATE")]
    template: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct OutputArgs {
    /// Pause before each provisioner until Enter, and keep a failed guest for inspection
    #[arg(long)]
    debug: bool,
    /// Show debug messages (the qemu command line, SSH details); also KILN_LOG=debug or PACKER_LOG=1
    #[arg(long)]
    verbose: bool,
    /// Prefix every line with an RFC 3339 time
    #[arg(long = "timestamp-ui")]
    timestamp_ui: bool,
    /// Colour (-color=false turns it off; so does NO_COLOR)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    color: bool,
    /// Packer's machine-readable output: timestamp,target,type,data...
    #[arg(long = "machine-readable")]
    machine_readable: bool,
    /// One JSON event per line (docs/events.md)
    #[arg(long, conflicts_with = "machine_readable")]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum PluginsCmd {
    /// List every builder, provisioner, post-processor and communicator, from kiln's tables
    Installed,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build images from a template
    #[command(
        after_help = "Examples:\n  kiln build templates/quickstart.pkr.hcl\n  kiln build -force -on-error=abort -var memory=1024 templates/\n  kiln build -parallel-builds=1 -only 'qemu.*' templates/"
    )]
    Build {
        #[command(flatten)]
        t: TemplateArgs,
        /// Replace existing output directories
        #[arg(long)]
        force: bool,
        /// What to do when a build fails: cleanup, abort, ask, run-cleanup-provisioner
        #[arg(long = "on-error", default_value = "cleanup", value_parser = ["cleanup", "abort", "ask", "run-cleanup-provisioner"])]
        on_error: String,
        /// How many builds run at once (0 = all)
        #[arg(long = "parallel-builds", default_value_t = 0)]
        parallel_builds: usize,
        #[command(flatten)]
        out: OutputArgs,
        /// Look images up in this registry repository before building (a shared build cache)
        #[arg(long = "cache-from", value_name = "REGISTRY/REPO")]
        cache_from: Option<String>,
        /// Upload built images to this registry repository under their cache key
        #[arg(long = "cache-to", value_name = "REGISTRY/REPO")]
        cache_to: Option<String>,
        /// Fail the build when the --cache-from registry cannot be read (default: warn and build)
        #[arg(long = "cache-required")]
        cache_required: bool,
        /// Use plain HTTP for a registry on loopback (127.0.0.1, localhost)
        #[arg(long = "plain-http")]
        plain_http: bool,
    },
    /// Check a template and report every problem with its file:line:column
    #[command(
        after_help = "Examples:\n  kiln validate templates/quickstart.pkr.hcl\n  kiln validate -syntax-only templates/\n  kiln validate -var-file prod.pkrvars.hcl -only 'qemu.*' templates/"
    )]
    Validate {
        #[command(flatten)]
        t: TemplateArgs,
        /// Only check syntax; evaluate nothing
        #[arg(long = "syntax-only")]
        syntax_only: bool,
    },
    /// Show a template's variables, sources and builds, or an image's manifest (tag, id, or id prefix)
    #[command(
        after_help = "Examples:\n  kiln inspect templates/quickstart.pkr.hcl\n  kiln inspect -var memory=1024 templates/quickstart.json\n  kiln inspect quickstart          (an image in the store)"
    )]
    Inspect {
        #[command(flatten)]
        t: TemplateArgs,
    },
    /// Rewrite HCL templates in the canonical style, keeping comments
    #[command(
        after_help = "Examples:\n  kiln fmt templates/\n  kiln fmt -check -recursive .\n  kiln fmt -diff -write=false quickstart.pkr.hcl"
    )]
    Fmt {
        /// Exit 3 when a file is not formatted, and write nothing
        #[arg(long)]
        check: bool,
        /// Print the changes as a diff
        #[arg(long)]
        diff: bool,
        /// Write the result back to the files (-write=false to only look)
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        write: bool,
        /// Also format templates in subdirectories
        #[arg(long)]
        recursive: bool,
        /// Files or directories (default: the current directory)
        paths: Vec<PathBuf>,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  kiln completions bash > /etc/bash_completion.d/kiln\n  kiln completions zsh > ~/.zfunc/_kiln\n  kiln completions fish > ~/.config/fish/completions/kiln.fish"
    )]
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// The components kiln has built in (Packer's `plugins` command)
    Plugins {
        #[command(subcommand)]
        cmd: PluginsCmd,
    },
    /// Upload an image to an OCI registry
    #[command(
        after_help = "Examples:\n  kiln push quickstart registry.example.com/images/quickstart:v1\n  kiln push --plain-http sha256:1a2b3c 127.0.0.1:5000/test/quickstart:v1"
    )]
    Push {
        image: String,
        reference: String,
        #[arg(long = "plain-http")]
        plain_http: bool,
    },
    /// Download an image from an OCI registry into the store
    #[command(
        after_help = "Examples:\n  kiln pull registry.example.com/images/quickstart@sha256:…\n  kiln pull --plain-http 127.0.0.1:5000/test/quickstart:v1"
    )]
    Pull {
        reference: String,
        #[arg(long = "plain-http")]
        plain_http: bool,
    },
    /// Save credentials for a registry (the password comes on stdin)
    #[command(
        after_help = "Examples:\n  echo \"$TOKEN\" | kiln login --password-stdin -u ci registry.example.com"
    )]
    Login {
        registry: String,
        #[arg(short = 'u', long = "username")]
        username: Option<String>,
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        #[arg(long = "plain-http")]
        plain_http: bool,
    },
    /// Forget the credentials kiln saved for a registry
    Logout { registry: String },
    /// List the images in the store
    Images,
    /// Rehash every blob of the given images (default: all) and name any corrupt one
    Verify { images: Vec<String> },
    /// Give an image another name
    Tag { image: String, name: String },
    /// Remove an image from the store's index (`kiln gc` frees its blobs)
    Rm { image: String },
    /// Remove blobs no image references
    #[command(
        after_help = "An image whose tag moved to a newer build stays in the store, untagged (`<none>` in `kiln images`), until `kiln rm` or `kiln gc --untagged` removes it."
    )]
    Gc {
        /// First remove every untagged image from the index
        #[arg(long)]
        untagged: bool,
    },
    /// Write an image's disk to a file
    #[command(
        after_help = "Examples:\n  kiln export quickstart -o quickstart.raw --format raw\n  kiln export sha256:1a2b3c -o disk.vmdk --format vmdk"
    )]
    Export {
        image: String,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value = "qcow2", value_parser = ["qcow2", "raw", "vmdk", "vdi", "vhdx"])]
        format: String,
    },
    /// Print kiln's version
    Version,
}

/// Turns Packer's `-flag` into `--flag` so clap parses it; leaves `-h`, `-V` and values alone.
fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut past_double_dash = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || past_double_dash {
            out.push(a);
            continue;
        }
        if a == "--" {
            past_double_dash = true;
            out.push(a);
            continue;
        }
        let bytes = a.as_bytes();
        if bytes.len() > 2 && bytes[0] == b'-' && bytes[1] != b'-' && bytes[1].is_ascii_alphabetic()
        {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

fn load_options(t: &TemplateArgs, syntax_only: bool) -> Result<LoadOptions, String> {
    let mut vars = Vec::new();
    for v in &t.vars {
        match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => vars.push((k.to_string(), val.to_string())),
            _ => return Err(format!("-var {v:?}: expected NAME=VALUE")),
        }
    }
    Ok(LoadOptions {
        vars,
        var_files: t.var_files.clone(),
        env: std::env::vars().collect(),
        only: t.only.clone(),
        except: t.except.clone(),
        syntax_only,
        plugins: Some(prepare::plugins()),
        data_sources: kiln_builders::DATA_SOURCES,
    })
}

fn print_diags(d: &Diagnostics) {
    let secrets: Vec<String> = Vec::new();
    for x in &d.0 {
        tell!("{}", kiln_template::redact(&secrets, &x.to_string()));
    }
}

pub fn main() -> ExitCode {
    let args = normalize_args(std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // clap's own message (usage, help, version); help on a closed pipe is no error.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    exit::code(run(cli))
}

/// Runs one command; `exit::code` turns the result into the message and exit code.
fn run(cli: Cli) -> Result<Status, CliError> {
    match cli.cmd {
        Cmd::Version => {
            say!(
                "kiln {} (reads Packer {} templates)",
                env!("CARGO_PKG_VERSION"),
                kiln_template::PACKER_COMPAT_VERSION
            );
            Ok(Status::Success)
        }
        Cmd::Validate { t, syntax_only } => validate(&t, syntax_only),
        Cmd::Inspect { t } => {
            let as_image = !t.template.exists() && t.vars.is_empty() && t.var_files.is_empty();
            if as_image {
                let name = t.template.to_string_lossy().into_owned();
                let root = cli.store.clone().unwrap_or_else(kiln_store::default_root);
                return match kiln_store::Store::open_existing(&root) {
                    Ok(store) => match store.resolve(&name) {
                        Ok(_) => images::inspect(&store, &name),
                        Err(e @ kiln_store::StoreError::Ambiguous(..)) => Err(e.into()),
                        Err(_) => Err(CliError::failed(format!("{name:?} is neither a template file or directory nor an image in the store at {} (see `kiln images`)", root.display()))),
                    },
                    Err(e) => Err(CliError::failed(format!("{name:?} is not a template file or directory, and it cannot be looked up as an image: {e}"))),
                };
            }
            inspect(&t)
        }
        Cmd::Images => {
            let root = cli.store.clone().unwrap_or_else(kiln_store::default_root);
            match kiln_store::Store::open_existing(&root) {
                // No store yet: nothing built, nothing to list (and nothing created).
                Err(kiln_store::StoreError::NoStore(_)) => images::images(None),
                Ok(s) => images::images(Some(&s)),
                Err(source) => Err(CliError::OpenStore { root, source }),
            }
        }
        Cmd::Verify { images: names } => {
            images::open_existing(&cli.store).and_then(|s| images::verify(&s, &names))
        }
        Cmd::Tag { image, name } => {
            images::open_existing(&cli.store).and_then(|s| images::tag(&s, &image, &name))
        }
        Cmd::Rm { image } => images::open_existing(&cli.store).and_then(|s| images::rm(&s, &image)),
        Cmd::Gc { untagged } => {
            images::open_existing(&cli.store).and_then(|s| images::gc(&s, untagged))
        }
        Cmd::Export {
            image,
            output,
            format,
        } => images::open_existing(&cli.store)
            .and_then(|s| images::export(&s, &image, &output, &format)),
        Cmd::Build {
            t,
            force,
            on_error,
            parallel_builds,
            out,
            cache_from,
            cache_to,
            cache_required,
            plain_http,
        } => {
            let remote = registry::cache_from_args(&cache_from, &cache_to, plain_http)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let secret = cache_secret().map_err(CliError::Usage)?;
            let remote = CacheOpts {
                remote,
                required: cache_required,
                secret,
            };
            build(
                &t,
                &cli.store,
                force,
                &on_error,
                parallel_builds,
                &out,
                remote,
                plain_http,
            )
        }
        Cmd::Push {
            image,
            reference,
            plain_http,
        } => images::open_existing(&cli.store)
            .and_then(|s| registry::push(&s, &image, &reference, plain_http)),
        Cmd::Pull {
            reference,
            plain_http,
        } => images::open(&cli.store).and_then(|s| registry::pull(&s, &reference, plain_http)),
        Cmd::Login {
            registry: host,
            username,
            password_stdin,
            plain_http,
        } => registry::login(&host, username, password_stdin, plain_http),
        Cmd::Logout { registry: host } => registry::logout(&host),
        Cmd::Fmt {
            check,
            diff,
            write,
            recursive,
            paths,
        } => fmt::run(&paths, check, diff, write && !check, recursive),
        Cmd::Plugins {
            cmd: PluginsCmd::Installed,
        } => {
            prepare::list_components();
            Ok(Status::Success)
        }
        Cmd::Completions { shell } => {
            let shell = match shell.as_str() {
                "zsh" => clap_complete::Shell::Zsh,
                "fish" => clap_complete::Shell::Fish,
                _ => clap_complete::Shell::Bash,
            };
            // Into memory first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "kiln",
                &mut script,
            );
            say!("{}", String::from_utf8_lossy(&script).trim_end());
            Ok(Status::Success)
        }
    }
}

fn validate(t: &TemplateArgs, syntax_only: bool) -> Result<Status, CliError> {
    let opts = load_options(t, syntax_only).map_err(CliError::Usage)?;
    match prepare::prepare(&t.template, &opts, "validate", None) {
        Ok(p) => {
            print_diags(&p.diags);
            if syntax_only {
                say!("the template's syntax is valid: {}", t.template.display());
            } else {
                say!(
                    "the template is valid: {} ({} build{})",
                    t.template.display(),
                    p.jobs.len(),
                    if p.jobs.len() == 1 { "" } else { "s" }
                );
            }
            Ok(Status::Success)
        }
        Err(d) => {
            print_diags(&d);
            let n = d.errors().count();
            Err(CliError::Reported(format!(
                "the template is invalid: {n} error{}",
                if n == 1 { "" } else { "s" }
            )))
        }
    }
}

fn inspect(t: &TemplateArgs) -> Result<Status, CliError> {
    let opts = load_options(t, false).map_err(CliError::Usage)?;
    let (plan, diags) = kiln_template::load(&t.template, &opts);
    print_diags(&diags);
    let Some(plan) = plan else {
        return Ok(Status::Failed);
    };
    say!("{}", render_inspect(&plan).trim_end_matches('\n'));
    Ok(Status::Success)
}

fn render_inspect(plan: &Plan) -> String {
    let mut s = format!(
        "kiln inspect: {} template\n\n> input-variables:\n\n",
        if plan.format == "hcl2" {
            "HCL2"
        } else {
            "legacy JSON"
        }
    );
    if plan.variables.is_empty() {
        s.push_str("  (none)\n");
    }
    for v in &plan.variables {
        let shown = if v.sensitive {
            "<sensitive>".to_string()
        } else {
            plan.redact(&v.value.to_string())
        };
        let ty = v
            .type_expr
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        s.push_str(&format!(
            "var.{}: {shown}{ty} [from {}]\n",
            v.name, v.origin
        ));
    }
    s.push_str("\n> builds:\n");
    for b in &plan.builds {
        s.push_str(&format!(
            "\n  > {}:\n\n    source: {} ({})\n",
            b.full_name, b.full_name, b.builder.kind
        ));
        if !b.provisioners.is_empty() {
            s.push_str("\n    provisioners:\n\n");
            for p in &b.provisioners {
                s.push_str(&format!(
                    "      {}{}\n",
                    p.component.kind,
                    p.component
                        .name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(p) = &b.error_cleanup {
            s.push_str(&format!(
                "\n    error-cleanup-provisioner:\n\n      {}\n",
                p.component.kind
            ));
        }
        if !b.post_processors.is_empty() {
            s.push_str("\n    post-processors:\n\n");
            for (i, chain) in b.post_processors.iter().enumerate() {
                s.push_str(&format!("      {i}:\n"));
                for p in chain {
                    s.push_str(&format!("        {}\n", p.component.kind));
                }
            }
        }
    }
    s.push('\n');
    s
}

/// The shared build cache as the build sees it.
struct CacheOpts {
    remote: Option<registry::RegistryCache>,
    required: bool,
    secret: Option<Vec<u8>>,
}

/// KILN_CACHE_SECRET (the value) or KILN_CACHE_SECRET_FILE (a file holding it): what CI sets on
/// every runner so that cache keys of builds with sensitive values agree across machines.
fn cache_secret() -> Result<Option<Vec<u8>>, String> {
    let (bytes, what) = if let Some(v) = std::env::var_os("KILN_CACHE_SECRET") {
        (v.into_encoded_bytes(), "KILN_CACHE_SECRET".to_string())
    } else if let Some(p) = std::env::var_os("KILN_CACHE_SECRET_FILE") {
        let p = PathBuf::from(p);
        let b = std::fs::read(&p)
            .map_err(|e| format!("KILN_CACHE_SECRET_FILE {}: {e}", p.display()))?;
        (b, format!("KILN_CACHE_SECRET_FILE {}", p.display()))
    } else {
        return Ok(None);
    };
    let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
    if trimmed.len() < 16 {
        return Err(format!(
            "{what} is shorter than 16 bytes: use a long random value, e.g. `openssl rand -hex 32`"
        ));
    }
    Ok(Some(trimmed))
}

#[allow(clippy::too_many_arguments)]
fn build(
    t: &TemplateArgs,
    store: &Option<PathBuf>,
    force: bool,
    on_error: &str,
    parallel: usize,
    out: &OutputArgs,
    cache: CacheOpts,
    plain_http: bool,
) -> Result<Status, CliError> {
    let remote = cache.remote;
    let opts = load_options(t, false).map_err(CliError::Usage)?;
    let run_uuid = kiln_template::funcs::uuidv4();
    // Host-script and box scratch (kiln-shell-local-*, kiln-box-*) of a kiln that was SIGKILLed.
    kiln_core::workdir::sweep_stale(&std::env::temp_dir());
    let store = Arc::new(images::open(store)?);
    let bases = prepare::BaseResolver {
        store: &store,
        plain_http,
    };
    let prepared = match prepare::prepare(&t.template, &opts, &run_uuid, Some(&bases)) {
        Ok(p) => p,
        Err(d) => {
            print_diags(&d);
            return Err(CliError::Reported(
                "the template is invalid: nothing was built".into(),
            ));
        }
    };
    print_diags(&prepared.diags);
    let cancel = Cancel::new();
    signals::install(cancel.clone());
    let verbose = out.verbose
        || std::env::var("KILN_LOG").is_ok_and(|v| v == "debug")
        || std::env::var("PACKER_LOG").is_ok_and(|v| !v.is_empty() && v != "0");
    let tty =
        std::io::stdout().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let mode = if out.json {
        ui::Mode::Json
    } else if out.machine_readable {
        ui::Mode::MachineReadable
    } else if tty {
        ui::Mode::Tty
    } else {
        ui::Mode::Plain
    };
    let color = out.color
        && tty
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && matches!(mode, ui::Mode::Tty);
    let ui = ui::Ui::new(mode, verbose, out.timestamp_ui, color);
    let ui2 = ui.clone();
    let sink: Sink = Arc::new(move |e| ui2.handle(&e));
    let interactive = std::io::stdin().is_terminal();
    let on_error = match on_error {
        "abort" => OnError::Abort,
        "ask" => OnError::Ask,
        "run-cleanup-provisioner" => OnError::RunCleanupProvisioner,
        _ => OnError::Cleanup,
    };
    let ui3 = ui.clone();
    let ask: engine::AskFn = Arc::new(move |q: &str| {
        ui3.suspend(|| {
            output::prompt(format!("{q}\n[c] clean up, [a] abort and keep the guest: "));
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            s.trim().chars().next().unwrap_or('c')
        })
    });
    let ui4 = ui.clone();
    let pause: Option<engine::AskFn> = (out.debug && interactive).then(|| -> engine::AskFn {
        Arc::new(move |q: &str| {
            ui4.suspend(|| {
                output::prompt(format!("{q} — press Enter to continue: "));
                let mut s = String::new();
                let _ = std::io::stdin().read_line(&mut s);
                'c'
            })
        })
    });
    if out.debug && !interactive {
        tell!("warning: -debug pauses only when stdin is a terminal; running without pauses");
    }
    // As in Packer, -debug keeps a failed guest for inspection.
    let on_error = if out.debug && interactive {
        OnError::Abort
    } else {
        on_error
    };
    let run_opts = RunOptions {
        parallel,
        on_error,
        force,
        interactive,
        ask: Some(ask),
        pause,
        remote: remote.map(|r| Arc::new(r) as Arc<dyn engine::RemoteCache>),
        cache_required: cache.required,
        cache_secret: cache.secret,
        store,
        retry_wait: std::time::Duration::from_secs(1),
    };
    let outcomes = engine::run(prepared.jobs, &run_opts, sink, &cancel);
    let mut summary = String::from("\n==> builds finished:\n");
    summary.push_str(&format!(
        "    {:<24} {:<12} {:>8}  {}\n",
        "BUILD", "RESULT", "TIME", "IMAGE"
    ));
    for o in &outcomes {
        let status = if o.ok && o.cached {
            "up to date"
        } else if o.ok {
            "built"
        } else if o.cancelled {
            "interrupted"
        } else {
            "FAILED"
        };
        let id = o
            .artifact
            .as_ref()
            .map(|a| a.id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| "-".into());
        summary.push_str(&format!(
            "    {:<24} {:<12} {:>7.1}s  {}\n",
            o.name, status, o.seconds, id
        ));
    }
    ui.summary(summary.trim_end());
    if let Some(sig) = signals::received() {
        return Ok(Status::Signal(sig));
    }
    Ok(if outcomes.iter().all(|o| o.ok) {
        Status::Success
    } else {
        Status::Failed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packer_style_single_dash_flags_are_accepted() {
        let a = normalize_args(
            [
                "kiln",
                "build",
                "-var",
                "a=1",
                "-only=qemu.*",
                "-force",
                "-h",
                "t.pkr.hcl",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(
            a,
            [
                "kiln",
                "build",
                "--var",
                "a=1",
                "--only=qemu.*",
                "--force",
                "-h",
                "t.pkr.hcl"
            ]
        );
    }
}
