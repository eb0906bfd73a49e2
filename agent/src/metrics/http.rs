//! The HTTP side of the endpoint: hyper's HTTP/1.1 server on an
//! already-bound listener. `GET`/`HEAD` of `/metrics` (the exposition),
//! `/healthz` (liveness) and `/readyz` (readiness) are answered through an
//! [`Endpoints`]; anything else is a `404`.
//!
//! With a [`Token`], `/metrics` needs `Authorization: Bearer <token>`;
//! without one it is a `401` with `WWW-Authenticate`. `/healthz` and
//! `/readyz` never need it: load balancers and systemd probe them without
//! credentials, and they tell only up or down with a one-line reason.
//!
//! [`Limits`]: a request head over `max_head` bytes is answered `431` and
//! one hyper cannot parse `400` (both by hyper); the head must arrive within
//! `head_timeout` and the whole exchange end within `exchange_timeout`; one
//! request per connection; at most `max_connections` served at once, more
//! wait in the accept queue.

use super::token::{Check, Token};
use crate::timing::METRICS_ACCEPT_PAUSE as ACCEPT_PAUSE;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// What one client may ask of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head accepted (request line and headers).
    pub max_head: usize,
    /// Time allowed for the request head to arrive.
    pub head_timeout: Duration,
    /// Time allowed for one whole exchange: head, scrape and answer.
    pub exchange_timeout: Duration,
    /// Connections served at the same time.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            exchange_timeout: Duration::from_secs(15),
            max_connections: 16,
        }
    }
}

/// The answer of a health or readiness check: `Err` holds the reason.
pub type Probe = Result<(), Unwell>;

/// Why an agent is not healthy or not ready, in one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unwell(pub String);

impl From<String> for Unwell {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Unwell {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

/// What the server answers with.
pub trait Endpoints: Send + Sync + 'static {
    /// The content type of [`Endpoints::metrics`].
    fn content_type(&self) -> &'static str;
    /// The body of a `/metrics` answer.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    /// `/healthz`: the process and its loops run.
    fn health(&self) -> impl Future<Output = Probe> + Send;
    /// `/readyz`: the agent can serve the cluster.
    fn ready(&self) -> impl Future<Output = Probe> + Send;
}

type Body = http_body_util::Full<Bytes>;

/// What a request asks for (`HEAD` gets the headers only, which hyper sees to).
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    Ready,
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Route::NotFound;
    }
    match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        "/readyz" => Route::Ready,
        _ => Route::NotFound,
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn probe(p: Probe) -> Response<Body> {
    match p {
        Ok(()) => reply(StatusCode::OK, PLAIN, "ok\n".into()),
        Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
    }
}

/// The `401` of a request without the token (RFC 6750).
fn unauthorized(check: Check) -> Response<Body> {
    let (challenge, body) = match check {
        Check::Wrong => (
            r#"Bearer realm="dml-agent", error="invalid_token""#,
            "the bearer token does not match metrics.token_file\n",
        ),
        _ => (
            r#"Bearer realm="dml-agent""#,
            "send Authorization: Bearer <token> (metrics.token_file)\n",
        ),
    };
    let mut r = reply(StatusCode::UNAUTHORIZED, PLAIN, body.into());
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

async fn answer<E: Endpoints>(
    e: &E,
    token: Option<&Token>,
    req: &Request<Incoming>,
) -> Response<Body> {
    match route(req.method(), req.uri().path()) {
        Route::Metrics => match token.map(|t| t.check(req.headers().get(AUTHORIZATION))) {
            None | Some(Check::Granted) => {
                reply(StatusCode::OK, e.content_type(), e.metrics().await)
            }
            Some(refused) => unauthorized(refused),
        },
        Route::Health => probe(e.health().await),
        Route::Ready => probe(e.ready().await),
        Route::NotFound => reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try GET /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Serves `listener` until `stop` changes, answering through `endpoints`;
/// with `token`, `/metrics` needs it.
pub async fn serve<E: Endpoints>(
    listener: TcpListener,
    limits: Limits,
    endpoints: Arc<E>,
    token: Option<Token>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(limits.max_head)
        .keep_alive(false);
    let http = Arc::new(http);
    let token = token.map(Arc::new);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let (endpoints, token) = (endpoints.clone(), token.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (endpoints, token) = (endpoints.clone(), token.clone());
            async move { Ok::<_, Infallible>(answer(&*endpoints, token.as_deref(), &req).await) }
        });
        let http = http.clone();
        conns.spawn(async move {
            let _permit = permit;
            let conn = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.exchange_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics: connection ended: {e}"),
                Err(_) => tracing::debug!(
                    "metrics: exchange cut off after {:?}",
                    limits.exchange_timeout
                ),
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn get_and_head_of_the_three_paths_are_served() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/healthz"), Route::Health);
        assert_eq!(route(&Method::HEAD, "/readyz"), Route::Ready);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/metrics/x"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/metrics"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/readyz"), Route::NotFound);
    }

    /// Serves a fixed body; ready while `ready` says so.
    struct Fixed {
        body: &'static str,
        ready: std::sync::atomic::AtomicBool,
    }

    impl Endpoints for Fixed {
        fn content_type(&self) -> &'static str {
            "text/plain; version=0.0.4"
        }
        async fn metrics(&self) -> String {
            self.body.to_string()
        }
        async fn health(&self) -> Probe {
            Ok(())
        }
        async fn ready(&self) -> Probe {
            match self.ready.load(std::sync::atomic::Ordering::Relaxed) {
                true => Ok(()),
                false => Err("no leader".into()),
            }
        }
    }

    /// A server answering `body`, and the sender that stops it.
    async fn server(limits: Limits, body: &'static str) -> (SocketAddr, watch::Sender<bool>) {
        server_with(limits, body, None).await.0
    }

    async fn server_with(
        limits: Limits,
        body: &'static str,
        token: Option<Token>,
    ) -> ((SocketAddr, watch::Sender<bool>), Arc<Fixed>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let fixed = Arc::new(Fixed {
            body,
            ready: false.into(),
        });
        tokio::spawn(serve(listener, limits, fixed.clone(), token, stop_rx));
        ((addr, stop), fixed)
    }

    /// Sends `request` and reads until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before reading all of an oversized head.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_are_routed_and_bad_heads_refused() {
        let (addr, _stop) = server(Limits::default(), "up 1\n").await;
        let ok = exchange(addr, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4\r\n"),
            "{ok}"
        );
        assert!(ok.contains("content-length: 5\r\n"), "{ok}");
        assert!(ok.contains("connection: close\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");

        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");

        let health = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        let ready = exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(
            ready.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{ready}"
        );
        assert!(ready.ends_with("\r\n\r\nno leader\n"), "{ready}");

        let missing = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let bad = exchange(addr, b"nonsense\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");

        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 2 * Limits::default().max_head));
        huge.extend_from_slice(b"\r\n\r\n");
        let big = exchange(addr, &huge).await;
        assert!(
            big.is_empty() || big.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{big}"
        );
    }

    #[tokio::test]
    async fn with_a_token_only_metrics_need_it() {
        let token = Token::new("0123456789abcdef-secret").unwrap();
        let ((addr, _stop), fixed) = server_with(Limits::default(), "up 1\n", Some(token)).await;
        let none = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(none.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{none}");
        assert!(
            none.contains("www-authenticate: Bearer realm=\"dml-agent\"\r\n"),
            "{none}"
        );
        assert!(!none.contains("up 1"), "{none}");
        let wrong = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef-secreT\r\n\r\n",
        )
        .await;
        assert!(
            wrong.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{wrong}"
        );
        assert!(wrong.contains("error=\"invalid_token\""), "{wrong}");
        let ok = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef-secret\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        fixed
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for path in ["/healthz", "/readyz"] {
            let r = exchange(addr, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await;
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {r}");
        }
    }

    #[tokio::test]
    async fn a_head_that_never_ends_is_cut_off() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            exchange_timeout: Duration::from_secs(600),
            ..Limits::default()
        };
        let (addr, _stop) = server(limits, "up 1\n").await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // The server closes (answering at most a 408) instead of waiting.
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("the connection is still open")
            .ok();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn stopping_closes_the_listener() {
        let (addr, stop) = server(Limits::default(), "up 1\n").await;
        stop.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::task::yield_now().await;
        }
    }
}
