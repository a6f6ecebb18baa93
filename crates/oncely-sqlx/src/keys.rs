//! [`KeyStore`] for every backend: API keys in `oncely_api_keys`, beside the operations.

use chrono::{DateTime, Utc};
use oncely::keys::{ApiKey, KeyStore};
use oncely::{StoreError, TenantId};

use crate::backend::{Backend, Columns, Exec, Param};
use crate::rows::{millis, time};
use crate::store::SqlStore;

const COLUMNS: &str =
    "id, tenant, name, roles, secret_hash, created_at, last_used_at, expires_at, revoked_at";

fn key<R: Columns>(row: &R) -> Result<ApiKey, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("oncely_api_keys: {what}"));
    let optional_time = |name: &str| row.int_opt(name)?.map(time).transpose();
    Ok(ApiKey {
        id: row.text("id")?,
        tenant: TenantId::new(row.text("tenant")?).map_err(|e| corrupt(e.to_string()))?,
        name: row.text_opt("name")?,
        roles: ApiKey::parse_roles(&row.text("roles")?).map_err(|e| corrupt(e.to_string()))?,
        secret_hash: row.text("secret_hash")?,
        created_at: time(row.int("created_at")?)?,
        last_used_at: optional_time("last_used_at")?,
        expires_at: optional_time("expires_at")?,
        revoked_at: optional_time("revoked_at")?,
    })
}

impl<B: Backend> KeyStore for SqlStore<B> {
    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let sql = B::DIALECT.placeholders(&format!(
            "INSERT INTO oncely_api_keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ));
        let params = vec![
            Param::Text(key.id.clone()),
            Param::Text(key.tenant.to_string()),
            Param::TextOpt(key.name.clone()),
            Param::Text(key.roles_text()),
            Param::Text(key.secret_hash.clone()),
            Param::Int(millis(key.created_at)),
            Param::IntOpt(key.last_used_at.map(millis)),
            Param::IntOpt(key.expires_at.map(millis)),
            Param::IntOpt(key.revoked_at.map(millis)),
        ];
        self.run(&sql, params).await.map(drop)
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM oncely_api_keys ORDER BY created_at, id");
        self.rows(&sql, Vec::new()).await?.iter().map(key).collect()
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let sql = B::DIALECT.placeholders(
            "UPDATE oncely_api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        );
        let changed = self
            .run(
                &sql,
                vec![Param::Int(millis(at)), Param::Text(id.to_owned())],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        let sql = B::DIALECT.placeholders(
            "UPDATE oncely_api_keys SET last_used_at = ? \
             WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        );
        for (id, at) in used {
            let at = millis(*at);
            let params = vec![Param::Int(at), Param::Text(id.clone()), Param::Int(at)];
            self.run(&sql, params).await?;
        }
        Ok(())
    }
}

impl<B: Backend> SqlStore<B> {
    /// One statement on the writer pool; how many rows it changed.
    async fn run(&self, sql: &str, params: Vec<Param>) -> Result<u64, StoreError> {
        B::execute(Exec::Pool(self.writer()), sql, params)
            .await
            .map_err(crate::rows::database)
    }

    /// One query on the reader pool.
    async fn rows(&self, sql: &str, params: Vec<Param>) -> Result<Vec<B::Row>, StoreError> {
        B::fetch_all(Exec::Pool(self.reader()), sql, params)
            .await
            .map_err(crate::rows::database)
    }
}
