//! The error type of the runtime crates.

use kiln_template::Diagnostics;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Ctrl-C, SIGTERM or another build's abort.
    #[error("interrupted")]
    Cancelled,
    /// Bad configuration found while preparing (rendered with positions).
    #[error("{0}")]
    Config(Diagnostics),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The SSH connection dropped (what `expect_disconnect` tolerates).
    #[error("connection to the guest was lost: {0}")]
    Disconnected(String),
    #[error("{0}")]
    Failed(String),
    /// A failure no retry can fix (a changed SSH host key): steps that retry stop at once.
    #[error("{0}")]
    Fatal(String),
    /// The image store refused or failed (its error kept as the cause).
    #[error("image store: {0}")]
    Store(#[from] kiln_store::StoreError),
    /// A failure in another crate (the registry behind the shared cache, …), with context.
    #[error("{what}: {source}")]
    Other {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }
    /// `source` with what kiln was doing, keeping it as the cause.
    pub fn other(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Other {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Adds "what kiln was doing" to io errors.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
