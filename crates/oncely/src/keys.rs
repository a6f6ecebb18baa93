//! API keys: who may call a service, for which tenant, with which roles.
//!
//! A key is shown once, as a token `oncely_<id>_<secret>`: `<id>` (16 lowercase hex
//! characters) names the key, `<secret>` is 32 random bytes in unpadded base64url (256
//! bits). Only the SHA-256 of the secret is stored: a fast hash suffices for a secret that
//! random (password hashing exists for secrets people choose), and it is compared in
//! constant time. The tenant of every request comes from its key, never from the request.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::key::TenantId;
use crate::store::StoreError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Create operations.
    Submit,
    /// Read operations: get, list, history.
    Read,
    /// Act on operations as an operator: retry.
    Operate,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Submit, Role::Read, Role::Operate];

    /// `submit`, `read` or `operate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Operate => "operate",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        match text {
            "submit" => Ok(Self::Submit),
            "read" => Ok(Self::Read),
            "operate" => Ok(Self::Operate),
            other => Err(KeyError::Role(other.to_owned())),
        }
    }
}

/// Why a key could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a role.
    #[error("{0:?} is not a role: use submit, read or operate")]
    Role(String),
    /// A key needs at least one role.
    #[error("a key needs at least one role")]
    NoRole,
    /// A name too long or with control characters.
    #[error("a key's name is 1 to 100 printable characters")]
    Name,
    /// The system's random source failed.
    #[error("no random bytes for a key: {0}")]
    Random(String),
}

/// A key as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// Its id: the public part of its token.
    pub id: String,
    /// The tenant every request with it acts for.
    pub tenant: TenantId,
    /// A name for people (`checkout service`).
    pub name: Option<String>,
    /// What it may do.
    pub roles: Vec<Role>,
    /// SHA-256 of the secret, lowercase hex.
    #[serde(skip_serializing)]
    pub secret_hash: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used (recorded every few seconds, not per request).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether it works at `now`: not revoked, not expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }

    /// Whether it has `role`.
    pub fn allows(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether `secret` is this key's, compared in constant time.
    pub fn verifies(&self, secret: &str) -> bool {
        hash_secret(secret)
            .as_bytes()
            .ct_eq(self.secret_hash.as_bytes())
            .into()
    }

    /// The roles as stored: `submit,read`.
    pub fn roles_text(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Roles from their stored form.
    pub fn parse_roles(text: &str) -> Result<Vec<Role>, KeyError> {
        let mut roles = text
            .split(',')
            .filter(|r| !r.is_empty())
            .map(Role::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(KeyError::NoRole);
        }
        Ok(roles)
    }
}

/// SHA-256 of `secret`, lowercase hex.
pub fn hash_secret(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// A newly made key and its token, which is shown once and never stored.
pub struct NewKey {
    /// The key, as stored.
    pub key: ApiKey,
    /// `oncely_<id>_<secret>`.
    pub token: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What a new key is made with.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its roles (at least one).
    pub roles: Vec<Role>,
    /// A name for people.
    pub name: Option<String>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeySpec {
    /// A key with a fresh id and secret, made at `now`.
    pub fn issue(self, now: DateTime<Utc>) -> Result<NewKey, KeyError> {
        let mut roles = self.roles;
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(KeyError::NoRole);
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control))
        {
            return Err(KeyError::Name);
        }
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| KeyError::Random(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let key = ApiKey {
            id: id.clone(),
            tenant: self.tenant,
            name: self.name,
            roles,
            secret_hash: hash_secret(&secret),
            created_at: now,
            last_used_at: None,
            expires_at: self.expires_at,
            revoked_at: None,
        };
        Ok(NewKey {
            key,
            token: format!("oncely_{id}_{secret}"),
        })
    }
}

/// A token's id and secret, if it has a token's form.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix("oncely_")?.split_once('_')?;
    let id_ok = id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// Where keys are kept: every store oncely ships implements it on the same database as
/// the operations.
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key.
    fn create_key(&self, key: &ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every key, revoked and expired ones included, oldest first.
    fn keys(&self) -> impl Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;

    /// Revokes key `id` at `at`; false when there is no such key or it was revoked already.
    fn revoke_key(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records when keys were last used.
    fn touch_keys(
        &self,
        used: &[(String, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(roles: Vec<Role>) -> KeySpec {
        KeySpec {
            tenant: TenantId::new("acme").unwrap(),
            roles,
            name: Some("checkout".into()),
            expires_at: None,
        }
    }

    #[test]
    fn a_token_verifies_against_its_key_only() {
        let now = Utc::now();
        let made = spec(vec![Role::Read, Role::Submit, Role::Read])
            .issue(now)
            .unwrap();
        let (id, secret) = parse_token(&made.token).unwrap();
        assert_eq!(id, made.key.id);
        assert!(made.key.verifies(secret));
        assert!(!made.key.verifies(&secret.replace(&secret[..1], "x")));
        assert_eq!(
            made.key.roles,
            [Role::Submit, Role::Read],
            "sorted, deduplicated"
        );
        assert!(made.key.allows(Role::Submit) && !made.key.allows(Role::Operate));
        assert!(!made.token.contains(&made.key.secret_hash));
        assert!(
            !format!("{made:?}").contains(secret),
            "Debug hides the token"
        );
        let other = spec(vec![Role::Read]).issue(now).unwrap();
        assert_ne!(other.token, made.token);
    }

    #[test]
    fn tokens_of_the_wrong_form_are_not_parsed() {
        for bad in [
            "",
            "oncely_",
            "oncely_0123456789abcdef",
            "oncely_0123456789ABCDEF_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "oncely_0123456789abcdef_short",
            "bearer_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "oncely_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
        assert!(
            parse_token("oncely_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-_A")
                .is_some()
        );
    }

    #[test]
    fn expiry_and_revocation_end_a_key() {
        let now = Utc::now();
        let mut key = spec(vec![Role::Read]).issue(now).unwrap().key;
        assert!(key.is_active(now));
        key.expires_at = Some(now);
        assert!(!key.is_active(now), "expires at that instant");
        key.expires_at = None;
        key.revoked_at = Some(now);
        assert!(!key.is_active(now));
    }

    #[test]
    fn roles_round_trip_and_bad_ones_are_refused() {
        assert_eq!(
            ApiKey::parse_roles("read,submit,read").unwrap(),
            [Role::Submit, Role::Read]
        );
        assert_eq!(ApiKey::parse_roles("").unwrap_err(), KeyError::NoRole);
        assert!(ApiKey::parse_roles("admin").is_err());
        assert!(spec(Vec::new()).issue(Utc::now()).is_err());
        let named = KeySpec {
            name: Some("a\nb".into()),
            ..spec(vec![Role::Read])
        };
        assert_eq!(named.issue(Utc::now()).unwrap_err(), KeyError::Name);
    }
}
