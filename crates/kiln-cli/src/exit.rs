//! How a command ends. Every command returns `Result<Status, CliError>`; `code` is the one place
//! that prints the error (with its causes) and picks the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

/// A command that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    /// It ran, and what it found or did failed (a build, a verify); it said so itself: exit 1.
    Failed,
    /// `kiln fmt -check` found files to format: exit 3, as Packer's.
    Unformatted,
    /// Ended by a signal: exit 128 + the signal.
    Signal(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Problems already printed (template diagnostics); this line ends the output: exit 1.
    #[error("{0}")]
    Reported(String),
    #[error("cannot open the image store at {}: {source}", root.display())]
    OpenStore {
        root: PathBuf,
        #[source]
        source: kiln_store::StoreError,
    },
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error(transparent)]
    Registry(#[from] kiln_registry::RegistryError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn failed(m: impl Into<String>) -> Self {
        CliError::Failed(m.into())
    }
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The message (and any cause not already in it) and the exit code.
pub fn code(r: Result<Status, CliError>) -> ExitCode {
    match r {
        Ok(Status::Success) => ExitCode::SUCCESS,
        Ok(Status::Failed) => ExitCode::from(1),
        Ok(Status::Unformatted) => ExitCode::from(3),
        Ok(Status::Signal(s)) => ExitCode::from(128u8.saturating_add(u8::try_from(s).unwrap_or(0))),
        Err(CliError::Reported(m)) => {
            tell!("{m}");
            ExitCode::from(1)
        }
        Err(e) => {
            let mut text = format!("error: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let t = c.to_string();
                if !text.contains(&t) {
                    text.push_str(&format!("\n  caused by: {t}"));
                }
                cause = c.source();
            }
            tell!("{text}");
            ExitCode::from(if matches!(e, CliError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_one_exit_code() {
        let c = |r| format!("{:?}", code(r));
        assert_eq!(c(Ok(Status::Success)), format!("{:?}", ExitCode::SUCCESS));
        assert_eq!(c(Ok(Status::Failed)), format!("{:?}", ExitCode::from(1)));
        assert_eq!(
            c(Ok(Status::Unformatted)),
            format!("{:?}", ExitCode::from(3))
        );
        assert_eq!(
            c(Ok(Status::Signal(15))),
            format!("{:?}", ExitCode::from(143))
        );
        assert_eq!(
            c(Err(CliError::Usage("x".into()))),
            format!("{:?}", ExitCode::from(2))
        );
        assert_eq!(
            c(Err(CliError::failed("x"))),
            format!("{:?}", ExitCode::from(1))
        );
    }
}
