//! [`AnyStore`]: the store a `--db` URL names, chosen by its scheme.

use chrono::{DateTime, Utc};
use oncely::keys::{ApiKey, KeyStore};
use oncely::{
    AcceptLease, Accepted, Backlog, ClaimRequest, DomainName, DomainOverview, Fenced, FollowUps,
    LeaseOwner, ListFilter, NewOperation, NodeId, Operation, OverviewOf, Page, PendingOutcome,
    RecordOutcome, Scope, Store, StoreError, Transition, WalEntry,
};

#[cfg(feature = "mysql")]
use crate::MySqlStore;
use crate::OpenError;
#[cfg(feature = "postgres")]
use crate::PgStore;
#[cfg(feature = "sqlite")]
use crate::SqliteStore;

/// One of the stores, picked at run time from a URL: `sqlite:…`, `postgres://…` or `mysql://…`.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// SQLite, one process per file.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    /// PostgreSQL, any number of nodes.
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
    /// MySQL or MariaDB, any number of nodes.
    #[cfg(feature = "mysql")]
    MySql(MySqlStore),
}

impl AnyStore {
    /// Opens the database `url` names and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        Self::open_with(url, true).await
    }

    /// Opens the database `url` names without touching its schema.
    pub async fn open_without_migrating(url: &str) -> Result<Self, OpenError> {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, migrate: bool) -> Result<Self, OpenError> {
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite:") {
            return Ok(Self::Sqlite(if migrate {
                SqliteStore::open(url).await?
            } else {
                SqliteStore::open_without_migrating(url).await?
            }));
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(if migrate {
                PgStore::open(url).await?
            } else {
                PgStore::open_without_migrating(url).await?
            }));
        }
        #[cfg(feature = "mysql")]
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            return Ok(Self::MySql(if migrate {
                MySqlStore::open(&url).await?
            } else {
                MySqlStore::open_without_migrating(&url).await?
            }));
        }
        Err(OpenError::Scheme {
            url: url.to_owned(),
            expected: "sqlite://PATH, sqlite::memory:, postgres://USER@HOST/DATABASE or mysql://USER@HOST/DATABASE",
        })
    }

    /// Closes the store's connections.
    pub async fn close(&self) {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => store.close().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => store.close().await,
            #[cfg(feature = "mysql")]
            Self::MySql(store) => store.close().await,
        }
    }
}

/// Calls the same method on whichever store this is.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($store) => $call.await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call.await,
            #[cfg(feature = "mysql")]
            AnyStore::MySql($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn accept(
        &self,
        batch: Vec<NewOperation>,
        lease: Option<AcceptLease>,
    ) -> Result<Vec<Accepted>, StoreError> {
        delegate!(self, store => store.accept(batch, lease))
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        delegate!(self, store => store.claim(request))
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        delegate!(self, store => store.record_outcomes(batch))
    }

    async fn settle(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        delegate!(self, store => store.settle(batch))
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        delegate!(self, store => store.finalize(batch))
    }

    async fn expired_leases(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        delegate!(self, store => store.expired_leases(domain, now, limit))
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        delegate!(self, store => store.reap(batch))
    }

    async fn backlog(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
    ) -> Result<Backlog, StoreError> {
        delegate!(self, store => store.backlog(domain, now))
    }

    async fn overview(
        &self,
        of: OverviewOf<'_>,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainOverview>, StoreError> {
        delegate!(self, store => store.overview(of, since, now))
    }

    async fn release_node(
        &self,
        domain: &DomainName,
        node: &NodeId,
        current: &LeaseOwner,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        delegate!(self, store => store.release_node(domain, node, current, now))
    }

    async fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingOutcome>, StoreError> {
        delegate!(self, store => store.pending_outcomes(domain, recorded_before, limit))
    }

    async fn retry(
        &self,
        scope: &Scope,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        delegate!(self, store => store.retry(scope, by, now))
    }

    async fn cancel(
        &self,
        scope: &Scope,
        by: Option<&str>,
        at_once: bool,
        follow_ups: FollowUps,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        delegate!(self, store => store.cancel(scope, by, at_once, follow_ups.clone(), now))
    }

    async fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        delegate!(self, store => store.purge(domain, completed_before, limit))
    }

    async fn work_signal(&self, domain: &DomainName) {
        delegate!(self, store => store.work_signal(domain))
    }

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        delegate!(self, store => store.get(scope))
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        delegate!(self, store => store.list(filter))
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        delegate!(self, store => store.history(scope))
    }
}

impl KeyStore for AnyStore {
    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        delegate!(self, store => store.create_key(key))
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        delegate!(self, store => store.keys())
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        delegate!(self, store => store.revoke_key(id, at))
    }

    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        delegate!(self, store => store.touch_keys(used))
    }
}
