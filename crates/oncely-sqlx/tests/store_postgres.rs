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
