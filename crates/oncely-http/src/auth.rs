//! Who a request acts as: API keys (`Authorization: Bearer oncely_…`), their tenant and
//! roles, protected mode while no key exists, and a rate limit per key.
//!
//! [`Keys`] caches the store's keys in memory and reloads them every few seconds (and on a
//! token whose id it does not know, at most once a second), so a key made or revoked on
//! any node takes effect on every node within the reload interval. When keys were last used
//! is recorded in the same rhythm, not per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use oncely::keys::{ApiKey, KeyStore, Role, parse_token};
use oncely::{StoreError, TenantId};

use crate::console::{Console, session_cookie};
use crate::problem::Problem;

/// Who a request acts as: the tenant and roles of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Every operation the request touches is this tenant's.
    pub tenant: TenantId,
    /// What it may do.
    pub roles: Vec<Role>,
    /// The key's id; `None` for a local client in protected mode, or without keys.
    pub key_id: Option<String>,
}

impl Principal {
    /// The default tenant with every role: a service without keys, or a loopback client in
    /// protected mode.
    pub fn local() -> Self {
        Self {
            tenant: TenantId::default(),
            roles: Role::ALL.to_vec(),
            key_id: None,
        }
    }

    /// Whether it may do what `role` allows.
    pub fn allows(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    fn of(key: &ApiKey) -> Self {
        Self {
            tenant: key.tenant.clone(),
            roles: key.roles.clone(),
            key_id: Some(key.id.clone()),
        }
    }
}

type Reload = dyn Fn() -> BoxFuture<'static, Result<Vec<ApiKey>, StoreError>> + Send + Sync;
type Touch = dyn Fn(Vec<(String, DateTime<Utc>)>) -> BoxFuture<'static, Result<(), StoreError>>
    + Send
    + Sync;

struct KeysInner {
    by_id: RwLock<HashMap<String, ApiKey>>,
    /// Whether the keys were read at least once: until then nothing is served, since
    /// whether any key exists (and so protected mode) is not known.
    loaded: AtomicBool,
    /// Whether any key was ever made: until then the service is in protected mode.
    exist: AtomicBool,
    used: Mutex<HashMap<String, DateTime<Utc>>>,
    last_reload: Mutex<Instant>,
    reload: Box<Reload>,
    touch: Box<Touch>,
}

/// The keys of a store, cached; cheap to clone.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<KeysInner>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("protected", &self.protected())
            .finish_non_exhaustive()
    }
}

/// How soon an unknown key id may make the cache reload.
const RELOAD_ON_MISS_EVERY: Duration = Duration::from_secs(1);

impl Keys {
    /// Loads `store`'s keys and keeps them fresh every `refresh` (a revocation takes effect
    /// within that) until the last clone is dropped. When the first load fails (the schema
    /// is not there yet, say), requests are refused with `503` until a reload succeeds.
    pub async fn load<K: KeyStore + Clone>(store: K, refresh: Duration) -> Self {
        let reloading = store.clone();
        let reload: Box<Reload> = Box::new(move || {
            let store = reloading.clone();
            Box::pin(async move { store.keys().await })
        });
        let touch: Box<Touch> = Box::new(move |used| {
            let store = store.clone();
            Box::pin(async move { store.touch_keys(&used).await })
        });
        let inner = Arc::new(KeysInner {
            by_id: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            exist: AtomicBool::new(false),
            used: Mutex::new(HashMap::new()),
            last_reload: Mutex::new(Instant::now()),
            reload,
            touch,
        });
        let keys = Self { inner };
        if let Err(error) = keys.reload().await {
            tracing::warn!(%error, "API keys cannot be read yet; refusing requests until they can");
        }
        tokio::spawn(refresh_until_dropped(Arc::downgrade(&keys.inner), refresh));
        keys
    }

    /// Whether the keys were read at least once.
    pub fn loaded(&self) -> bool {
        self.inner.loaded.load(Ordering::Acquire)
    }

    /// Whether no key exists yet: protected mode.
    pub fn protected(&self) -> bool {
        !self.inner.exist.load(Ordering::Acquire)
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let keys = (self.inner.reload)().await?;
        *self
            .inner
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.inner.exist.store(!keys.is_empty(), Ordering::Release);
        self.inner.loaded.store(true, Ordering::Release);
        let by_id = keys.into_iter().map(|key| (key.id.clone(), key)).collect();
        *self
            .inner
            .by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner) = by_id;
        Ok(())
    }

    fn lookup(&self, id: &str) -> Option<ApiKey> {
        self.inner
            .by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The principal of `token`, or why it is refused.
    pub async fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Result<Principal, Denied> {
        let (id, secret) = parse_token(token).ok_or(Denied::Invalid("not an oncely API key"))?;
        let key = self
            .find(id)
            .await
            .ok_or(Denied::Invalid("unknown API key"))?;
        if !key.verifies(secret) {
            return Err(Denied::Invalid("unknown API key"));
        }
        self.admit(&key, now)
    }

    /// The principal of the key `id` that a console session names (its secret was
    /// checked when the session was opened), or why it is refused now.
    pub(crate) async fn session(&self, id: &str, now: DateTime<Utc>) -> Result<Principal, Denied> {
        let key = self.find(id).await.ok_or(Denied::Invalid(
            "the API key of this session no longer exists",
        ))?;
        self.admit(&key, now)
    }

    /// The key `id`, reloading once if it is not known.
    async fn find(&self, id: &str) -> Option<ApiKey> {
        if let Some(key) = self.lookup(id) {
            return Some(key);
        }
        // Perhaps made on another node since the last reload; at most once a second,
        // so unknown ids cannot make every request a database read.
        let due = self
            .inner
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= RELOAD_ON_MISS_EVERY;
        if !due {
            return None;
        }
        if let Err(error) = self.reload().await {
            tracing::warn!(%error, "reloading API keys failed");
        }
        self.lookup(id)
    }

    /// The principal of `key` if it is still good at `now`; notes that it was used.
    fn admit(&self, key: &ApiKey, now: DateTime<Utc>) -> Result<Principal, Denied> {
        if key.revoked_at.is_some() {
            return Err(Denied::Invalid("this API key was revoked"));
        }
        if !key.is_active(now) {
            return Err(Denied::Invalid("this API key has expired"));
        }
        self.inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.id.clone(), now);
        Ok(Principal::of(key))
    }
}

async fn refresh_until_dropped(keys: Weak<KeysInner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = keys.upgrade() else { return };
        let keys = Keys { inner };
        if let Err(error) = keys.reload().await {
            tracing::warn!(%error, "reloading API keys failed; keeping the ones loaded");
        }
        let used: Vec<(String, DateTime<Utc>)> = keys
            .inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        if !used.is_empty()
            && let Err(error) = (keys.inner.touch)(used).await
        {
            tracing::warn!(%error, "recording when API keys were used failed");
        }
    }
}

/// Why a request is refused before it reaches a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer …`.
    Missing,
    /// A token that is not a valid, active key.
    Invalid(&'static str),
    /// Protected mode: no key exists, and the client is not on loopback.
    NotLocal,
    /// The key lacks the role the route needs.
    Forbidden(Role),
    /// A console session's state-changing request without its CSRF token.
    Csrf,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (problem, challenge) = match self {
            Self::Missing => (
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                    "send Authorization: Bearer <API key>; `oncely keys create` makes one",
                ),
                "Bearer realm=\"oncely\"",
            ),
            Self::Invalid(why) => (
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid-api-key",
                    "The API key is not valid",
                    why,
                ),
                "Bearer realm=\"oncely\", error=\"invalid_token\"",
            ),
            Self::NotLocal => (
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "protected-mode",
                    "Only local clients until an API key exists",
                    "no API key exists yet, so only clients on this machine are served; make one with `oncely keys create`",
                ),
                "",
            ),
            Self::Csrf => (
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "The CSRF token is missing or wrong",
                    "a request of a console session that changes something must send X-CSRF-Token with the token its login answered",
                ),
                "",
            ),
            Self::Forbidden(role) => (
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "The API key lacks the role this needs",
                    format!("this needs the {role} role"),
                ),
                "",
            ),
        };
        let mut response = problem.into_response();
        if !challenge.is_empty() {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// The bearer token of `headers`: exactly one `Authorization` header, scheme `Bearer`.
fn bearer(headers: &HeaderMap) -> Result<&str, Denied> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Denied::Missing)?;
    if values.next().is_some() {
        return Err(Denied::Invalid("more than one Authorization header"));
    }
    let text = value
        .to_str()
        .map_err(|_| Denied::Invalid("not an oncely API key"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or(Denied::Invalid("expected Bearer <API key>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denied::Invalid("expected Bearer <API key>"));
    }
    Ok(token.trim())
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// A token bucket per key: `rate` requests a second, bursts of `burst`.
pub struct RateLimit {
    limiter: Limiter,
    rate: u32,
    burst: u32,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimit {
    /// `rate` requests a second per key, up to `burst` at once.
    pub fn per_second(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            rate: rate.get(),
            burst: burst.get(),
        }
    }

    /// Takes one request from `who`'s bucket: the headers to answer with, and whether it
    /// may go on (else how long until it may).
    fn take(&self, who: &str) -> (HeaderMap, Result<(), Duration>) {
        let mut headers = HeaderMap::new();
        let policy = format!("\"per-key\";q={};w=1", self.burst);
        let (remaining, wait) = match self.limiter.check_key(&who.to_owned()) {
            Ok(state) => (state.remaining_burst_capacity(), None),
            Err(not_until) => (
                0,
                Some(not_until.wait_time_from(self.limiter.clock().now())),
            ),
        };
        // Until the bucket is full again: (burst - remaining) / rate seconds.
        let refill = f64::from(self.burst.saturating_sub(remaining)) / f64::from(self.rate);
        let reset = wait.map_or(refill.ceil() as u64, |wait| {
            wait.as_secs_f64().ceil().max(1.0) as u64
        });
        let state = format!("\"per-key\";r={remaining};t={reset}");
        if let (Ok(policy), Ok(state)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.insert("ratelimit-policy", policy);
            headers.insert("ratelimit", state);
        }
        match wait {
            None => (headers, Ok(())),
            Some(wait) => {
                if let Ok(after) = HeaderValue::from_str(&reset.to_string()) {
                    headers.insert(header::RETRY_AFTER, after);
                }
                (headers, Err(wait))
            }
        }
    }
}

/// What every `/v1` request passes: authentication and the rate limit.
#[derive(Debug)]
pub struct Guard {
    /// The keys; `None` serves everyone as [`Principal::local`] (a service behind an
    /// authenticating proxy, or a test).
    pub keys: Option<Keys>,
    /// The rate limit per key (or, without keys, for everyone together), if any. Protected
    /// mode is not limited.
    pub rate_limit: Option<RateLimit>,
    /// The console, whose session cookie stands for a key when no `Authorization` is sent.
    pub console: Option<Console>,
}

fn is_loopback(connected: Option<&ConnectInfo<SocketAddr>>) -> bool {
    connected.is_some_and(|ConnectInfo(addr)| addr.ip().to_canonical().is_loopback())
}

/// Authenticates a request (or refuses it), applies the rate limit, and hands the
/// [`Principal`] to the route.
pub(crate) async fn guard(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut limited = true;
    let principal = match &guard.keys {
        None => Principal::local(),
        Some(keys) if !keys.loaded() => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The store is unavailable",
                "API keys cannot be read yet; retrying with the same idempotency key is safe",
            )
            .into_response();
        }
        Some(keys) if keys.protected() => {
            let connected = request.extensions().get::<ConnectInfo<SocketAddr>>();
            if !is_loopback(connected) {
                return Denied::NotLocal.into_response();
            }
            // One person's machine, no key to count against: no limit.
            limited = false;
            Principal::local()
        }
        Some(keys) => {
            let headers = request.headers();
            let session = guard
                .console
                .as_ref()
                .filter(|_| !headers.contains_key(header::AUTHORIZATION))
                .and_then(|console| Some((console, session_cookie(headers)?)));
            let admitted = match session {
                Some((console, token)) => {
                    console
                        .principal(keys, token, request.method(), headers, Utc::now())
                        .await
                }
                None => match bearer(headers) {
                    Ok(token) => keys.authenticate(token, Utc::now()).await,
                    Err(denied) => Err(denied),
                },
            };
            match admitted {
                Ok(principal) => principal,
                Err(denied) => return denied.into_response(),
            }
        }
    };
    let mut limit_headers = HeaderMap::new();
    if let Some(limit) = guard.rate_limit.as_ref().filter(|_| limited) {
        let who = principal.key_id.as_deref().unwrap_or("local");
        let (headers, allowed) = limit.take(who);
        if let Err(wait) = allowed {
            let mut response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "this key may make {} requests a second; try again in {} ms",
                    limit.rate,
                    wait.as_millis().max(1)
                ),
            )
            .into_response();
            response.headers_mut().extend(headers);
            return response;
        }
        limit_headers = headers;
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    response.headers_mut().extend(limit_headers);
    response
}

/// Refuses a request whose principal lacks `role` (403).
pub(crate) async fn require(role: Role, request: Request, next: Next) -> Response {
    let allowed = request
        .extensions()
        .get::<Principal>()
        .is_none_or(|principal| principal.allows(role));
    if !allowed {
        return Denied::Forbidden(role).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Err(Denied::Missing));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Ok("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&headers), Ok("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&headers).is_err());
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            bearer(&headers),
            Err(Denied::Invalid("more than one Authorization header"))
        );
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_says_when() {
        let limit = RateLimit::per_second(NonZeroU32::new(2).unwrap(), NonZeroU32::new(3).unwrap());
        for expected in [2, 1, 0] {
            let (headers, allowed) = limit.take("k");
            assert!(allowed.is_ok());
            assert_eq!(
                headers["ratelimit"].to_str().unwrap().split(';').nth(1),
                Some(format!("r={expected}").as_str())
            );
            assert_eq!(headers["ratelimit-policy"], "\"per-key\";q=3;w=1");
        }
        let (headers, allowed) = limit.take("k");
        let wait = allowed.unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(limit.take("another key").1.is_ok(), "buckets are per key");
    }

    #[test]
    fn only_loopback_peers_are_local() {
        let at = |addr: &str| ConnectInfo(addr.parse::<SocketAddr>().unwrap());
        assert!(is_loopback(Some(&at("127.0.0.1:5"))));
        assert!(is_loopback(Some(&at("[::1]:5"))));
        assert!(is_loopback(Some(&at("[::ffff:127.0.0.1]:5"))));
        assert!(!is_loopback(Some(&at("10.0.0.2:5"))));
        assert!(!is_loopback(None), "unknown peers are not local");
    }
}
