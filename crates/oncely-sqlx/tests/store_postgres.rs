//! The Store conformance suite on PostgreSQL, each test in a database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod conformance;

use common::servers::PgDatabase;
use oncely_sqlx::PgStore;

async fn open() -> Option<(PgDatabase, PgStore)> {
    let database = PgDatabase::create().await?;
    let store = database.store().await;
    Some((database, store))
}

conformance_suite!(open);

#[tokio::test]
async fn the_log_is_append_only() {
    let Some((database, store)) = open().await else {
        return;
    };
    conformance::accept(&store, "a", conformance::at(0)).await;
    let pool = sqlx::PgPool::connect_with(database.options.clone())
        .await
        .unwrap();
    let update = sqlx::query("UPDATE oncely_wal SET kind = 'FINALIZED'")
        .execute(&pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    pool.close().await;
    store.close().await;
}

#[tokio::test]
async fn an_accept_on_one_node_wakes_idle_nodes_and_a_replay_does_not() {
    use oncely::Store;
    use std::time::Duration;

    let Some((database, store)) = open().await else {
        return;
    };
    let other = database.store().await;
    let domain = conformance::domain();
    // The other node's LISTEN connection comes up in the background: try a few keys.
    let mut woken = false;
    for attempt in 0..20 {
        let signal = other.work_signal(&domain);
        let key = format!("wake-{attempt}");
        let accepting = conformance::accept(&store, &key, conformance::at(0));
        let (_, signalled) = tokio::join!(
            accepting,
            tokio::time::timeout(Duration::from_secs(1), signal)
        );
        if signalled.is_ok() {
            woken = true;
            break;
        }
    }
    assert!(woken, "no accept ever woke the other node");
    let signal = other.work_signal(&domain);
    let replay = store.accept(
        vec![conformance::new_operation("wake-0", 1, conformance::at(0))],
        None,
    );
    let (_, signalled) = tokio::join!(
        replay,
        tokio::time::timeout(Duration::from_millis(500), signal)
    );
    assert!(
        signalled.is_err(),
        "a replay stores nothing new and wakes nobody"
    );
}
