//! What can go wrong running an audit or a chaos round.

/// An audit or a chaos round could not run (which is not the same as finding a fault).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or does not fit the database.
    #[error("{0}")]
    Setup(String),
    /// A step failed; `what` says which.
    #[error("{what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A process, file or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] oncely::StoreError),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] oncely_sqlx::OpenError),
    /// A direct database call failed (cutting connections).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// An HTTP call failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A name broke its rules.
    #[error(transparent)]
    Name(#[from] oncely::InvalidName),
    /// A report could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Names the step a failure happened in, as `anyhow::Context` does, with a typed error.
pub(crate) trait Context<T> {
    /// The error, labelled with `what`.
    fn during(self, what: &str) -> Result<T, Error>;
    /// The error, labelled with what `what` says, computed only on failure.
    fn during_with(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn during(self, what: &str) -> Result<T, Error> {
        self.during_with(|| what.to_owned())
    }

    fn during_with(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Step {
            what: what(),
            source: Box::new(source),
        })
    }
}

/// Returns `Error::Setup` with a formatted message unless `condition` holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err($crate::error::Error::Setup(format!($($message)+)));
        }
    };
}

pub(crate) use ensure;
