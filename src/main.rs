//! The `kiln` binary: everything lives in `kiln-cli`.
fn main() -> std::process::ExitCode {
    kiln_cli::main()
}
