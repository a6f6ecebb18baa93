//! `/console`: the operators' web console, served by the service itself — three static
//! files embedded in the binary, driving the same JSON API as every other client.
//!
//! **Sessions.** An operator logs in with an API key (`POST /console/session`); the key
//! is checked as on any request and the answer sets an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` under TLS) holding `key id . expiry . nonce . HMAC` — the key's secret
//! is neither in the cookie nor kept anywhere. Every request with the cookie acts as that
//! key: its tenant, its roles, and its id in the log of every action (I6). The key is
//! looked up on each request, so revoking it ends its sessions within the keys' reload
//! interval. The HMAC secret is random per process unless one is given
//! ([`Console::with_secret`]), which every node behind one address must share.
//!
//! **CSRF.** A state-changing request (anything but `GET` and `HEAD`) that authenticates
//! by the cookie must carry `X-CSRF-Token` with the token the login answered with (an
//! HMAC of the session, so it needs no storage either); a request with
//! `Authorization: Bearer` is not a browser's ambient credential and needs none.
//!
//! **Content.** The page is one HTML file, one script and one style sheet, served with a
//! `Content-Security-Policy` that allows nothing but themselves and this origin's API:
//! no inline script, no third-party origin, no framing. The script writes every value
//! with `textContent`, never as HTML.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::{self, Denied, Guard, Keys, Principal};
use crate::problem::Problem;

/// The session cookie.
pub const SESSION_COOKIE: &str = "oncely_session";
/// The header a cookie-authenticated, state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a console session lasts unless [`Console::session_ttl`] says otherwise.
pub const SESSION_TTL_DEFAULT: Duration = Duration::from_secs(8 * 3600);

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// Everything the page may load or call: itself and this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Why a console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The session secret is too short to sign with.
    #[error("the console's session secret must be at least 32 bytes, not {0}")]
    ShortSecret(usize),
    /// The system's random source failed.
    #[error("no randomness for the console's sessions: {0}")]
    Random(String),
}

/// How the console signs its sessions; cheap to clone.
#[derive(Clone)]
pub struct Console {
    /// HMAC-SHA256 keyed with the session secret, cloned for each use.
    keyed: HmacSha256,
    secure_cookie: bool,
    session_ttl: Duration,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("secure_cookie", &self.secure_cookie)
            .field("session_ttl", &self.session_ttl)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

fn random<const N: usize>() -> Result<[u8; N], ConsoleError> {
    let mut bytes = [0_u8; N];
    getrandom::fill(&mut bytes).map_err(|error| ConsoleError::Random(error.to_string()))?;
    Ok(bytes)
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Console {
    /// A console whose sessions are signed with a random secret of this process: they
    /// end when it stops, and another node does not know them.
    pub fn new() -> Result<Self, ConsoleError> {
        Self::with_secret(&random::<32>()?)
    }

    /// A console whose sessions are signed with `secret` (32 bytes or more), which every
    /// node serving the same address shares, so a session opened on one is good on all.
    pub fn with_secret(secret: &[u8]) -> Result<Self, ConsoleError> {
        if secret.len() < 32 {
            return Err(ConsoleError::ShortSecret(secret.len()));
        }
        // HMAC takes a key of any length; the error is unreachable, and refused if not.
        let keyed = HmacSha256::new_from_slice(secret)
            .map_err(|_| ConsoleError::ShortSecret(secret.len()))?;
        Ok(Self {
            keyed,
            secure_cookie: false,
            session_ttl: SESSION_TTL_DEFAULT,
        })
    }

    /// Marks the cookie `Secure`: browsers then send it over HTTPS only. Set it when the
    /// service is reached over HTTPS (its own TLS, or a proxy's).
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }

    /// How long a session lasts after its login.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    fn mac(&self, purpose: &str, text: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        mac.update(b"\n");
        mac.update(text.as_bytes());
        base64url(&mac.finalize().into_bytes())
    }

    /// A new session of the key `key_id`: the cookie's value, and when it expires.
    fn issue(
        &self,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), ConsoleError> {
        let ttl =
            chrono::Duration::from_std(self.session_ttl).unwrap_or(chrono::Duration::hours(8));
        let expires = now + ttl;
        let nonce = base64url(&random::<16>()?);
        let payload = format!("{key_id}.{}.{nonce}", expires.timestamp());
        let mac = self.mac("session", &payload);
        Ok((format!("{payload}.{mac}"), expires))
    }

    /// The key id of session `token`, if this console signed it and it has not expired.
    fn verify<'t>(&self, token: &'t str, now: DateTime<Utc>) -> Option<&'t str> {
        let (payload, mac) = token.rsplit_once('.')?;
        let expected = self.mac("session", payload);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let mut parts = payload.split('.');
        let (key_id, expires, _nonce) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || now.timestamp() >= expires.parse::<i64>().ok()? {
            return None;
        }
        Some(key_id)
    }

    /// The CSRF token of session `token`.
    fn csrf(&self, token: &str) -> String {
        self.mac("csrf", token)
    }

    /// The principal of a request that carries the session cookie `token` and no
    /// `Authorization`: its key's, once the session, the key and (for a state-changing
    /// request) the CSRF token check out.
    pub(crate) async fn principal(
        &self,
        keys: &Keys,
        token: &str,
        method: &Method,
        headers: &HeaderMap,
        now: DateTime<Utc>,
    ) -> Result<Principal, Denied> {
        let key_id = self.verify(token, now).ok_or(Denied::Invalid(
            "the console session is not valid or has expired; log in again",
        ))?;
        let principal = keys.session(key_id, now).await?;
        if !(method == Method::GET || method == Method::HEAD) {
            let sent = headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(self.csrf(token).as_bytes())) {
                return Err(Denied::Csrf);
            }
        }
        Ok(principal)
    }
}

/// The value of the session cookie among `headers`' cookies, if one is there.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(SESSION_COOKIE)?
                .strip_prefix('=')
                .filter(|token| !token.is_empty())
        })
}

/// Who the console acts as, and what it needs to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// The tenant every request acts for.
    pub tenant: String,
    /// `submit`, `read`, `operate`.
    pub roles: Vec<String>,
    /// The key's id; `null` for a local client in protected mode, or without keys.
    pub key_id: Option<String>,
    /// Send as `X-CSRF-Token` on every state-changing request of this session; `null`
    /// when the request was not authenticated by the session cookie.
    pub csrf_token: Option<String>,
    /// When the session ends; `null` without one.
    pub expires_at: Option<DateTime<Utc>>,
}

impl SessionView {
    fn new(principal: &Principal) -> Self {
        Self {
            tenant: principal.tenant.to_string(),
            roles: principal
                .roles
                .iter()
                .map(|role| role.as_str().to_owned())
                .collect(),
            key_id: principal.key_id.clone(),
            csrf_token: None,
            expires_at: None,
        }
    }
}

/// `POST /console/session`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Login {
    api_key: String,
}

struct ConsoleState {
    console: Console,
    keys: Option<Keys>,
}

/// The console's routes: the page and its two files, and the session. `GET
/// /console/session` passes `guard` like any API route.
pub(crate) fn router(console: Console, guard: Arc<Guard>) -> Router {
    let state = Arc::new(ConsoleState {
        console,
        keys: guard.keys.clone(),
    });
    let session = get(current)
        .layer(from_fn_with_state(guard, auth::guard))
        .post(login)
        .delete(logout);
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route("/console/session", session)
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn cookie(console: &Console, value: &str, max_age: i64) -> Option<HeaderValue> {
    let secure = if console.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// `GET /console/session`: who the request acts as (after the guard), with the CSRF
/// token when it came with the session cookie.
async fn current(
    State(state): State<Arc<ConsoleState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Json<SessionView> {
    let principal = principal.map_or_else(Principal::local, |Extension(principal)| principal);
    let mut view = SessionView::new(&principal);
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(token) = session_cookie(&headers)
    {
        view.csrf_token = Some(state.console.csrf(token));
        view.expires_at = token
            .split('.')
            .nth(1)
            .and_then(|at| at.parse::<i64>().ok())
            .and_then(|at| DateTime::from_timestamp(at, 0));
    }
    Json(view)
}

/// `POST /console/session` with `{"apiKey": "oncely_…"}`: checks the key as any request
/// would and opens a session of it.
async fn login(
    State(state): State<Arc<ConsoleState>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let Some(keys) = &state.keys else {
        return Problem::new(
            StatusCode::CONFLICT,
            "no-login",
            "This service has no API keys",
            "every request is served without a key here, so the console needs no login",
        )
        .into_response();
    };
    let Json(login) = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::from_rejection(&rejection).into_response(),
    };
    let now = Utc::now();
    let principal = match keys.authenticate(login.api_key.trim(), now).await {
        Ok(principal) => principal,
        Err(denied) => return denied.into_response(),
    };
    let Some(key_id) = principal.key_id.clone() else {
        return Denied::Invalid("not an oncely API key").into_response();
    };
    let (token, expires) = match state.console.issue(&key_id, now) {
        Ok(issued) => issued,
        Err(error) => {
            tracing::error!(%error, "opening a console session failed");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "No session could be opened",
                "the system's random source failed; try again",
            )
            .into_response();
        }
    };
    tracing::info!(key_id = %key_id, tenant = %principal.tenant, "console session opened");
    let max_age = (expires - now).num_seconds();
    let mut view = SessionView::new(&principal);
    view.csrf_token = Some(state.console.csrf(&token));
    view.expires_at = Some(expires);
    let mut response = Json(view).into_response();
    if let Some(value) = cookie(&state.console, &token, max_age) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `DELETE /console/session`: the browser forgets the cookie.
async fn logout(State(state): State<Arc<ConsoleState>>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(value) = cookie(&state.console, "", 0) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> Console {
        Console::with_secret(&[7; 32]).unwrap()
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_not_when_touched() {
        let console = console();
        let now = Utc::now();
        let (token, expires) = console.issue("k1", now).unwrap();
        assert_eq!(console.verify(&token, now), Some("k1"));
        assert_eq!(
            console.verify(&token, expires - chrono::Duration::seconds(1)),
            Some("k1")
        );
        assert_eq!(console.verify(&token, expires), None, "expired");
        let forged = token.replacen("k1", "k2", 1);
        assert_eq!(console.verify(&forged, now), None, "another key id");
        let other = Console::with_secret(&[8; 32]).unwrap();
        assert_eq!(other.verify(&token, now), None, "another secret");
        assert_eq!(console.verify("k1", now), None);
        assert_ne!(console.csrf(&token), console.csrf(&forged));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            Console::with_secret(&[1; 31]),
            Err(ConsoleError::ShortSecret(31))
        ));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_cookie(&headers), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; oncely_session_x=2"),
        );
        assert_eq!(session_cookie(&headers), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("b=3; oncely_session=t.1.n.m"),
        );
        assert_eq!(session_cookie(&headers), Some("t.1.n.m"));
    }
}
