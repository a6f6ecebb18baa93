//! The simulated gateway every workload calls, in the same process, and the payments sent
//! to it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use oncely::IdempotencyKey;
use oncely_gateway_sim::{GatewaySim, RunningSim, SimConfig};
use oncely_payment::{Currency, GatewayClient, GatewayTimeouts, PaymentCommand};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

use crate::BenchError;

/// The simulated gateway with a fixed latency and no faults, its ledger in memory, and
/// the client every system under test uses to call it.
pub struct Gateway {
    /// The simulator, to read its ledger.
    pub sim: Arc<GatewaySim>,
    /// The client.
    pub client: GatewayClient,
    running: RunningSim,
}

impl Gateway {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start(latency: Duration) -> Result<Self, BenchError> {
        let config = SimConfig {
            latency_min: latency,
            latency_max: latency,
            ..SimConfig::default()
        };
        let setup = |e: &dyn std::fmt::Display| BenchError::Setup(format!("gateway: {e}"));
        let sim = GatewaySim::in_memory(config).map_err(|e| setup(&e))?;
        let running = sim
            .clone()
            .spawn("127.0.0.1:0")
            .await
            .map_err(|e| setup(&e))?;
        let timeouts = GatewayTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(30).max(latency * 2),
        };
        let client = GatewayClient::new(&running.url(), timeouts).map_err(|e| setup(&e))?;
        Ok(Self {
            sim,
            client,
            running,
        })
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        self.running.url()
    }

    /// How many distinct charges its ledger holds.
    pub async fn charges(&self) -> Result<u64, BenchError> {
        let charges = self
            .sim
            .charges()
            .await
            .map_err(|e| BenchError::Setup(format!("reading the gateway's ledger: {e}")))?;
        Ok(charges.len() as u64)
    }

    /// Stops serving.
    pub fn stop(self) {
        self.running.stop();
    }
}

/// The idempotency key of payment `i`.
pub fn payment_key(i: u64) -> Result<IdempotencyKey, String> {
    IdempotencyKey::new(format!("bench-{i}")).map_err(|e| e.to_string())
}

/// Payment `i`: each one a distinct order, so each is charged once.
pub fn payment(i: u64) -> Result<PaymentCommand, String> {
    let order = i64::try_from(i + 1).map_err(|e| e.to_string())?;
    let currency = Currency::new("USD").map_err(|e| e.to_string())?;
    PaymentCommand::new(
        order,
        Decimal::new(1_000 + order % 9_000, 2),
        "CARD",
        1 + order % 1_000,
        currency,
    )
    .map_err(|e| e.to_string())
}

/// Operations finishing on one side and awaited on another, in either order.
pub struct Finishes<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
}

enum Slot<V> {
    Waiting(oneshot::Sender<V>),
    Done(V),
}

impl<K: Hash + Eq, V> Default for Finishes<K, V> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V> Finishes<K, V> {
    /// `id` finished with `value`.
    pub fn report(&self, id: K, value: V) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(&id) {
            Some(Slot::Waiting(waiter)) => {
                let _ = waiter.send(value);
            }
            _ => {
                slots.insert(id, Slot::Done(value));
            }
        }
    }

    /// Waits until `id` has finished, up to `timeout`.
    pub async fn wait(&self, id: K, timeout: Duration) -> Result<V, String> {
        let receiver = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match slots.remove(&id) {
                Some(Slot::Done(value)) => return Ok(value),
                _ => {
                    let (sender, receiver) = oneshot::channel();
                    slots.insert(id, Slot::Waiting(sender));
                    receiver
                }
            }
        };
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err("the finish was never reported".to_owned()),
            Err(_) => Err(format!("not finished after {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_finish_is_seen_whether_it_comes_before_or_after_the_wait() {
        let finishes = Arc::new(Finishes::<u64, &str>::default());
        finishes.report(1, "early");
        assert_eq!(
            finishes.wait(1, Duration::from_secs(1)).await.unwrap(),
            "early"
        );
        let waiter = {
            let finishes = finishes.clone();
            tokio::spawn(async move { finishes.wait(2, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        finishes.report(2, "late");
        assert_eq!(waiter.await.unwrap().unwrap(), "late");
        assert!(finishes.wait(3, Duration::from_millis(10)).await.is_err());
    }

    #[test]
    fn payments_are_valid_and_distinct() {
        let a = payment(0).unwrap();
        let b = payment(1).unwrap();
        assert_ne!(a, b);
        assert_ne!(payment_key(0).unwrap(), payment_key(1).unwrap());
    }
}
