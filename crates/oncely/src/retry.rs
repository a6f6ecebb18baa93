//! When to try again: the seed's exponential backoff, a limit on attempts, optional jitter.

use std::time::Duration;

/// How an orchestrator's failed attempts are retried.
///
/// The backoff after attempt `n` is `min(backoff_max, 2^n × backoff_base)`; with the
/// defaults that is the seed's `min(300 s, 2^n × 10 s)`. A `Retry` outcome that names its
/// own backoff (from `Retry-After`, say) wins over the policy.
///
/// ```
/// use std::time::Duration;
/// use oncely::RetryPolicy;
///
/// let policy = RetryPolicy::default();
/// assert_eq!(policy.backoff(1), Duration::from_secs(20));
/// assert_eq!(policy.backoff(10), Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts allowed before the operation is given up as `TIMEOUT` (at least 1).
    pub attempts_max: u32,
    /// The base of the exponential backoff.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// Whether to spread retries by drawing the backoff from `[b/2, b]` rather than `b`.
    pub jitter: bool,
    /// Whether an attempt whose outcome is unknown (the worker died during the call) may be
    /// tried again. True for APIs that honour idempotency keys (I7): the retry forwards the
    /// same key, so the side effect happens at most once. Set it to false for an API that
    /// does not: such an operation then ends as `TIMEOUT` for a person to look at.
    pub retry_unknown_outcome: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts_max: 5,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            jitter: false,
            retry_unknown_outcome: true,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff from `base` to `max`, with the default limit of attempts:
    /// `RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60)).attempts(8)`.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            backoff_base: base,
            backoff_max: max,
            ..Self::default()
        }
    }

    /// The same, giving up after `attempts` attempts (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    /// The same, with each backoff drawn from `[b/2, b]` to spread retries.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The same, ending an attempt whose outcome is unknown as `TIMEOUT` instead of
    /// retrying it: for APIs that do not honour idempotency keys.
    pub fn without_retrying_unknown_outcomes(mut self) -> Self {
        self.retry_unknown_outcome = false;
        self
    }

    /// The backoff after attempt number `attempt` (counted from 1) failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let backoff = self
            .backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max);
        if self.jitter {
            let half = backoff / 2;
            half + half.mul_f64(fastrand::f64())
        } else {
            backoff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_seed_formula_and_caps_at_five_minutes() {
        let policy = RetryPolicy::default();
        let seconds: Vec<u64> = (0..=6).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(seconds, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn a_policy_is_one_line() {
        let policy = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(8))
            .attempts(4)
            .with_jitter();
        assert_eq!((policy.attempts_max, policy.jitter), (4, true));
        assert!(policy.backoff(1) <= Duration::from_secs(2));
        assert!(policy.backoff(9) <= Duration::from_secs(8));
        assert_eq!(RetryPolicy::default().attempts(0).attempts_max, 1);
        assert!(
            !RetryPolicy::default()
                .without_retrying_unknown_outcomes()
                .retry_unknown_outcome
        );
    }

    #[test]
    fn jitter_stays_within_half_and_full_backoff() {
        let policy = RetryPolicy {
            jitter: true,
            ..RetryPolicy::default()
        };
        for attempt in 1..8 {
            let full = RetryPolicy::default().backoff(attempt);
            let drawn = policy.backoff(attempt);
            assert!(drawn >= full / 2 && drawn <= full, "{drawn:?} vs {full:?}");
        }
    }
}
