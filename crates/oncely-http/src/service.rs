//! [`Service`]: one HTTP service assembled from domains — each domain's routes under
//! `/v1/{resource}`, and the service's own routes (health, readiness, OpenAPI) once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use oncely::{Engine, ListFilter, Role, Store, TenantId};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{self, Guard, Keys, Principal, RateLimit};
use crate::console::{self, Console};
use crate::domain::{HttpDomain, request_schema};
use crate::openapi::{DocumentedDomain, SERVICE_ROUTES, ServiceRouteId, openapi_document};
use crate::problem::Problem;
use crate::routes::{self, DomainApi, who};
use crate::server::{self, ServeOptions};
use crate::view::{DomainOverviewView, OverviewView};

/// Why a service could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Two domains claim the same resource name.
    #[error("two domains are served as /v1/{0}")]
    DuplicateResource(&'static str),
    /// Two domains have the same domain name, so their operations would mix.
    #[error("two domains are named {0}")]
    DuplicateDomain(String),
    /// A service needs a domain to serve.
    #[error("a service needs at least one domain")]
    NoDomain,
    /// A request type's JSON Schema does not compile (a bug in its `JsonSchema`).
    #[error("the request schema of /v1/{resource} does not compile: {why}")]
    Schema {
        /// The domain's resource.
        resource: &'static str,
        /// What the validator said.
        why: String,
    },
}

/// One domain, as the service sees it: its routes, its documentation, its engine.
trait Mounted: Send + Sync {
    fn router(&self) -> Router;
    fn documented(&self) -> DocumentedDomain;
    fn domain(&self) -> String;
    fn ready(&self) -> BoxFuture<'_, Result<(), Problem>>;
    fn overview<'a>(
        &'a self,
        tenant: &'a TenantId,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<DomainOverviewView, Problem>>;
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;
}

impl<S: Store, O: HttpDomain> Mounted for Arc<DomainApi<S, O>> {
    fn router(&self) -> Router {
        routes::router(self.clone())
    }

    fn documented(&self) -> DocumentedDomain {
        DocumentedDomain {
            resource: O::RESOURCE,
            request_schema: self.schema.clone(),
            key_required: self.key_required(),
        }
    }

    fn domain(&self) -> String {
        self.engine.domain().to_string()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async move {
            let probe = ListFilter {
                limit: 1,
                ..ListFilter::default()
            };
            self.engine.list(probe).await?;
            Ok(())
        })
    }

    fn overview<'a>(
        &'a self,
        tenant: &'a TenantId,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<DomainOverviewView, Problem>> {
        Box::pin(async move {
            let overview = self.engine.overview(tenant, since, now).await?;
            Ok(DomainOverviewView::new(O::RESOURCE, overview))
        })
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.engine.shutdown(grace))
    }
}

/// Assembles a [`Service`]; see [`Service::builder`].
#[derive(Default)]
pub struct ServiceBuilder {
    domains: Vec<Box<dyn Mounted>>,
    require_idempotency_key: bool,
    title: Option<String>,
    keys: Option<Keys>,
    rate_limit: Option<RateLimit>,
    console: Option<Console>,
    errors: Vec<ServiceError>,
}

impl ServiceBuilder {
    /// Serves `engine`'s domain under `/v1/{O::RESOURCE}`. The service owns the engine
    /// from now on and shuts it down with itself.
    pub fn domain<S: Store, O: HttpDomain>(mut self, engine: Engine<S, O>) -> Self {
        let mut schema = request_schema::<O::Request>();
        engine.orchestrator().refine_schema(&mut schema);
        let validator = match jsonschema::validator_for(&schema) {
            Ok(validator) => validator,
            Err(error) => {
                self.errors.push(ServiceError::Schema {
                    resource: O::RESOURCE,
                    why: error.to_string(),
                });
                return self;
            }
        };
        self.domains.push(Box::new(Arc::new(DomainApi {
            engine: Arc::new(engine),
            require_idempotency_key: self.require_idempotency_key,
            validator,
            schema,
        })));
        self
    }

    /// Refuse creates without `Idempotency-Key` (`400`) in the domains added after this,
    /// instead of using their business keys.
    pub fn require_idempotency_key(mut self, required: bool) -> Self {
        self.require_idempotency_key = required;
        self
    }

    /// Requires an API key of `keys` on every domain route (`Authorization: Bearer …`):
    /// its tenant and roles are the request's. While no key exists, only loopback clients
    /// are served, as the default tenant with every role (protected mode). Without this,
    /// every request acts as the default tenant with every role: for a service behind an
    /// authenticating proxy.
    pub fn keys(mut self, keys: Keys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Limits each key (or the local client) to `limit`; over it, `429` with `Retry-After`.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Serves the operators' web console at `/console`, its sessions signed by
    /// `console`; see [`crate::console`].
    pub fn console(mut self, console: Console) -> Self {
        self.console = Some(console);
        self
    }

    /// The title of `/openapi.json` (`oncely` by default).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The service, with every domain's routes and the service routes in one router.
    pub fn build(mut self) -> Result<Service, ServiceError> {
        if let Some(error) = self.errors.pop() {
            return Err(error);
        }
        if self.domains.is_empty() {
            return Err(ServiceError::NoDomain);
        }
        let mut resources = HashSet::new();
        let mut names = HashSet::new();
        for mounted in &self.domains {
            let resource = mounted.documented().resource;
            if !resources.insert(resource) {
                return Err(ServiceError::DuplicateResource(resource));
            }
            if !names.insert(mounted.domain()) {
                return Err(ServiceError::DuplicateDomain(mounted.domain()));
            }
        }
        let documented: Vec<DocumentedDomain> =
            self.domains.iter().map(|m| m.documented()).collect();
        let title = self.title.unwrap_or_else(|| "oncely".to_owned());
        let document = Arc::new(openapi_document(&title, &documented));
        let domains: Arc<[Box<dyn Mounted>]> = self.domains.into();
        let guard = Arc::new(Guard {
            keys: self.keys,
            rate_limit: self.rate_limit,
            console: self.console.clone(),
        });
        let mut router = Router::new();
        if let Some(console) = self.console {
            router = router.merge(console::router(console, guard.clone()));
        }
        for mounted in domains.iter() {
            let guarded = mounted
                .router()
                .layer(from_fn_with_state(guard.clone(), auth::guard));
            router = router.merge(guarded);
        }
        for route in SERVICE_ROUTES {
            router = match route.id {
                ServiceRouteId::Health => router.route(route.path, get(|| async { "ok" })),
                ServiceRouteId::Ready => {
                    let domains = domains.clone();
                    router.route(
                        route.path,
                        get(move || {
                            let domains = domains.clone();
                            async move { ready(&domains).await }
                        }),
                    )
                }
                ServiceRouteId::Overview => {
                    let domains = domains.clone();
                    let handler = get(
                        move |principal: Option<Extension<Principal>>,
                              query: Result<Query<OverviewQuery>, QueryRejection>| {
                            let domains = domains.clone();
                            async move { overview(&domains, who(principal), query).await }
                        },
                    );
                    let role = route.role.unwrap_or(Role::Read);
                    router.route(
                        route.path,
                        handler
                            .layer(axum::middleware::from_fn(move |request, next| {
                                auth::require(role, request, next)
                            }))
                            .layer(from_fn_with_state(guard.clone(), auth::guard)),
                    )
                }
                ServiceRouteId::OpenApi => {
                    let document = document.clone();
                    router.route(
                        route.path,
                        get(move || {
                            let document = document.clone();
                            async move { Json(document.as_ref().clone()) }
                        }),
                    )
                }
            };
        }
        let router = router
            .route_layer(axum::middleware::from_fn(count_request))
            .fallback(|| async {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "no-route",
                    "No such route",
                    "see /openapi.json",
                )
            })
            .method_not_allowed_fallback(|| async {
                Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "Method not allowed",
                    "this route does not take that method; Allow lists those it takes",
                )
            });
        Ok(Service {
            router,
            domains,
            document,
        })
    }
}

/// `oncely_http_requests_total{route, method, status}`, by the route's pattern (never the
/// key in the path, which would make a series per operation).
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics::counter!(
        "oncely_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

/// `GET /v1/overview` parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OverviewQuery {
    window_minutes: Option<String>,
}

/// The longest window of `GET /v1/overview`, in minutes: a day.
const OVERVIEW_WINDOW_MAX_MINUTES: u32 = 1_440;

/// `GET /v1/overview`: every domain, for the principal's tenant.
async fn overview(
    domains: &[Box<dyn Mounted>],
    principal: Principal,
    query: Result<Query<OverviewQuery>, QueryRejection>,
) -> Result<Json<OverviewView>, Problem> {
    let Query(query) =
        query.map_err(|rejection| Problem::bad_request("invalid-query", rejection.body_text()))?;
    let minutes = match query.window_minutes {
        None => 15,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|minutes| (1..=OVERVIEW_WINDOW_MAX_MINUTES).contains(minutes))
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid-query",
                    format!(
                        "windowMinutes must be 1 to {OVERVIEW_WINDOW_MAX_MINUTES}, not {text:?}"
                    ),
                )
            })?,
    };
    let now = Utc::now();
    let since = now - chrono::Duration::minutes(i64::from(minutes));
    let mut view = OverviewView {
        tenant: principal.tenant.to_string(),
        now,
        since,
        domains: Vec::with_capacity(domains.len()),
    };
    for mounted in domains {
        view.domains
            .push(mounted.overview(&principal.tenant, since, now).await?);
    }
    Ok(Json(view))
}

async fn ready(domains: &[Box<dyn Mounted>]) -> axum::response::Response {
    for mounted in domains {
        if let Err(problem) = mounted.ready().await {
            return problem.into_response();
        }
    }
    "ready".into_response()
}

/// An HTTP service of one or more domains.
///
/// ```no_run
/// # use oncely_http::Service;
/// # async fn run<S: oncely::Store, O: oncely_http::HttpDomain>(engine: oncely::Engine<S, O>)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// let service = Service::builder().domain(engine).build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// // Serves until Ctrl-C, then lets running calls finish for 10 s.
/// service
///     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; }, std::time::Duration::from_secs(10))
///     .await?;
/// # Ok(()) }
/// ```
pub struct Service {
    router: Router,
    domains: Arc<[Box<dyn Mounted>]>,
    document: Arc<Value>,
}

impl Service {
    /// Starts assembling a service.
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// Its routes, to serve (or to nest in a router of your own).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Its OpenAPI 3.1 document.
    pub fn openapi(&self) -> &Value {
        &self.document
    }

    /// Serves on `listener` until `signal` resolves, then stops taking requests, lets
    /// running calls finish for up to `grace`, and shuts every engine down. The defaults of
    /// [`ServeOptions`] apply otherwise; see [`Service::serve_with`].
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let options = ServeOptions {
            grace,
            ..ServeOptions::default()
        };
        self.serve_with(listener, signal, options).await
    }

    /// [`Service::serve`] with every limit chosen: timeouts, the connection cap, TLS.
    pub async fn serve_with(
        self,
        listener: tokio::net::TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
        options: ServeOptions,
    ) -> std::io::Result<()> {
        let grace = options.grace;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = stop.send(true);
        });
        server::serve(self.router.clone(), listener, stopped, options).await?;
        self.shutdown(grace).await;
        Ok(())
    }

    /// Shuts every domain's engine down, letting running calls finish for up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let stopping: Vec<_> = self
            .domains
            .iter()
            .map(|mounted| mounted.shutdown(grace))
            .collect();
        futures_util::future::join_all(stopping).await;
    }
}
