//! Closed-loop load: a fixed number of clients, each starting its next operation when its
//! last one has finished, so latency is measured at a known concurrency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::Latencies;

/// What a closed-loop run did.
#[derive(Debug, Default)]
pub struct Driven {
    /// From the first start to the last finish.
    pub elapsed: Duration,
    /// One per successful operation.
    pub latencies: Latencies,
    /// Operations that returned an error.
    pub errors: u64,
    /// The first error, to show.
    pub first_error: Option<String>,
}

impl Driven {
    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs operations `0..n` on `clients` concurrent clients. `operation(i)` returns when
/// operation `i` has finished (or failed).
pub async fn closed_loop<F, Fut>(n: u64, clients: usize, operation: F) -> Driven
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let operation = Arc::new(operation);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let operation = operation.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut driven = Driven::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return driven;
                }
                let start = Instant::now();
                match operation(i).await {
                    Ok(()) => driven.latencies.record(start.elapsed()),
                    Err(error) => {
                        driven.errors += 1;
                        driven.first_error.get_or_insert(error);
                    }
                }
            }
        });
    }
    let mut total = Driven::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(driven) => {
                total.latencies.merge(&driven.latencies);
                total.errors += driven.errors;
                if total.first_error.is_none() {
                    total.first_error = driven.first_error;
                }
            }
            Err(error) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("client task: {error}"));
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_operation_runs_once_and_errors_are_counted() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let driven = closed_loop(100, 7, move |i| {
            let record = record.clone();
            async move {
                record.lock().map_err(|e| e.to_string())?.push(i);
                if i % 10 == 0 {
                    Err(format!("op {i} failed"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        let mut seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(driven.errors, 10);
        assert_eq!(driven.latencies.len(), 90);
        assert!(driven.first_error.is_some_and(|e| e.ends_with("failed")));
    }
}
