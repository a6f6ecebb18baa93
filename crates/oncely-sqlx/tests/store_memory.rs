//! The Store conformance suite on `oncely::MemoryStore`, the simulator's store: it must
//! keep the same contract as the SQL stores, or what the simulator proves says nothing
//! about them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod conformance;

use oncely::MemoryStore;

async fn open() -> Option<((), MemoryStore)> {
    Some(((), MemoryStore::new()))
}

conformance_suite!(open);

/// The direct tests of guards (a) and (b) fail without them: the store with one rule
/// removed fails the test written for that rule.
#[tokio::test]
async fn each_removed_rule_fails_the_test_written_for_it() {
    use oncely::memory::Weakness;
    let weak = |weakness| MemoryStore::new().weakened(weakness);
    let owner = tokio::spawn(conformance::finalize_and_reap_check_the_lease_owner_too(
        weak(Weakness::NoOwnerFence),
    ));
    assert!(owner.await.is_err(), "(a) the owner fence went unnoticed");
    let reap = tokio::spawn(
        conformance::a_reap_from_a_stale_read_loses_to_an_outcome_recorded_since(weak(
            Weakness::ReapRecorded,
        )),
    );
    assert!(reap.await.is_err(), "(b) the recorded guard went unnoticed");
    let order = tokio::spawn(
        conformance::finalize_without_a_recorded_outcome_is_rejected(weak(
            Weakness::FinalizeBeforeRecord,
        )),
    );
    assert!(order.await.is_err(), "WAL first went unnoticed");
    // And the whole store stands when nothing is removed.
    let whole = tokio::spawn(conformance::finalize_and_reap_check_the_lease_owner_too(
        MemoryStore::new(),
    ));
    assert!(whole.await.is_ok());
}
