//! Crash points, for tests that stop an engine between two steps of the lifecycle.
//!
//! A test arms one [`CrashPoint`]; when the engine (or a store given the same
//! [`Failpoints`]) reaches it, everything sharing the handle stops writing at once, as if
//! the process had died there. The test then drops the engine, opens a new one on the same
//! database and checks that every operation still ends exactly once.
//!
//! Without the `failpoints` cargo feature the handle is empty and every check is a constant
//! `false`, so production builds pay nothing.

/// A place in the lifecycle where a test can crash the engine (DESIGN.md's crash windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// The accept committed; no worker has claimed the operation.
    AfterAccept,
    /// The claim committed; the external call has not started.
    AfterClaim,
    /// The external call is running. The engine never hits this itself: a test's fake API
    /// hits it after performing its side effect, to die before answering.
    DuringCall,
    /// The external API answered; the outcome is not yet recorded.
    AfterAnswer,
    /// The outcome is in the write-ahead log; the operation is not yet finalized.
    AfterRecord,
    /// Inside the finalize transaction, before its commit (hit by the store).
    DuringFinalize,
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::Notify;

    use super::CrashPoint;

    #[derive(Debug, Default)]
    struct Inner {
        armed: Mutex<Option<CrashPoint>>,
        crashed: AtomicBool,
        on_crash: Notify,
    }

    /// A shared crash switch: armed at one point, tripped once, stopped for good after.
    #[derive(Debug, Clone, Default)]
    pub struct Failpoints {
        inner: Arc<Inner>,
    }

    impl Failpoints {
        /// Crash the first time `point` is reached.
        pub fn arm(&self, point: CrashPoint) {
            if let Ok(mut armed) = self.inner.armed.lock() {
                *armed = Some(point);
            }
        }

        /// Reports reaching `point`. True means stop now: the crash happened here or before.
        pub fn hit(&self, point: CrashPoint) -> bool {
            if self.is_crashed() {
                return true;
            }
            let tripped = match self.inner.armed.lock() {
                Ok(mut armed) if *armed == Some(point) => {
                    *armed = None;
                    true
                }
                Ok(_) | Err(_) => false,
            };
            if tripped {
                tracing::warn!(?point, "failpoint: crashing here");
                self.inner.crashed.store(true, Ordering::SeqCst);
                self.inner.on_crash.notify_waiters();
            }
            tripped
        }

        /// Whether the crash has happened.
        pub fn is_crashed(&self) -> bool {
            self.inner.crashed.load(Ordering::SeqCst)
        }

        /// Resolves once the crash has happened.
        pub async fn crashed(&self) {
            loop {
                let notified = self.inner.on_crash.notified();
                if self.is_crashed() {
                    return;
                }
                notified.await;
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod armed {
    use super::CrashPoint;

    /// Without the `failpoints` feature: never crashes.
    #[derive(Debug, Clone, Default)]
    pub struct Failpoints {
        _private: (),
    }

    impl Failpoints {
        /// Always false.
        #[inline(always)]
        pub fn hit(&self, _point: CrashPoint) -> bool {
            false
        }

        /// Always false.
        #[inline(always)]
        pub fn is_crashed(&self) -> bool {
            false
        }

        /// Never resolves.
        pub async fn crashed(&self) {
            std::future::pending::<()>().await;
        }
    }
}

pub use armed::Failpoints;
