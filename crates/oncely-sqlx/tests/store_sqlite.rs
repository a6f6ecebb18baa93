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

/// The migration that brings `CANCELLED` rebuilds both tables on SQLite: what a database
/// held before it must all be there after, the log no longer cascades, and no id is handed
/// out twice.
#[tokio::test]
async fn the_cancel_migration_keeps_every_row_and_every_counter() {
    let db = TestDb::new();
    // The schema as it was before the cancel migration.
    let earlier = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "20261203" {
            std::fs::copy(&path, earlier.path().join(&name)).unwrap();
        }
    }
    let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse().unwrap();
    let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(earlier.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for (id, key) in [(1, "kept"), (2, "purged")] {
        sqlx::query(
            "INSERT INTO oncely_operations (id, tenant, domain, idem_key, event_type, state, \
             payload, fingerprint, created_at, updated_at, next_retry_at) \
             VALUES (?, 'default', 'CONFORMANCE', ?, 'E', 'ACCEPTED', '{}', 'f', 0, 0, 0)",
        )
        .bind(id)
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO oncely_wal (operation_id, kind, attempt, state_after, detail, recorded_at) \
             VALUES (?, 'ACCEPTED', 0, 'ACCEPTED', '{}', 0)",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Retention took the newest: its ids must not come back.
    sqlx::query("DELETE FROM oncely_wal WHERE operation_id = 2")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM oncely_operations WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = db.open().await;
    let kept = conformance::get(&store, "kept").await;
    assert_eq!(
        (kept.id.0, kept.state, kept.cancel_requested_at),
        (1, oncely::OperationState::Accepted, None)
    );
    let history = oncely::Store::history(&store, &conformance::scope("kept"))
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "the log came through");
    let next = conformance::accept(&store, "new", conformance::at(1)).await;
    assert_eq!(next.id.0, 3, "no operation id is handed out twice");
    let log = oncely::Store::history(&store, &conformance::scope("new"))
        .await
        .unwrap();
    assert_eq!(log[0].sequence, 3, "no log sequence is handed out twice");
    let cancelled = oncely::Store::cancel(
        &store,
        &conformance::scope("kept"),
        None,
        true,
        Vec::new(),
        conformance::at(2),
    )
    .await
    .unwrap();
    assert_eq!(cancelled.state, oncely::OperationState::Cancelled);
}
