//! The Store contract, written once against the `Store` trait and instantiated for every
//! backend with `conformance_suite!`. Each function takes a fresh, empty store.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oncely::engine::{decide, decide_reap};
use oncely::{
    Accepted, ClaimRequest, Decision, DomainName, Fence, Fenced, Fingerprint, IdempotencyKey,
    LeaseOwner, ListFilter, NewOperation, Operation, OperationState, Outcome, OverviewOf,
    RecordOutcome, RetryPolicy, Scope, Store, StoreError, TenantId, Transition, WalKind,
};
use serde_json::json;

pub const LEASE: Duration = Duration::from_secs(30);

pub fn domain() -> DomainName {
    DomainName::new("CONFORMANCE").unwrap()
}

pub fn scope(key: &str) -> Scope {
    Scope::new(
        TenantId::default(),
        domain(),
        IdempotencyKey::new(key).unwrap(),
    )
}

pub fn new_operation(key: &str, amount: i64, now: DateTime<Utc>) -> NewOperation {
    let payload = json!({ "amount": amount });
    NewOperation {
        scope: scope(key),
        event_type: "CONFORMANCE_REQUESTED".into(),
        fingerprint: Fingerprint::of_json(&payload),
        payload,
        now,
        traceparent: None,
    }
}

pub fn owner(name: &str) -> LeaseOwner {
    LeaseOwner::from_stored(name)
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

pub async fn accept<S: Store>(store: &S, key: &str, now: DateTime<Utc>) -> Operation {
    match store
        .accept(vec![new_operation(key, 1, now)], None)
        .await
        .unwrap()
        .remove(0)
    {
        Accepted::New(operation) => operation,
        other => panic!("expected a new operation, got {other:?}"),
    }
}

pub async fn claim<S: Store>(
    store: &S,
    who: &str,
    now: DateTime<Utc>,
    limit: u32,
) -> Vec<Operation> {
    store
        .claim(ClaimRequest {
            domain: domain(),
            owner: owner(who),
            now,
            lease_ttl: LEASE,
            limit,
        })
        .await
        .unwrap()
}

/// The reaper's transition for `operation` at `now`.
pub fn reap_transition(operation: &Operation, now: DateTime<Utc>) -> Transition {
    Transition {
        fence: operation.fence().unwrap(),
        decision: decide_reap(&RetryPolicy::default(), operation, now),
        now,
        follow_ups: Vec::new(),
    }
}

pub fn ok_outcome(tag: &str) -> Outcome {
    Outcome::ok().with_data("transactionId", tag)
}

/// Records `outcome` for the attempt behind `fence`, with the engine's own decision.
pub async fn record<S: Store>(
    store: &S,
    operation: &Operation,
    fence: &Fence,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> (Fenced, Decision) {
    let decision = decide(&RetryPolicy::default(), operation, &outcome, false, now);
    let fenced = store
        .record_outcomes(vec![RecordOutcome {
            reconciled: false,
            fence: fence.clone(),
            outcome,
            decision: decision.clone(),
            now,
            follow_ups: Vec::new(),
        }])
        .await
        .unwrap()
        .remove(0);
    (fenced, decision)
}

pub async fn finalize<S: Store>(
    store: &S,
    fence: &Fence,
    decision: Decision,
    now: DateTime<Utc>,
) -> Fenced {
    store
        .finalize(vec![Transition {
            fence: fence.clone(),
            decision,
            now,
            follow_ups: Vec::new(),
        }])
        .await
        .unwrap()
        .remove(0)
}

pub async fn get<S: Store>(store: &S, key: &str) -> Operation {
    store.get(&scope(key)).await.unwrap().unwrap()
}

pub async fn kinds<S: Store>(store: &S, key: &str) -> Vec<WalKind> {
    store
        .history(&scope(key))
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.kind)
        .collect()
}

// ---------------------------------------------------------------------------------------

pub async fn accept_inserts_then_replays_then_refuses_a_conflict<S: Store>(store: S) {
    let created = accept(&store, "a", at(0)).await;
    assert_eq!(created.state, OperationState::Accepted);
    assert_eq!(created.next_retry_at, Some(at(0)));
    assert_eq!(created.attempt_count, 0);

    let replay = store
        .accept(vec![new_operation("a", 1, at(5))], None)
        .await
        .unwrap();
    assert_eq!(replay, vec![Accepted::Existing(created.clone())]);

    let conflict = store
        .accept(vec![new_operation("a", 2, at(6))], None)
        .await
        .unwrap();
    assert_eq!(conflict, vec![Accepted::Conflict(created.clone())]);
    assert_eq!(get(&store, "a").await, created, "a conflict writes nothing");
    assert_eq!(kinds(&store, "a").await, [WalKind::Accepted]);

    // The trace context it was submitted under is kept, with and without a lease.
    let trace: oncely::TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let traced = |key: &str| NewOperation {
        traceparent: Some(trace),
        ..new_operation(key, 1, at(7))
    };
    let accepted = store
        .accept(
            vec![traced("leased"), traced("waiting")],
            Some(lease("w", at(7), 1)),
        )
        .await
        .unwrap();
    for (accepted, key) in accepted.iter().zip(["leased", "waiting"]) {
        let Accepted::New(operation) = accepted else {
            panic!("expected a new operation, got {accepted:?}")
        };
        assert_eq!(operation.traceparent, Some(trace), "{key} as accepted");
        assert_eq!(
            get(&store, key).await.traceparent,
            Some(trace),
            "{key} as read"
        );
    }
    assert_eq!(created.traceparent, None);
}

pub async fn accept_batch_sees_its_own_duplicates<S: Store>(store: S) {
    let results = store
        .accept(
            vec![
                new_operation("x", 1, at(0)),
                new_operation("x", 1, at(0)),
                new_operation("x", 2, at(0)),
                new_operation("y", 1, at(0)),
            ],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(results[0], Accepted::New(_)));
    assert!(matches!(results[1], Accepted::Existing(_)));
    assert!(matches!(results[2], Accepted::Conflict(_)));
    assert!(matches!(results[3], Accepted::New(_)));
}

pub async fn claim_takes_due_operations_once_oldest_first_with_a_lease<S: Store>(store: S) {
    accept(&store, "late", at(10)).await;
    accept(&store, "early", at(0)).await;
    accept(&store, "future", at(100)).await;

    let claimed = claim(&store, "w1", at(20), 10).await;
    let keys: Vec<_> = claimed.iter().map(|o| o.scope.key.to_string()).collect();
    assert_eq!(keys, ["early", "late"], "due only, oldest due first");
    for operation in &claimed {
        assert_eq!(operation.state, OperationState::Processing);
        assert_eq!(operation.attempt_count, 1);
        let lease = operation.lease.as_ref().unwrap();
        assert_eq!(lease.owner, owner("w1"));
        assert_eq!(lease.until, at(50));
        assert_eq!(operation.last_attempt_at, Some(at(20)));
    }
    assert!(
        claim(&store, "w2", at(20), 10).await.is_empty(),
        "never claimed twice"
    );
    assert_eq!(claim(&store, "w2", at(100), 10).await.len(), 1);
    assert_eq!(
        kinds(&store, "early").await,
        [WalKind::Accepted, WalKind::Executing]
    );
}

pub async fn claim_respects_its_limit<S: Store>(store: S) {
    for i in 0..5 {
        accept(&store, &format!("k{i}"), at(0)).await;
    }
    assert_eq!(claim(&store, "w", at(1), 2).await.len(), 2);
    assert_eq!(claim(&store, "w", at(1), 10).await.len(), 3);
}

pub async fn record_then_finalize_completes_and_logs_both<S: Store>(store: S) {
    accept(&store, "a", at(0)).await;
    let operation = claim(&store, "w", at(1), 1).await.remove(0);
    let fence = operation.fence().unwrap();
    let (recorded, decision) = record(&store, &operation, &fence, ok_outcome("tx"), at(2)).await;
    assert_eq!(recorded, Fenced::Applied);
    assert_eq!(get(&store, "a").await.recorded_attempt, Some(1));
    assert_eq!(
        finalize(&store, &fence, decision, at(3)).await,
        Fenced::Applied
    );

    let done = get(&store, "a").await;
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(done.outcome_data, Some(json!({ "transactionId": "tx" })));
    assert_eq!(done.completed_at, Some(at(3)));
    assert!(done.lease.is_none());
    assert_eq!(
        kinds(&store, "a").await,
        [
            WalKind::Accepted,
            WalKind::Executing,
            WalKind::OutcomeRecorded,
            WalKind::Finalized
        ]
    );
}

pub async fn finalize_without_a_recorded_outcome_is_rejected<S: Store>(store: S) {
    accept(&store, "a", at(0)).await;
    let operation = claim(&store, "w", at(1), 1).await.remove(0);
    let fence = operation.fence().unwrap();
    let decision = Decision::Complete {
        data: Default::default(),
    };
    // I3: the log comes first; a store must refuse to finalize what it has not logged.
    assert_eq!(
        finalize(&store, &fence, decision, at(2)).await,
        Fenced::Rejected
    );
    assert_eq!(get(&store, "a").await, operation);
}

pub async fn zombie_finalize_after_lease_expiry_changes_nothing<S: Store>(store: S) {
    accept(&store, "z", at(0)).await;
    // Worker A claims attempt 1 and goes quiet past its lease.
    let a_view = claim(&store, "A", at(1), 1).await.remove(0);
    let a_fence = a_view.fence().unwrap();
    let expired = store.expired_leases(&domain(), at(40), 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    let reap = reap_transition(&expired[0], at(40));
    assert_eq!(store.reap(vec![reap]).await.unwrap(), [Fenced::Applied]);

    // Worker B takes over attempt 2 once it is due, and completes it.
    let b_view = claim(&store, "B", at(100), 1).await.remove(0);
    assert_eq!(b_view.attempt_count, 2);
    let b_fence = b_view.fence().unwrap();

    // A answers late while B holds the lease: rejected.
    let (a_recorded, a_decision) =
        record(&store, &a_view, &a_fence, ok_outcome("tx-from-A"), at(101)).await;
    assert_eq!(a_recorded, Fenced::Rejected);
    assert_eq!(
        get(&store, "z").await,
        b_view,
        "A's late record changed nothing"
    );

    let (b_recorded, b_decision) =
        record(&store, &b_view, &b_fence, ok_outcome("tx-from-B"), at(102)).await;
    assert_eq!(b_recorded, Fenced::Applied);
    assert_eq!(
        finalize(&store, &b_fence, b_decision, at(103)).await,
        Fenced::Applied
    );
    let done = get(&store, "z").await;
    assert_eq!(
        done.outcome_data,
        Some(json!({ "transactionId": "tx-from-B" }))
    );

    // A's late finalize: rejected, and the completed operation is untouched (I4).
    assert_eq!(
        finalize(&store, &a_fence, a_decision, at(104)).await,
        Fenced::Rejected
    );
    assert_eq!(get(&store, "z").await, done);
    let history = kinds(&store, "z").await;
    assert!(history.contains(&WalKind::OutcomeRejected), "{history:?}");
    assert_eq!(
        history.iter().filter(|k| **k == WalKind::Finalized).count(),
        1
    );
}

pub async fn a_fence_with_the_right_attempt_but_another_owner_is_rejected<S: Store>(store: S) {
    accept(&store, "o", at(0)).await;
    let operation = claim(&store, "real", at(1), 1).await.remove(0);
    let forged = Fence {
        owner: owner("impostor"),
        ..operation.fence().unwrap()
    };
    let (recorded, decision) = record(&store, &operation, &forged, ok_outcome("x"), at(2)).await;
    assert_eq!(recorded, Fenced::Rejected);
    assert_eq!(
        finalize(&store, &forged, decision, at(3)).await,
        Fenced::Rejected
    );
    assert_eq!(get(&store, "o").await, operation);
}

pub async fn reaper_takes_only_expired_unrecorded_leases<S: Store>(store: S) {
    accept(&store, "silent", at(0)).await;
    accept(&store, "answered", at(0)).await;
    let claimed = claim(&store, "w", at(1), 2).await;
    let answered = claimed
        .iter()
        .find(|o| o.scope.key.as_str() == "answered")
        .unwrap();
    let (recorded, _) = record(
        &store,
        answered,
        &answered.fence().unwrap(),
        ok_outcome("t"),
        at(2),
    )
    .await;
    assert_eq!(recorded, Fenced::Applied);

    assert!(
        store
            .expired_leases(&domain(), at(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "not yet expired"
    );
    let expired = store.expired_leases(&domain(), at(31), 10).await.unwrap();
    let keys: Vec<_> = expired.iter().map(|o| o.scope.key.to_string()).collect();
    assert_eq!(
        keys,
        ["silent"],
        "a recorded outcome is the Finalizer's, not the reaper's"
    );

    // Even asked directly, the store refuses to reap an attempt with a recorded outcome.
    let answered_now = get(&store, "answered").await;
    let reap_answered = reap_transition(&answered_now, at(31));
    assert_eq!(
        store.reap(vec![reap_answered]).await.unwrap(),
        [Fenced::Rejected]
    );
    // And a lease that has not expired is not reaped either.
    let silent = get(&store, "silent").await;
    let early = reap_transition(&silent, at(10));
    assert_eq!(store.reap(vec![early]).await.unwrap(), [Fenced::Rejected]);

    let reap = reap_transition(&silent, at(31));
    assert_eq!(store.reap(vec![reap]).await.unwrap(), [Fenced::Applied]);
    let reaped = get(&store, "silent").await;
    assert_eq!(reaped.state, OperationState::Accepted);
    assert!(reaped.lease.is_none());
    assert_eq!(
        reaped.next_retry_at,
        Some(at(31 + 20)),
        "the seed's backoff after attempt 1"
    );
    assert!(kinds(&store, "silent").await.contains(&WalKind::Reaped));
}

pub async fn pending_outcomes_lists_recorded_unfinalized_attempts<S: Store>(store: S) {
    accept(&store, "p", at(0)).await;
    let operation = claim(&store, "w", at(1), 1).await.remove(0);
    let fence = operation.fence().unwrap();
    assert!(
        store
            .pending_outcomes(&domain(), at(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (_, decision) = record(&store, &operation, &fence, ok_outcome("pending"), at(2)).await;

    assert!(
        store
            .pending_outcomes(&domain(), at(1), 10)
            .await
            .unwrap()
            .is_empty(),
        "grace"
    );
    let pending = store.pending_outcomes(&domain(), at(2), 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].outcome, ok_outcome("pending"));
    assert_eq!(pending[0].decision, decision);
    assert_eq!(
        finalize(&store, &fence, pending[0].decision.clone(), at(3)).await,
        Fenced::Applied
    );
    assert!(
        store
            .pending_outcomes(&domain(), at(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn operator_retry_only_from_failed_or_timeout<S: Store>(store: S) {
    accept(&store, "r", at(0)).await;
    let not_retryable = store.retry(&scope("r"), None, at(1)).await;
    assert!(matches!(
        not_retryable,
        Err(StoreError::NotRetryable {
            state: OperationState::Accepted,
            ..
        })
    ));
    let missing = store.retry(&scope("nope"), None, at(1)).await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })));

    let operation = claim(&store, "w", at(1), 1).await.remove(0);
    let fence = operation.fence().unwrap();
    let declined = Outcome::fail("declined").with_error_code("card_declined");
    let (_, decision) = record(&store, &operation, &fence, declined, at(2)).await;
    finalize(&store, &fence, decision, at(3)).await;
    assert_eq!(get(&store, "r").await.state, OperationState::Failed);

    let retried = store
        .retry(&scope("r"), Some("key-1"), at(4))
        .await
        .unwrap();
    assert_eq!(retried.state, OperationState::Accepted);
    assert_eq!((retried.attempt_count, retried.attempt_floor), (1, 1));
    assert_eq!(retried.next_retry_at, Some(at(4)));
    assert!(retried.completed_at.is_none() && retried.error_code.is_none());
    let again = claim(&store, "w", at(5), 1).await.remove(0);
    assert_eq!(
        again.attempt_count, 2,
        "attempt numbers keep rising: fences stay unique"
    );
    assert_eq!(again.scope.key.as_str(), "r", "the same key (I7)");
    let history = store.history(&scope("r")).await.unwrap();
    let entry = history
        .iter()
        .find(|entry| entry.kind == WalKind::OperatorRetried)
        .unwrap();
    assert_eq!(entry.detail["by"], "key-1", "who asked is in the log");
}

pub async fn operator_cancel_ends_what_is_not_running_and_requests_the_rest<S: Store>(store: S) {
    // Not yet run: CANCELLED at once, with who asked in the log.
    accept(&store, "idle", at(0)).await;
    let cancelled = store
        .cancel(
            &scope("idle"),
            Some("key-1"),
            true,
            vec![new_operation("idle:notice", 1, at(1))],
            at(1),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    assert_eq!(cancelled.completed_at, Some(at(1)));
    assert_eq!(cancelled.cancel_requested_at, Some(at(1)));
    assert_eq!(cancelled.next_retry_at, None);
    assert_eq!(get(&store, "idle").await, cancelled);
    let claimed = claim(&store, "w", at(2), 10).await;
    assert!(
        claimed.iter().all(|o| o.scope.key.as_str() != "idle"),
        "a cancelled operation is never claimed"
    );
    let history = store.history(&scope("idle")).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.kind, WalKind::OperatorCancelled);
    assert_eq!(last.state_after, OperationState::Cancelled);
    assert_eq!(last.detail["by"], "key-1");
    assert_eq!(last.detail["previousState"], "ACCEPTED");
    // The end submitted its follow-up in the same transaction (the outbox).
    let notice = get(&store, "idle:notice").await;
    assert_eq!(notice.created_at, at(1));
    // Cancelling it again answers it as it is, and logs nothing.
    let again = store
        .cancel(&scope("idle"), None, true, Vec::new(), at(3))
        .await
        .unwrap();
    assert_eq!(again, cancelled);
    assert_eq!(
        store.history(&scope("idle")).await.unwrap().len(),
        history.len()
    );

    // Running: only requested. The lease and the attempt stay; the fence still holds.
    accept(&store, "busy", at(4)).await;
    let running = claim(&store, "w", at(5), 1).await.remove(0);
    let requested = store
        .cancel(
            &scope("busy"),
            Some("key-2"),
            true,
            vec![new_operation("busy:notice", 1, at(6))],
            at(6),
        )
        .await
        .unwrap();
    assert_eq!(requested.state, OperationState::Processing);
    assert_eq!(requested.cancel_requested_at, Some(at(6)));
    assert_eq!(requested.lease, running.lease);
    assert_eq!(
        kinds(&store, "busy").await.last(),
        Some(&WalKind::CancelRequested)
    );
    assert!(
        store.get(&scope("busy:notice")).await.unwrap().is_none(),
        "a request ends nothing, so it submits nothing"
    );
    let twice = store
        .cancel(&scope("busy"), None, true, Vec::new(), at(7))
        .await
        .unwrap();
    assert_eq!(twice, requested, "a second request changes nothing");
    // Its attempt is retried by the engine's decision: the decision cancels it instead.
    let fence = running.fence().unwrap();
    let (applied, decision) =
        record(&store, &requested, &fence, Outcome::retry("busy"), at(8)).await;
    assert_eq!(applied, Fenced::Applied);
    assert_eq!(decision.target_state(), OperationState::Cancelled);
    assert_eq!(
        finalize(&store, &fence, decision, at(9)).await,
        Fenced::Applied
    );
    let ended = get(&store, "busy").await;
    assert_eq!(ended.state, OperationState::Cancelled);
    assert_eq!(ended.completed_at, Some(at(9)));
    assert!(ended.lease.is_none());

    // Waiting after an attempt whose outcome is unknown: requested, and due at once.
    accept(&store, "unsure", at(10)).await;
    let unsure = claim(&store, "w", at(11), 1).await.remove(0);
    let fence = unsure.fence().unwrap();
    store
        .reap(vec![reap_transition(&unsure, at(41))])
        .await
        .unwrap();
    let waiting = get(&store, "unsure").await;
    assert_eq!(waiting.state, OperationState::Accepted);
    let requested = store
        .cancel(&scope("unsure"), None, false, Vec::new(), at(42))
        .await
        .unwrap();
    assert_eq!(requested.state, OperationState::Accepted);
    assert_eq!(requested.next_retry_at, Some(at(42)));
    let claimed = claim(&store, "w2", at(42), 1).await.remove(0);
    assert_eq!(claimed.scope.key.as_str(), "unsure");
    assert_eq!(claimed.cancel_requested_at, requested.cancel_requested_at);
    assert_ne!(claimed.fence(), Some(fence));

    // Ended: not cancellable; an unknown key: not found.
    accept(&store, "done", at(20)).await;
    let done = claim(&store, "w", at(21), 1).await.remove(0);
    let fence = done.fence().unwrap();
    let (_, decision) = record(&store, &done, &fence, ok_outcome("t"), at(22)).await;
    finalize(&store, &fence, decision, at(23)).await;
    let refused = store
        .cancel(&scope("done"), None, true, Vec::new(), at(24))
        .await;
    assert!(matches!(
        refused,
        Err(StoreError::NotCancellable {
            state: OperationState::Completed,
            ..
        })
    ));
    let missing = store
        .cancel(&scope("nope"), None, true, Vec::new(), at(24))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })));
}

pub async fn list_filters_and_pages_newest_first<S: Store>(store: S) {
    for i in 0..7 {
        accept(&store, &format!("l{i}"), at(i)).await;
    }
    claim(&store, "w", at(1), 2).await; // l0, l1 → PROCESSING
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list(ListFilter {
                limit: 3,
                before,
                domain: Some(domain()),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|o| o.scope.key.to_string()));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["l6", "l5", "l4", "l3", "l2", "l1", "l0"]);

    let processing = store
        .list(ListFilter {
            state: Some(OperationState::Processing),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let keys: HashSet<_> = processing
        .items
        .iter()
        .map(|o| o.scope.key.to_string())
        .collect();
    assert_eq!(keys, HashSet::from(["l0".to_owned(), "l1".to_owned()]));
    assert!(processing.next.is_none());
    let other_tenant = store
        .list(ListFilter {
            tenant: Some(TenantId::new("other").unwrap()),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(other_tenant.items.is_empty());
}

pub async fn list_filters_by_attempts_error_code_and_acceptance_time<S: Store>(store: S) {
    // f0..f3 accepted at 0..3 s; f1 and f2 declined with codes, f3 retried twice.
    for i in 0..4 {
        accept(&store, &format!("f{i}"), at(i)).await;
    }
    for (key, outcome) in [
        (
            "f1",
            Outcome::fail("declined").with_error_code("card_declined"),
        ),
        (
            "f2",
            Outcome::fail("expired").with_error_code("card_expired"),
        ),
    ] {
        let operation = claim_key(&store, key, at(10)).await;
        let fence = operation.fence().unwrap();
        let (_, decision) = record(&store, &operation, &fence, outcome, at(11)).await;
        finalize(&store, &fence, decision, at(12)).await;
    }
    for round in 0..2 {
        let operation = claim_key(&store, "f3", at(20 + round * 100)).await;
        let fence = operation.fence().unwrap();
        let outcome = Outcome::retry("busy").with_backoff(Duration::from_secs(1));
        let (_, decision) = record(&store, &operation, &fence, outcome, at(21 + round * 100)).await;
        finalize(&store, &fence, decision, at(22 + round * 100)).await;
    }
    let keys = |filter: ListFilter| {
        let store = &store;
        async move {
            let page = store
                .list(ListFilter {
                    domain: Some(domain()),
                    limit: 10,
                    ..filter
                })
                .await
                .unwrap();
            page.items
                .iter()
                .map(|o| o.scope.key.to_string())
                .collect::<Vec<_>>()
        }
    };
    let code = keys(ListFilter {
        error_code: Some("card_declined".to_owned()),
        ..ListFilter::default()
    })
    .await;
    assert_eq!(code, ["f1"]);
    let retried = keys(ListFilter {
        attempts_min: Some(2),
        ..ListFilter::default()
    })
    .await;
    assert_eq!(retried, ["f3"]);
    let window = keys(ListFilter {
        created_from: Some(at(1)),
        created_until: Some(at(3)),
        ..ListFilter::default()
    })
    .await;
    assert_eq!(window, ["f2", "f1"], "from inclusive, until exclusive");
    let failed_and_coded = keys(ListFilter {
        state: Some(OperationState::Failed),
        attempts_min: Some(1),
        created_from: Some(at(2)),
        ..ListFilter::default()
    })
    .await;
    assert_eq!(failed_and_coded, ["f2"]);
}

/// Claims until `key` comes up (the store hands out the oldest due first), and returns it;
/// the others claimed on the way stay leased.
async fn claim_key<S: Store>(store: &S, key: &str, now: DateTime<Utc>) -> Operation {
    for _ in 0..10 {
        let claimed = claim(store, "w", now, 1).await;
        if let Some(operation) = claimed.into_iter().find(|o| o.scope.key.as_str() == key) {
            return operation;
        }
    }
    panic!("{key} was never claimed");
}

pub async fn history_is_in_order_and_unknown_operations_are_not_found<S: Store>(store: S) {
    accept(&store, "h", at(0)).await;
    let operation = claim(&store, "w", at(1), 1).await.remove(0);
    let history = store.history(&scope("h")).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].sequence < history[1].sequence);
    assert_eq!(history[1].attempt, 1);
    assert_eq!(history[1].owner, Some(owner("w")));
    assert_eq!(history[1].state_after, OperationState::Processing);
    assert_eq!(history[1].operation_id, operation.id);
    assert!(matches!(
        store.history(&scope("missing")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get(&scope("missing")).await.unwrap(), None);
}

pub async fn concurrent_claimers_never_share_an_operation<S: Store + Clone>(store: S) {
    const OPERATIONS: usize = 200;
    let batch = (0..OPERATIONS)
        .map(|i| new_operation(&format!("c{i}"), 1, at(0)))
        .collect();
    store.accept(batch, None).await.unwrap();
    let mut workers = Vec::new();
    for worker in 0..8 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = claim(&store, &format!("w{worker}"), at(1), 7).await;
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|o| o.id));
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), OPERATIONS, "every operation claimed");
    assert_eq!(unique.len(), OPERATIONS, "none claimed twice");
}

pub async fn concurrent_overlapping_accepts_replay_or_insert_never_fail<S: Store + Clone>(
    store: S,
) {
    // Two nodes accept the same keys in opposite orders, batch after batch: every item is
    // new or a replay of the other's, never an error or a deadlock.
    for round in 0..20 {
        let keys: Vec<String> = (0..8).map(|i| format!("r{round}-k{i}")).collect();
        let forward: Vec<_> = keys
            .iter()
            .map(|key| new_operation(key, 1, at(0)))
            .collect();
        // The second batch starts with a key of its own (it sorts first), so it has read
        // before it meets the first batch's keys: a store must still see their commit.
        let mut backward = vec![new_operation(&format!("a{round}-own"), 1, at(0))];
        backward.extend(keys.iter().rev().map(|key| new_operation(key, 1, at(0))));
        let (a, b) = (store.clone(), store.clone());
        let first = tokio::spawn(async move { a.accept(forward, None).await });
        let second = tokio::spawn(async move { b.accept(backward, None).await });
        let (first, second) = (
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        );
        let new = first
            .iter()
            .chain(&second)
            .filter(|accepted| matches!(accepted, Accepted::New(_)))
            .count();
        assert_eq!(
            new,
            keys.len() + 1,
            "round {round}: each key inserted exactly once"
        );
        assert!(
            first
                .iter()
                .chain(&second)
                .all(|a| !matches!(a, Accepted::Conflict(_))),
            "round {round}: the same request is never a conflict"
        );
    }
}

pub async fn purge_removes_old_terminal_operations_with_their_log_and_frees_the_key<S: Store>(
    store: S,
) {
    for key in ["old", "young", "open"] {
        accept(&store, key, at(0)).await;
    }
    let claimed = claim(&store, "w", at(1), 2).await; // old, young
    for (operation, ends_at) in claimed.iter().zip([10, 500]) {
        let fence = operation.fence().unwrap();
        let (_, decision) = record(&store, operation, &fence, ok_outcome("t"), at(ends_at)).await;
        assert_eq!(
            finalize(&store, &fence, decision, at(ends_at)).await,
            Fenced::Applied
        );
    }
    assert_eq!(
        store.purge(&domain(), at(10), 100).await.unwrap(),
        0,
        "strictly older only"
    );
    assert_eq!(
        store
            .purge(&DomainName::new("OTHER").unwrap(), at(1_000), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.purge(&domain(), at(100), 100).await.unwrap(), 1);
    assert!(store.get(&scope("old")).await.unwrap().is_none());
    assert!(matches!(
        store.history(&scope("old")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.get(&scope("young")).await.unwrap().is_some());
    // A non-terminal operation is never purged, however old.
    assert_eq!(store.purge(&domain(), at(1_000_000), 100).await.unwrap(), 1);
    assert_eq!(get(&store, "open").await.state, OperationState::Accepted);
    // The key is free again: a new operation, with a log of its own.
    let again = accept(&store, "old", at(2_000)).await;
    assert_eq!(kinds(&store, "old").await, [WalKind::Accepted]);
    assert_eq!(again.attempt_count, 0);
}

pub fn lease(who: &str, now: DateTime<Utc>, limit: u32) -> oncely::AcceptLease {
    oncely::AcceptLease {
        owner: owner(who),
        now,
        lease_ttl: LEASE,
        limit,
    }
}

pub async fn accept_with_a_lease_starts_the_first_new_operations_at_once<S: Store>(store: S) {
    accept(&store, "old", at(0)).await;
    let results = store
        .accept(
            vec![
                new_operation("old", 1, at(5)),
                new_operation("n1", 1, at(5)),
                new_operation("n2", 1, at(5)),
                new_operation("n3", 1, at(5)),
            ],
            Some(lease("w", at(5), 3)),
        )
        .await
        .unwrap();
    assert!(
        matches!(results[0], Accepted::Existing(_)),
        "a replay is not leased"
    );
    // The lease covers the first three scopes of the batch; "old" was not new, so only
    // n1 and n2 are started, and n3 waits for a claim.
    for (index, key) in [(1, "n1"), (2, "n2")] {
        let Accepted::New(operation) = &results[index] else {
            panic!("{key}: {:?}", results[index]);
        };
        assert_eq!(operation.state, OperationState::Processing, "{key}");
        assert_eq!(operation.attempt_count, 1, "{key}");
        assert_eq!(operation.last_attempt_at, Some(at(5)), "{key}");
        let held = operation.lease.as_ref().unwrap();
        assert_eq!(
            (held.owner.clone(), held.until),
            (owner("w"), at(35)),
            "{key}"
        );
        assert_eq!(&get(&store, key).await, operation, "{key}: as stored");
        assert_eq!(
            kinds(&store, key).await,
            [WalKind::Accepted, WalKind::Executing],
            "{key}"
        );
    }
    let Accepted::New(waiting) = &results[3] else {
        panic!("n3: {:?}", results[3]);
    };
    assert_eq!(waiting.state, OperationState::Accepted);
    assert!(waiting.lease.is_none());
    let claimed: Vec<_> = claim(&store, "other", at(6), 10)
        .await
        .into_iter()
        .map(|operation| operation.scope.key.to_string())
        .collect();
    assert_eq!(
        claimed,
        ["old", "n3"],
        "leased operations are not claimable"
    );
    // A leased operation settles like a claimed one.
    let n1 = get(&store, "n1").await;
    let fence = n1.fence().unwrap();
    let (recorded, decision) = record(&store, &n1, &fence, ok_outcome("t"), at(7)).await;
    assert_eq!(recorded, Fenced::Applied);
    assert_eq!(
        finalize(&store, &fence, decision, at(8)).await,
        Fenced::Applied
    );
}

/// Settles `outcome` for the attempt behind `fence`, with the engine's own decision.
pub async fn settle<S: Store>(
    store: &S,
    operation: &Operation,
    fence: &Fence,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Fenced {
    let decision = decide(&RetryPolicy::default(), operation, &outcome, false, now);
    store
        .settle(vec![RecordOutcome {
            reconciled: false,
            fence: fence.clone(),
            outcome,
            decision,
            now,
            follow_ups: Vec::new(),
        }])
        .await
        .unwrap()
        .remove(0)
}

pub async fn settle_records_then_applies_in_one_step<S: Store>(store: S) {
    for key in ["ok", "retry", "declined"] {
        accept(&store, key, at(0)).await;
    }
    let claimed = claim(&store, "w", at(1), 3).await;
    let by_key = |key: &str| {
        claimed
            .iter()
            .find(|o| o.scope.key.as_str() == key)
            .unwrap()
    };
    let outcomes = [
        ("ok", ok_outcome("tx")),
        ("retry", Outcome::retry("503")),
        (
            "declined",
            Outcome::fail("no").with_error_code("card_declined"),
        ),
    ];
    for (key, outcome) in outcomes {
        let operation = by_key(key);
        let fenced = settle(
            &store,
            operation,
            &operation.fence().unwrap(),
            outcome,
            at(2),
        )
        .await;
        assert_eq!(fenced, Fenced::Applied, "{key}");
        let history = store.history(&scope(key)).await.unwrap();
        let kinds: Vec<_> = history.iter().map(|entry| entry.kind).collect();
        // I3: the outcome's entry before the one that applies it.
        assert_eq!(
            kinds,
            [
                WalKind::Accepted,
                WalKind::Executing,
                WalKind::OutcomeRecorded,
                WalKind::Finalized
            ],
            "{key}"
        );
        assert_eq!(history[2].state_after, OperationState::Processing, "{key}");
        assert_eq!(
            history[3].state_after,
            get(&store, key).await.state,
            "{key}"
        );
        assert_eq!(get(&store, key).await.recorded_attempt, Some(1), "{key}");
    }
    let done = get(&store, "ok").await;
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(done.outcome_data, Some(json!({ "transactionId": "tx" })));
    assert!(done.lease.is_none());
    let retrying = get(&store, "retry").await;
    assert_eq!(retrying.state, OperationState::Accepted);
    assert_eq!(
        retrying.next_retry_at,
        Some(at(2 + 20)),
        "the seed's backoff"
    );
    let declined = get(&store, "declined").await;
    assert_eq!(declined.state, OperationState::Failed);
    assert_eq!(declined.error_code.as_deref(), Some("card_declined"));
    // The retry is claimable again at attempt 2, and settles again.
    let again = claim(&store, "w2", at(30), 10).await.remove(0);
    assert_eq!(
        (again.scope.key.as_str(), again.attempt_count),
        ("retry", 2)
    );
    let fenced = settle(
        &store,
        &again,
        &again.fence().unwrap(),
        ok_outcome("t2"),
        at(31),
    )
    .await;
    assert_eq!(fenced, Fenced::Applied);
    assert_eq!(get(&store, "retry").await.state, OperationState::Completed);
}

pub async fn a_zombies_settle_is_kept_in_the_log_and_changes_nothing<S: Store>(store: S) {
    accept(&store, "z", at(0)).await;
    let a_view = claim(&store, "A", at(1), 1).await.remove(0);
    let expired = store.expired_leases(&domain(), at(40), 10).await.unwrap();
    assert_eq!(
        store
            .reap(vec![reap_transition(&expired[0], at(40))])
            .await
            .unwrap(),
        [Fenced::Applied]
    );
    let b_view = claim(&store, "B", at(100), 1).await.remove(0);
    let before = get(&store, "z").await;
    assert_eq!(before, b_view);
    let late = settle(
        &store,
        &a_view,
        &a_view.fence().unwrap(),
        ok_outcome("from-A"),
        at(101),
    )
    .await;
    assert_eq!(late, Fenced::Rejected);
    assert_eq!(get(&store, "z").await, before, "I4: nothing changed");
    let history = kinds(&store, "z").await;
    assert_eq!(
        history.last(),
        Some(&WalKind::OutcomeRejected),
        "{history:?}"
    );
    assert!(!history.contains(&WalKind::Finalized), "{history:?}");
    // A forged owner on the current attempt is refused the same way.
    let forged = Fence {
        owner: owner("impostor"),
        ..b_view.fence().unwrap()
    };
    assert_eq!(
        settle(&store, &b_view, &forged, ok_outcome("x"), at(102)).await,
        Fenced::Rejected
    );
    assert_eq!(get(&store, "z").await, before);
}

/// One settle batch can hold a zombie's outcome and the current attempt's for the same
/// operation: only the current one applies, is reported applied and is logged as applied.
/// Each result is the one of its batch item, whatever order the store writes them in.
pub async fn a_zombie_and_the_current_attempt_in_one_settle_are_told_apart<S: Store>(store: S) {
    accept(&store, "z2", at(0)).await;
    let a_view = claim(&store, "A", at(1), 1).await.remove(0);
    let expired = store.expired_leases(&domain(), at(40), 10).await.unwrap();
    store
        .reap(vec![reap_transition(&expired[0], at(40))])
        .await
        .unwrap();
    let b_view = claim(&store, "B", at(100), 1).await.remove(0);
    // An operation accepted later (a higher id), first in the batch.
    accept(&store, "z3", at(100)).await;
    let c_view = claim(&store, "C", at(100), 1).await.remove(0);
    assert_eq!(c_view.scope.key.as_str(), "z3");
    let record = |view: &Operation, outcome: Outcome| {
        let decision = decide(&RetryPolicy::default(), view, &outcome, false, at(101));
        RecordOutcome {
            reconciled: false,
            fence: view.fence().unwrap(),
            outcome,
            decision,
            now: at(101),
            follow_ups: Vec::new(),
        }
    };
    let settled = store
        .settle(vec![
            record(&c_view, ok_outcome("from-C")),
            record(&a_view, ok_outcome("from-A")),
            record(&b_view, ok_outcome("from-B")),
        ])
        .await
        .unwrap();
    assert_eq!(
        settled,
        [Fenced::Applied, Fenced::Rejected, Fenced::Applied]
    );
    assert_eq!(get(&store, "z3").await.state, OperationState::Completed);
    let done = get(&store, "z2").await;
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(
        done.outcome_data,
        Some(json!({ "transactionId": "from-B" }))
    );
    let history = store.history(&scope("z2")).await.unwrap();
    let ends: Vec<(WalKind, u32)> = history
        .iter()
        .filter(|entry| entry.kind != WalKind::Accepted && entry.kind != WalKind::Executing)
        .map(|entry| (entry.kind, entry.attempt))
        .collect();
    assert!(ends.contains(&(WalKind::OutcomeRejected, 1)), "{ends:?}");
    assert!(ends.contains(&(WalKind::OutcomeRecorded, 2)), "{ends:?}");
    assert!(ends.contains(&(WalKind::Finalized, 2)), "{ends:?}");
    assert!(!ends.contains(&(WalKind::OutcomeRecorded, 1)), "{ends:?}");
    assert!(!ends.contains(&(WalKind::Finalized, 1)), "{ends:?}");
}

pub async fn finalize_and_reap_check_the_lease_owner_too<S: Store>(store: S) {
    // Finalize: the outcome is recorded by the real owner, so only the owner part of the
    // fence stands between a forged finalize and the operation.
    accept(&store, "f", at(0)).await;
    let operation = claim(&store, "real", at(1), 1).await.remove(0);
    let fence = operation.fence().unwrap();
    let (recorded, decision) = record(&store, &operation, &fence, ok_outcome("t"), at(2)).await;
    assert_eq!(recorded, Fenced::Applied);
    let recorded_view = get(&store, "f").await;
    let forged = Fence {
        owner: owner("impostor"),
        ..fence.clone()
    };
    assert_eq!(
        finalize(&store, &forged, decision.clone(), at(3)).await,
        Fenced::Rejected
    );
    assert_eq!(get(&store, "f").await, recorded_view, "I4: nothing changed");
    assert_eq!(
        finalize(&store, &fence, decision, at(3)).await,
        Fenced::Applied
    );

    // Reap: the lease has expired and nothing is recorded; only the owner is wrong.
    accept(&store, "r", at(0)).await;
    let operation = claim(&store, "real", at(1), 1).await.remove(0);
    let mut reap = reap_transition(&operation, at(40));
    reap.fence.owner = owner("impostor");
    assert_eq!(store.reap(vec![reap]).await.unwrap(), [Fenced::Rejected]);
    assert_eq!(get(&store, "r").await, operation, "I4: nothing changed");
}

pub async fn a_reap_from_a_stale_read_loses_to_an_outcome_recorded_since<S: Store>(store: S) {
    accept(&store, "s", at(0)).await;
    let operation = claim(&store, "w", at(1), 1).await.remove(0);
    // The Reaper reads the expired lease...
    let expired = store.expired_leases(&domain(), at(40), 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    let stale = reap_transition(&expired[0], at(40));
    // ...the worker's outcome lands meanwhile (its lease ran out while it answered)...
    let (recorded, _) = record(
        &store,
        &operation,
        &operation.fence().unwrap(),
        ok_outcome("t"),
        at(41),
    )
    .await;
    assert_eq!(recorded, Fenced::Applied);
    // ...and the reap, decided on the stale read, must not throw the outcome away (I3).
    assert_eq!(store.reap(vec![stale]).await.unwrap(), [Fenced::Rejected]);
    let now = get(&store, "s").await;
    assert_eq!(now.state, OperationState::Processing);
    assert_eq!(now.recorded_attempt, Some(1));
    assert!(!kinds(&store, "s").await.contains(&WalKind::Reaped));
    assert_eq!(
        store
            .pending_outcomes(&domain(), at(41), 10)
            .await
            .unwrap()
            .len(),
        1,
        "the Finalizer's now"
    );
}

pub async fn release_node_ends_only_the_earlier_incarnations_leases<S: Store>(store: S) {
    // One operation per owner: an earlier incarnation of n-1, the current one, another
    // node whose name starts the same, the same name in other case, a node-less worker.
    let owners = ["n-1/old", "n-1/new", "n-10/old", "N-1/old", "worker-1"];
    let mut claimed = Vec::new();
    for (i, who) in owners.iter().enumerate() {
        let key = format!("k{i}");
        accept(&store, &key, at(0)).await;
        claimed.push(claim(&store, who, at(1), 1).await.remove(0));
    }
    // Recorded by the earlier incarnation before it died: the Finalizer's, not the Reaper's.
    accept(&store, "recorded", at(0)).await;
    let recorded = claim(&store, "n-1/old", at(1), 1).await.remove(0);
    let fence = recorded.fence().unwrap();
    record(&store, &recorded, &fence, ok_outcome("t"), at(2)).await;

    let node = oncely::NodeId::new("n-1").unwrap();
    let released = store
        .release_node(&domain(), &node, &owner("n-1/new"), at(3))
        .await
        .unwrap();
    assert_eq!(released, 2, "the earlier incarnation's two leases");
    let expired = store.expired_leases(&domain(), at(3), 10).await.unwrap();
    let keys: Vec<&str> = expired.iter().map(|o| o.scope.key.as_str()).collect();
    assert_eq!(
        keys,
        ["k0"],
        "reapable now; a recorded outcome stays the Finalizer's"
    );
    let reap = reap_transition(&expired[0], at(3));
    assert_eq!(store.reap(vec![reap]).await.unwrap(), [Fenced::Applied]);
    for (i, operation) in claimed.iter().enumerate().skip(1) {
        assert_eq!(
            get(&store, &format!("k{i}")).await,
            *operation,
            "{}'s lease is untouched",
            owners[i]
        );
    }
    // The earlier incarnation, should it still be alive, is fenced out.
    let zombie = claimed[0].fence().unwrap();
    let (late, _) = record(&store, &claimed[0], &zombie, ok_outcome("z"), at(4)).await;
    assert_eq!(late, Fenced::Rejected);
    // Nothing is left to release: the recorded one's lease has already ended.
    let again = store
        .release_node(&domain(), &node, &owner("n-1/new"), at(5))
        .await
        .unwrap();
    assert_eq!(again, 0);
}

pub async fn overview_and_backlog_count_states_retries_stuck_due_and_rescues<S: Store>(store: S) {
    assert_eq!(
        store.overview(OverviewOf::All, at(0), at(0)).await.unwrap(),
        []
    );
    for key in ["a", "b", "c", "d"] {
        accept(&store, key, at(0)).await;
    }
    let claimed = claim(&store, "w", at(1), 3).await;
    let by_key = |key: &str| {
        claimed
            .iter()
            .find(|o| o.scope.key.as_str() == key)
            .unwrap()
            .clone()
    };
    // b completes; c's lease is reaped (a retry waits); a's lease ends unreaped (stuck);
    // d waits for its first attempt, due since at(0).
    let b = by_key("b");
    let fence = b.fence().unwrap();
    let (_, decision) = record(&store, &b, &fence, ok_outcome("t"), at(2)).await;
    assert_eq!(
        finalize(&store, &fence, decision, at(2)).await,
        Fenced::Applied
    );
    let reap = reap_transition(&by_key("c"), at(40));
    assert_eq!(store.reap(vec![reap]).await.unwrap(), [Fenced::Applied]);

    let overview = store
        .overview(OverviewOf::All, at(0), at(40))
        .await
        .unwrap();
    assert_eq!(overview.len(), 1, "{overview:?}");
    let domain = &overview[0];
    assert_eq!(domain.domain, self::domain().as_str());
    let states: Vec<(&str, u64)> = domain
        .states
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    assert_eq!(
        states,
        [
            ("ACCEPTED", 2),
            ("CANCELLED", 0),
            ("COMPLETED", 1),
            ("FAILED", 0),
            ("PROCESSING", 1),
            ("TIMEOUT", 0)
        ]
    );
    assert_eq!((domain.retrying, domain.stuck), (1, 1));
    assert_eq!(
        domain.oldest_due,
        Some(at(0)),
        "d, due since it was accepted"
    );
    assert_eq!((domain.ended_since, domain.rescued_since), (1, 1));
    // The live part alone, as the engine's gauges read it: d due since at(0), c waiting
    // for its retry, a processing.
    let backlog = store.backlog(&self::domain(), at(40)).await.unwrap();
    assert_eq!(
        backlog,
        oncely::Backlog {
            due: 1,
            waiting: 1,
            processing: 1,
            oldest_due: Some(at(0)),
        }
    );
    // Since later, nothing ended or was rescued.
    let later = store
        .overview(OverviewOf::All, at(41), at(41))
        .await
        .unwrap();
    assert_eq!((later[0].ended_since, later[0].rescued_since), (0, 0));
    // Live operations are counted as they are; terminal ones only when they ended since.
    assert_eq!(
        (
            later[0].states["ACCEPTED"],
            later[0].states["PROCESSING"],
            later[0].states["COMPLETED"]
        ),
        (2, 1, 0)
    );
    // A tenant's view of the domain: the same operations, since they are all its own;
    // another tenant's, or another domain's, has none of them.
    let tenant = TenantId::default();
    let own = store
        .overview(OverviewOf::Tenant(&tenant, &self::domain()), at(0), at(40))
        .await
        .unwrap();
    assert_eq!(own, overview);
    let other_tenant = TenantId::new("other").unwrap();
    let other_domain = DomainName::new("OTHER").unwrap();
    for of in [
        OverviewOf::Tenant(&other_tenant, &self::domain()),
        OverviewOf::Tenant(&tenant, &other_domain),
    ] {
        assert_eq!(
            store.overview(of, at(0), at(40)).await.unwrap(),
            [],
            "{of:?}"
        );
    }
}

/// The follow-up of `parent`'s end: an operation under `{parent}:event`.
fn follow_up(parent: &str, now: DateTime<Utc>) -> NewOperation {
    new_operation(&format!("{parent}:event"), 7, now)
}

pub async fn follow_ups_are_inserted_with_an_applied_end_only<S: Store>(store: S) {
    for key in ["settled", "finalized", "reaped", "zombie"] {
        accept(&store, key, at(0)).await;
    }
    let claimed = claim(&store, "w", at(1), 4).await;
    let by_key = |key: &str| {
        claimed
            .iter()
            .find(|o| o.scope.key.as_str() == key)
            .unwrap()
            .clone()
    };
    let exists = |key: String| {
        let store = &store;
        async move { store.get(&scope(&key)).await.unwrap() }
    };

    // A settle that applies inserts its follow-up with it, ready to be claimed.
    let settled = by_key("settled");
    let outcome = ok_outcome("tx");
    let decision = decide(&RetryPolicy::default(), &settled, &outcome, false, at(2));
    let applied = store
        .settle(vec![RecordOutcome {
            reconciled: false,
            fence: settled.fence().unwrap(),
            outcome,
            decision,
            now: at(2),
            follow_ups: vec![follow_up("settled", at(2))],
        }])
        .await
        .unwrap();
    assert_eq!(applied, [Fenced::Applied]);
    let event = exists("settled:event".into())
        .await
        .expect("inserted with the settle");
    assert_eq!(event.state, OperationState::Accepted);
    assert_eq!(kinds(&store, "settled:event").await, [WalKind::Accepted]);

    // So does a finalize (the Finalizer's path after a crash).
    let finalized = by_key("finalized");
    let fence = finalized.fence().unwrap();
    let (_, decision) = record(&store, &finalized, &fence, ok_outcome("t"), at(2)).await;
    let applied = store
        .finalize(vec![Transition {
            fence: fence.clone(),
            decision,
            now: at(3),
            follow_ups: vec![follow_up("finalized", at(3))],
        }])
        .await
        .unwrap();
    assert_eq!(applied, [Fenced::Applied]);
    assert!(exists("finalized:event".into()).await.is_some());

    // And a reap (a give-up may be announced too).
    let expired = store.expired_leases(&domain(), at(40), 10).await.unwrap();
    let expired_one = |key: &str| {
        expired
            .iter()
            .find(|o| o.scope.key.as_str() == key)
            .unwrap()
    };
    let mut transition = reap_transition(expired_one("reaped"), at(40));
    transition.follow_ups = vec![follow_up("reaped", at(40))];
    let zombie_reaped = reap_transition(expired_one("zombie"), at(40));
    let applied = store.reap(vec![transition, zombie_reaped]).await.unwrap();
    assert_eq!(applied, [Fenced::Applied, Fenced::Applied]);
    assert!(exists("reaped:event".into()).await.is_some());

    // A rejected end inserts nothing: the zombie's lease was reaped.
    let zombie = by_key("zombie");
    let outcome = ok_outcome("late");
    let decision = decide(&RetryPolicy::default(), &zombie, &outcome, false, at(41));
    let rejected = store
        .settle(vec![RecordOutcome {
            reconciled: false,
            fence: zombie.fence().unwrap(),
            outcome,
            decision,
            now: at(41),
            follow_ups: vec![follow_up("zombie", at(41))],
        }])
        .await
        .unwrap();
    assert_eq!(rejected, [Fenced::Rejected]);
    assert!(
        exists("zombie:event".into()).await.is_none(),
        "no follow-up of a zombie"
    );

    // A follow-up whose key is taken already is left as it is: ends are applied once, and
    // a second submit of the same event changes nothing.
    let before = exists("settled:event".into()).await.unwrap();
    let again = claim(&store, "w2", at(100), 10).await;
    let repeat = again
        .iter()
        .find(|o| o.scope.key.as_str() == "reaped")
        .unwrap();
    let outcome = ok_outcome("t3");
    let decision = decide(&RetryPolicy::default(), repeat, &outcome, false, at(101));
    let applied = store
        .settle(vec![RecordOutcome {
            reconciled: false,
            fence: repeat.fence().unwrap(),
            outcome,
            decision,
            now: at(101),
            follow_ups: vec![follow_up("settled", at(101))],
        }])
        .await
        .unwrap();
    assert_eq!(applied, [Fenced::Applied]);
    let after = exists("settled:event".into()).await.unwrap();
    assert_eq!((after.id, after.created_at), (before.id, before.created_at));
}

pub async fn api_keys_are_stored_hashed_listed_touched_and_revoked<S: Store + oncely::KeyStore>(
    store: S,
) {
    use oncely::keys::{KeySpec, Role, parse_token};
    let spec = |tenant: &str, roles: Vec<Role>| KeySpec {
        tenant: TenantId::new(tenant).unwrap(),
        roles,
        name: Some("checkout".into()),
        expires_at: Some(at(3_600)),
    };
    let first = spec("acme", vec![Role::Submit, Role::Read])
        .issue(at(0))
        .unwrap();
    let second = spec("globex", vec![Role::Operate]).issue(at(1)).unwrap();
    store.create_key(&first.key).await.unwrap();
    store.create_key(&second.key).await.unwrap();
    assert!(
        store.create_key(&first.key).await.is_err(),
        "ids are unique"
    );

    let keys = store.keys().await.unwrap();
    assert_eq!(
        keys,
        [first.key.clone(), second.key.clone()],
        "oldest first, as made"
    );
    let (_, secret) = parse_token(&first.token).unwrap();
    assert!(keys[0].verifies(secret));
    assert_ne!(keys[0].secret_hash, secret, "only a hash is stored");

    store
        .touch_keys(&[
            (first.key.id.clone(), at(10)),
            (second.key.id.clone(), at(11)),
        ])
        .await
        .unwrap();
    // An older use recorded later does not move the time back.
    store
        .touch_keys(&[(first.key.id.clone(), at(5))])
        .await
        .unwrap();
    let keys = store.keys().await.unwrap();
    assert_eq!(keys[0].last_used_at, Some(at(10)));
    assert_eq!(keys[1].last_used_at, Some(at(11)));

    assert!(store.revoke_key(&first.key.id, at(20)).await.unwrap());
    assert!(
        !store.revoke_key(&first.key.id, at(21)).await.unwrap(),
        "once"
    );
    assert!(
        !store.revoke_key("0000000000000000", at(21)).await.unwrap(),
        "unknown"
    );
    let keys = store.keys().await.unwrap();
    assert_eq!(keys[0].revoked_at, Some(at(20)));
    assert!(!keys[0].is_active(at(20)) && keys[1].is_active(at(20)));
}

/// Instantiates every conformance test for one backend. `$open` is an async fn returning
/// `(guard, store)`; the guard keeps the database alive for the test.
#[macro_export]
macro_rules! conformance_suite {
    ($open:path) => {
        $crate::conformance_suite!(@tests $open;
            accept_inserts_then_replays_then_refuses_a_conflict,
            accept_batch_sees_its_own_duplicates,
            claim_takes_due_operations_once_oldest_first_with_a_lease,
            claim_respects_its_limit,
            record_then_finalize_completes_and_logs_both,
            finalize_without_a_recorded_outcome_is_rejected,
            zombie_finalize_after_lease_expiry_changes_nothing,
            a_fence_with_the_right_attempt_but_another_owner_is_rejected,
            reaper_takes_only_expired_unrecorded_leases,
            pending_outcomes_lists_recorded_unfinalized_attempts,
            operator_retry_only_from_failed_or_timeout,
            operator_cancel_ends_what_is_not_running_and_requests_the_rest,
            list_filters_and_pages_newest_first,
            list_filters_by_attempts_error_code_and_acceptance_time,
            history_is_in_order_and_unknown_operations_are_not_found,
            concurrent_claimers_never_share_an_operation,
            concurrent_overlapping_accepts_replay_or_insert_never_fail,
            purge_removes_old_terminal_operations_with_their_log_and_frees_the_key,
            accept_with_a_lease_starts_the_first_new_operations_at_once,
            settle_records_then_applies_in_one_step,
            a_zombies_settle_is_kept_in_the_log_and_changes_nothing,
            a_zombie_and_the_current_attempt_in_one_settle_are_told_apart,
            finalize_and_reap_check_the_lease_owner_too,
            a_reap_from_a_stale_read_loses_to_an_outcome_recorded_since,
            release_node_ends_only_the_earlier_incarnations_leases,
            overview_and_backlog_count_states_retries_stuck_due_and_rescues,
            follow_ups_are_inserted_with_an_applied_end_only,
            api_keys_are_stored_hashed_listed_touched_and_revoked,
        );
    };
    (@tests $open:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((_guard, store)) = $open().await else { return };
                conformance::$name(store).await;
            }
        )*
    };
}
