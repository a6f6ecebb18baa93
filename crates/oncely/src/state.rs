//! The six states of an operation and the one table of legal moves between them.
//!
//! Every store writes a state change with a condition on the old state, and every such
//! change is checked against [`OperationState::can_move_to`] in debug builds, so a
//! transition that is not in this table is a bug that tests catch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an operation is in its lifecycle (the seed's five states, and `Cancelled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    /// Recorded and waiting to be claimed (first attempt, or a retry after its backoff).
    Accepted,
    /// Claimed by a worker that holds a lease; the external call may be running.
    Processing,
    /// The external API succeeded; the outcome data is stored. Terminal.
    Completed,
    /// The external API refused for good. Terminal until an operator retries it.
    Failed,
    /// Given up without a definite answer: leases or retries exhausted. Terminal until an
    /// operator retries it.
    Timeout,
    /// Cancelled by an operator: no attempt will start again. Terminal.
    Cancelled,
}

impl OperationState {
    /// Every state, in lifecycle order.
    pub const ALL: [OperationState; 6] = [
        Self::Accepted,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Timeout,
        Self::Cancelled,
    ];

    /// Whether the operation has come to an end (no worker will touch it again by itself).
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Accepted | Self::Processing => false,
            Self::Completed | Self::Failed | Self::Timeout | Self::Cancelled => true,
        }
    }

    /// The legal transitions, all of them:
    ///
    /// | from         | to           | by                                               |
    /// |--------------|--------------|--------------------------------------------------|
    /// | `Accepted`   | `Processing` | a worker's claim (takes a lease, attempt + 1)    |
    /// | `Processing` | `Completed`  | finalize of an `Ok` outcome                      |
    /// | `Processing` | `Failed`     | finalize of a `Fail` outcome                     |
    /// | `Processing` | `Accepted`   | finalize of a `Retry`, or the reaper, attempts left |
    /// | `Processing` | `Timeout`    | the reaper or a `Retry` with no attempts left    |
    /// | `Failed`     | `Accepted`   | an operator's retry                              |
    /// | `Timeout`    | `Accepted`   | an operator's retry                              |
    /// | `Accepted`   | `Cancelled`  | an operator's cancel, when no attempt's outcome is unknown |
    /// | `Processing` | `Cancelled`  | a cancel-requested attempt that ends without success |
    ///
    /// A cancel of a `Processing` operation (or of an `Accepted` one whose last attempt's
    /// outcome is unknown) is only a request: the attempt ends as it ends — `Ok` completes,
    /// `Fail` fails — and instead of another attempt the operation is cancelled; an unknown
    /// outcome is reconciled first (see `Orchestrator::reconcile`).
    pub fn can_move_to(self, to: OperationState) -> bool {
        use OperationState::{Accepted, Cancelled, Completed, Failed, Processing, Timeout};
        match self {
            Accepted => matches!(to, Processing | Cancelled),
            Processing => matches!(to, Completed | Failed | Accepted | Timeout | Cancelled),
            Completed | Cancelled => false,
            Failed | Timeout => matches!(to, Accepted),
        }
    }

    /// The name stored in the database and shown in APIs (`ACCEPTED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Timeout => "TIMEOUT",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for OperationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown operation state {0:?}; expected one of ACCEPTED, PROCESSING, COMPLETED, FAILED, TIMEOUT, CANCELLED"
)]
pub struct UnknownState(pub String);

impl FromStr for OperationState {
    type Err = UnknownState;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| UnknownState(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::OperationState::{self, *};

    #[test]
    fn transition_table_allows_exactly_the_lifecycle_moves() {
        let allowed = [
            (Accepted, Processing),
            (Processing, Completed),
            (Processing, Failed),
            (Processing, Accepted),
            (Processing, Timeout),
            (Failed, Accepted),
            (Timeout, Accepted),
            (Accepted, Cancelled),
            (Processing, Cancelled),
        ];
        for from in OperationState::ALL {
            for to in OperationState::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn only_completed_failed_timeout_and_cancelled_are_terminal() {
        let terminal: Vec<_> = OperationState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, [Completed, Failed, Timeout, Cancelled]);
    }

    #[test]
    fn names_round_trip() {
        for state in OperationState::ALL {
            assert_eq!(state.as_str().parse::<OperationState>(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        assert!("DONE".parse::<OperationState>().is_err());
    }
}
