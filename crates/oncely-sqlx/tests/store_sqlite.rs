//! The Store conformance suite on SQLite, each test on a file of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod conformance;

use common::TestDb;
use oncely_sqlx::SqliteStore;

async fn open() -> Option<(TestDb, SqliteStore)> {
    let db = TestDb::new();
    let store = db.open().await;
    Some((db, store))
}

conformance_suite!(open);

#[tokio::test]
async fn the_log_is_append_only() {
    let db = TestDb::new();
    let store = db.open().await;
    conformance::accept(&store, "a", conformance::at(0)).await;
    let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse().unwrap();
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let update = sqlx::query("UPDATE oncely_wal SET kind = 'FINALIZED'")
        .execute(&pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn an_invalid_url_is_a_clear_error() {
    let error = SqliteStore::open("postgres://nope").await.unwrap_err();
    assert!(
        error.to_string().contains("unsupported database URL"),
        "{error}"
    );
    let error = SqliteStore::open("sqlite:///nonexistent-dir/x/oncely.db")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cannot open"), "{error}");
}
