//! The only place kiln writes to stdout and stderr besides `ui.rs` (the event printer), so the
//! lints `print_stdout`/`print_stderr` hold everywhere else: the engine never prints. Writes
//! ignore errors: a closed pipe (`kiln build | head -1`) ends the output quietly, never a panic.

use std::fmt::Display;
use std::io::Write;

/// A line on stdout (what a command produces).
pub fn out(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr (warnings, errors, progress).
pub fn err(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Text on stderr without a newline (a prompt).
pub fn prompt(text: impl Display) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "{text}");
    let _ = e.flush();
}

/// `say!(...)`: a formatted line on stdout.
macro_rules! say {
    ($($t:tt)*) => { $crate::output::out(format_args!($($t)*)) };
}

/// `tell!(...)`: a formatted line on stderr.
macro_rules! tell {
    ($($t:tt)*) => { $crate::output::err(format_args!($($t)*)) };
}
