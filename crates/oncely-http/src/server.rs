//! Serving a [`Service`](crate::Service) to clients one does not trust: a cap on
//! connections, a time limit on each request's headers and body, idle keep-alive
//! connections closed, optional TLS.
//!
//! Each connection is HTTP/1.1 on hyper. The header timeout counts from a request's first
//! byte to the end of its headers (a client sending a byte a second is cut off); the body
//! timeout bounds reading the body (`408` when it runs out); the idle timeout closes a
//! kept-alive connection with no request for that long. A connection over the cap is
//! closed at once.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// How a service is served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// Reading a request's body.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// HTTPS, when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// After the shutdown signal, how long running requests (and the engines' calls) may
    /// finish.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            tls: None,
            grace: Duration::from_secs(10),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM of the kind needed.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the certificate and key.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS configuration from a PEM certificate chain and a PEM private key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem_error = |path: &Path, why: String| TlsError::Pem {
        path: path.display().to_string(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "no CERTIFICATE in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a connection's watcher knows about it.
struct Activity {
    /// Milliseconds since `epoch` of the last byte read or written.
    last: AtomicU64,
    /// When a request's head began (ms since `epoch` + 1), 0 when none is being read.
    head_since: AtomicU64,
    /// Requests being served.
    in_flight: AtomicUsize,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            // Bytes while nothing is in flight: a request's head is arriving.
            let _ =
                self.head_since
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.wrote();
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, options: &ServeOptions) -> Option<&'static str> {
        let now = self.now();
        let since = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        let head = self.head_since.load(Ordering::Acquire);
        if head != 0 && since(head - 1) > options.header_timeout {
            return Some("header");
        }
        let idle = self.in_flight.load(Ordering::Acquire) == 0 && head == 0;
        if idle && since(self.last.load(Ordering::Relaxed)) > options.idle_timeout {
            return Some("idle");
        }
        None
    }
}

/// The connection's IO, reporting activity.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Decrements the in-flight count however the request ends.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// Serves `router` on `listener` until `stop` changes to true, then lets running requests
/// finish for `options.grace` and returns.
pub(crate) async fn serve(
    router: Router,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    options: ServeOptions,
) -> std::io::Result<()> {
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let connections = Tracker::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = options.max_connections, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let (router, options, stop) = (router.clone(), options.clone(), stop.clone());
        connections.spawn(async move {
            connection(stream, peer, router, options, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(options.grace, connections.wait()).await;
    if drained.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    Ok(())
}

/// The tasks of the open connections, to wait for at shutdown.
#[derive(Clone, Default)]
struct Tracker {
    count: Arc<(AtomicUsize, tokio::sync::Notify)>,
}

impl Tracker {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let count = self.count.clone();
        count.0.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            task.await;
            if count.0.fetch_sub(1, Ordering::AcqRel) == 1 {
                count.1.notify_waiters();
            }
        });
    }

    async fn wait(&self) {
        loop {
            let notified = self.count.1.notified();
            if self.count.0.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    options: Arc<ServeOptions>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    match &options.tls {
        None => {
            let io = Watched {
                io: stream,
                activity: activity.clone(),
            };
            http(io, peer, router, &options, activity, &mut stop).await;
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let handshake = tokio::time::timeout(options.header_timeout, acceptor.accept(stream));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = Watched {
                io: tls,
                activity: activity.clone(),
            };
            http(io, peer, router, &options, activity, &mut stop).await;
        }
    }
}

async fn http<T>(
    io: Watched<T>,
    peer: SocketAddr,
    router: Router,
    options: &ServeOptions,
    activity: Arc<Activity>,
    stop: &mut watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = options.body_timeout;
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        requests.request_started();
        let in_flight = InFlight(requests.clone());
        let mut request = request
            .map(|body| Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, body)));
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await;
            drop(in_flight);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stopping = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(error) = done {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                match activity.expired(options) {
                    // A head arriving too slowly: close at once, no answer owed.
                    Some("header") => {
                        tracing::debug!(%peer, "request headers too slow; connection closed");
                        return;
                    }
                    Some(_) => conn.as_mut().graceful_shutdown(),
                    None => {}
                }
            }
            _ = stop.wait_for(|stopped| *stopped), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
