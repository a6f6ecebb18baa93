//! The Store conformance suite on MySQL / MariaDB, each test in a database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod conformance;

use common::servers::MySqlDatabase;
use oncely_sqlx::MySqlStore;

async fn open() -> Option<(MySqlDatabase, MySqlStore)> {
    let database = MySqlDatabase::create().await?;
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
    let pool = sqlx::MySqlPool::connect_with(database.options.clone())
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
async fn keys_that_differ_only_in_case_are_different_operations() {
    let Some((_database, store)) = open().await else {
        return;
    };
    conformance::accept(&store, "Order-1", conformance::at(0)).await;
    conformance::accept(&store, "order-1", conformance::at(0)).await;
}
