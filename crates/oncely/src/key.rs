//! Names that identify an operation: the idempotency key, the tenant, the domain.
//!
//! An operation is identified by its [`Scope`]: (tenant, domain, idempotency key). The
//! store keeps at most one operation per scope (I1), so these types only exist in a valid
//! form: the constructors check the rules and nothing else can build them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a key, tenant or domain name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    /// The value was empty (or only white space).
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of name was refused.
        what: &'static str,
    },
    /// The value was longer than allowed.
    #[error("{what} is {length} characters long; at most {max} are allowed")]
    TooLong {
        /// Which kind of name was refused.
        what: &'static str,
        /// The length that was given.
        length: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The value held a character outside the allowed set.
    #[error("{what} has the character {character:?} at position {position}; {allowed}")]
    BadCharacter {
        /// Which kind of name was refused.
        what: &'static str,
        /// The first offending character.
        character: char,
        /// Its position, counted in characters from 0.
        position: usize,
        /// Which characters are allowed.
        allowed: &'static str,
    },
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    is_allowed: impl Fn(char) -> bool,
) -> Result<(), InvalidName> {
    if value.trim().is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if let Some((position, character)) = value.chars().enumerate().find(|(_, c)| !is_allowed(*c)) {
        return Err(InvalidName::BadCharacter {
            what,
            character,
            position,
            allowed,
        });
    }
    // Every allowed character is ASCII, so bytes are characters here.
    if value.len() > max {
        return Err(InvalidName::TooLong {
            what,
            length: value.len(),
            max,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allowed:literal, $is_allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The largest length, in characters.
            pub const MAX_LENGTH: usize = $max;

            /// Checks `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                check($what, &value, Self::MAX_LENGTH, $allowed, $is_allowed)?;
                Ok(Self(value))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// An idempotency key: 1 to 255 visible ASCII characters (`!` to `~`, no space).
    ///
    /// The same key is forwarded to the external API on every attempt (I7), so it must be
    /// something the API accepts as a header value; visible ASCII always is.
    ///
    /// ```
    /// use oncely::IdempotencyKey;
    /// assert!(IdempotencyKey::new("PAY-7-1001-CARD").is_ok());
    /// assert!(IdempotencyKey::new("").is_err());
    /// assert!(IdempotencyKey::new("héllo").is_err());
    /// assert!(IdempotencyKey::new("x".repeat(256)).is_err());
    /// ```
    IdempotencyKey,
    "idempotency key",
    255,
    "only visible ASCII characters ('!' to '~') are allowed",
    |c: char| c.is_ascii_graphic()
);

name_type!(
    /// A tenant: 1 to 64 characters of `A-Z a-z 0-9 _ - .`. Operations of different tenants
    /// never share a key space. The default tenant is `default`.
    TenantId,
    "tenant",
    64,
    "only letters, digits, '_', '-' and '.' are allowed",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
);

name_type!(
    /// A domain: the kind of operation, as `PAYMENT`. 1 to 64 characters of
    /// `A-Z a-z 0-9 _ - .`; one [`Orchestrator`](crate::Orchestrator) serves one domain.
    DomainName,
    "domain",
    64,
    "only letters, digits, '_', '-' and '.' are allowed",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
);

name_type!(
    /// A node: the stable name of one process of a deployment (a host and port, a pod's
    /// name), kept across its restarts. 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
    ///
    /// Each start of the node is a new *incarnation* with a lease owner name of its own
    /// (`node/incarnation`, see [`LeaseOwner::incarnation`](crate::LeaseOwner::incarnation));
    /// at start it ends the leases its earlier incarnations left behind, so their work
    /// resumes at once instead of after the lease. Two live processes must not share one.
    NodeId,
    "node id",
    64,
    "only letters, digits, '_', '-' and '.' are allowed",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
);

impl Default for TenantId {
    fn default() -> Self {
        Self(String::from("default"))
    }
}

/// The identity of an operation: at most one operation exists per scope (I1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// Whose operation it is.
    pub tenant: TenantId,
    /// What kind of operation it is.
    pub domain: DomainName,
    /// The caller's idempotency key.
    pub key: IdempotencyKey,
}

impl Scope {
    /// A scope from its three parts.
    pub fn new(tenant: TenantId, domain: DomainName, key: IdempotencyKey) -> Self {
        Self {
            tenant,
            domain,
            key,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.domain, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_accepts_every_visible_ascii_character_up_to_255() {
        let all: String = ('!'..='~').collect();
        assert!(IdempotencyKey::new(all).is_ok());
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
    }

    #[test]
    fn key_refuses_blank_oversize_and_non_ascii() {
        assert_eq!(
            IdempotencyKey::new("   "),
            Err(InvalidName::Empty {
                what: "idempotency key"
            })
        );
        assert!(matches!(
            IdempotencyKey::new("k".repeat(256)),
            Err(InvalidName::TooLong { length: 256, .. })
        ));
        assert!(matches!(
            IdempotencyKey::new("a b"),
            Err(InvalidName::BadCharacter {
                character: ' ',
                position: 1,
                ..
            })
        ));
        assert!(matches!(
            IdempotencyKey::new("결제"),
            Err(InvalidName::BadCharacter { position: 0, .. })
        ));
        assert!(IdempotencyKey::new("tab\there").is_err());
    }

    #[test]
    fn key_deserialization_runs_the_same_checks() {
        let ok: Result<IdempotencyKey, _> = serde_json::from_str("\"abc\"");
        assert!(ok.is_ok());
        let bad: Result<IdempotencyKey, _> = serde_json::from_str("\"\"");
        assert!(bad.is_err());
    }

    #[test]
    fn tenant_defaults_to_default_and_refuses_slashes() {
        assert_eq!(TenantId::default().as_str(), "default");
        assert!(TenantId::new("acme/eu").is_err());
        assert!(DomainName::new("PAYMENT").is_ok());
    }
}
