//! The errors an [`Engine`](crate::Engine) returns to its caller.

use crate::key::{InvalidName, Scope};
use crate::state::OperationState;
use crate::store::StoreError;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key, tenant or domain name broke its rules. Nothing was stored.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The key is taken by an operation with a different command (I1). Nothing was stored.
    #[error("idempotency key {} is already used by an operation with a different request", .scope.key)]
    Conflict {
        /// The existing operation's scope.
        scope: Scope,
    },
    /// No operation has this scope.
    #[error("no operation {scope}")]
    NotFound {
        /// What was asked for.
        scope: Scope,
    },
    /// An operator retry of an operation that is neither `FAILED` nor `TIMEOUT`.
    #[error("operation {scope} is {state}; only FAILED or TIMEOUT operations can be retried")]
    NotRetryable {
        /// The operation.
        scope: Scope,
        /// Its state.
        state: OperationState,
    },
    /// An operator cancel of an operation that has already ended.
    #[error(
        "operation {scope} is {state}; only ACCEPTED or PROCESSING operations can be cancelled"
    )]
    NotCancellable {
        /// The operation.
        scope: Scope,
        /// Its state.
        state: OperationState,
    },
    /// The submit gave no key and the domain has no business key to use instead. Nothing
    /// was stored.
    #[error("an idempotency key is required: domain {domain} has no business key")]
    MissingKey {
        /// The domain.
        domain: String,
    },
    /// The command could not be turned into JSON. Nothing was stored.
    #[error("the command cannot be serialized: {0}")]
    Command(#[source] serde_json::Error),
    /// The engine configuration is not usable.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The engine is shutting down or has stopped: it takes no new work.
    #[error("the engine has stopped")]
    Stopped,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl Error {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_retryable(),
            Self::InvalidName(_)
            | Self::MissingKey { .. }
            | Self::Conflict { .. }
            | Self::NotFound { .. }
            | Self::NotRetryable { .. }
            | Self::NotCancellable { .. }
            | Self::Command(_)
            | Self::Config(_)
            | Self::Stopped => false,
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { scope } => Self::NotFound { scope },
            StoreError::NotRetryable { scope, state } => Self::NotRetryable { scope, state },
            StoreError::NotCancellable { scope, state } => Self::NotCancellable { scope, state },
            other @ (StoreError::Database(_)
            | StoreError::Corrupt(_)
            | StoreError::Crashed
            | StoreError::Busy { .. }) => Self::Store(other),
        }
    }
}
