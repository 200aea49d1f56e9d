//! The HTTP edge both the operator API and the tenant runtime stand on: every stable error
//! code ([`ErrorCode`]), RFC 9457 problems ([`Problem`]), request ids, the true client address
//! behind trusted proxies, keyed rate limiters, the edge middleware ([`edge`]: span, limits,
//! time-outs, the text guard, security headers, metrics), and the JSON extractor whose
//! rejections are problems. It knows nothing of tenants or of the catalog.

pub mod textguard;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const PROBLEM_JSON: &str = "application/problem+json";

/// What the task serving a request knows about it.
struct RequestScope {
    id: RequestId,
    /// Set when the request was given up (timeout) and its handler is being dropped.
    abandoned: std::cell::Cell<bool>,
}

tokio::task_local! {
    static CURRENT_REQUEST: RequestScope;
}

/// True while the current request's handler is being dropped unfinished (it timed out): a
/// connection it held may have a query in flight and must not go back to a pool.
pub fn request_abandoned() -> bool {
    CURRENT_REQUEST
        .try_with(|r| r.abandoned.get())
        .unwrap_or(false)
}

/// The id of the request being served: a well-formed incoming `X-Request-Id` or a fresh one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// Accepts 1–128 characters of `[A-Za-z0-9._:-]`; anything else is replaced.
    fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|s| {
                (1..=128).contains(&s.len())
                    && s.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
                    })
            })
            .map(|s| Self(s.to_owned()))
            .unwrap_or_else(|| Self(uuid::Uuid::new_v4().to_string()))
    }

    /// The id of the request this task is serving, if any.
    pub fn current() -> Option<Self> {
        CURRENT_REQUEST.try_with(|r| r.id.clone()).ok()
    }
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut current = peer.to_canonical();
    if !is_trusted(&current) {
        return current;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage left of what our proxies appended: the last hop we could trust is all
            // we know.
            return current;
        };
        current = ip.to_canonical();
        if !is_trusted(&current) {
            return current;
        }
    }
    current
}

/// Routes whose request body is a streamed file (their handlers bound its size themselves).
pub const UPLOAD_ROUTES: &[&str] = &["/api/v1/documents", "/api/v1/documents/{id}/versions"];

/// Every stable error code of the HTTP APIs, in one place: what `code` (and the problem
/// `type`, `urn:portico:problem:<code>`) says. A code is never renamed once shipped; clients
/// match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AnonymousRateLimited,
    ApprovalDecided,
    ApprovalRequired,
    BadRequest,
    Busy,
    CatalogUnavailable,
    Conflict,
    ContentIntegrity,
    CsrfFailed,
    DbServerExists,
    DbServerNotFound,
    DbServerRejected,
    DomainTaken,
    EscalationRefused,
    FeatureDisabled,
    Forbidden,
    FourEyes,
    IdempotencyKeyReused,
    Internal,
    InvalidHost,
    InvalidInput,
    InvalidState,
    InvalidToken,
    InvalidTransition,
    LegalHoldActive,
    LinkExpired,
    LinkInvalid,
    LinkRevoked,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RateLimited,
    RequestTimeout,
    RequesterLostRights,
    RetentionActive,
    RunNotFound,
    SameOperator,
    ScannerUnavailable,
    ServiceUnavailable,
    SlugTaken,
    StorageUnavailable,
    TenantBusy,
    TenantDeleted,
    TenantMoving,
    TenantNotFound,
    TenantRateLimited,
    TenantSuspended,
    TenantUnavailable,
    TenantUpgrading,
    TicketClosed,
    Unauthenticated,
    UnsupportedMediaType,
    UploadInfected,
    UploadInterrupted,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::AnonymousRateLimited,
        Self::ApprovalDecided,
        Self::ApprovalRequired,
        Self::BadRequest,
        Self::Busy,
        Self::CatalogUnavailable,
        Self::Conflict,
        Self::ContentIntegrity,
        Self::CsrfFailed,
        Self::DbServerExists,
        Self::DbServerNotFound,
        Self::DbServerRejected,
        Self::DomainTaken,
        Self::EscalationRefused,
        Self::FeatureDisabled,
        Self::Forbidden,
        Self::FourEyes,
        Self::IdempotencyKeyReused,
        Self::Internal,
        Self::InvalidHost,
        Self::InvalidInput,
        Self::InvalidState,
        Self::InvalidToken,
        Self::InvalidTransition,
        Self::LegalHoldActive,
        Self::LinkExpired,
        Self::LinkInvalid,
        Self::LinkRevoked,
        Self::MethodNotAllowed,
        Self::NotFound,
        Self::NotReady,
        Self::PayloadTooLarge,
        Self::RangeNotSatisfiable,
        Self::RateLimited,
        Self::RequestTimeout,
        Self::RequesterLostRights,
        Self::RetentionActive,
        Self::RunNotFound,
        Self::SameOperator,
        Self::ScannerUnavailable,
        Self::ServiceUnavailable,
        Self::SlugTaken,
        Self::StorageUnavailable,
        Self::TenantBusy,
        Self::TenantDeleted,
        Self::TenantMoving,
        Self::TenantNotFound,
        Self::TenantRateLimited,
        Self::TenantSuspended,
        Self::TenantUnavailable,
        Self::TenantUpgrading,
        Self::TicketClosed,
        Self::Unauthenticated,
        Self::UnsupportedMediaType,
        Self::UploadInfected,
        Self::UploadInterrupted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AnonymousRateLimited => "anonymous_rate_limited",
            Self::ApprovalDecided => "approval_decided",
            Self::ApprovalRequired => "approval_required",
            Self::BadRequest => "bad_request",
            Self::Busy => "busy",
            Self::CatalogUnavailable => "catalog_unavailable",
            Self::Conflict => "conflict",
            Self::ContentIntegrity => "content_integrity",
            Self::CsrfFailed => "csrf_failed",
            Self::DbServerExists => "db_server_exists",
            Self::DbServerNotFound => "db_server_not_found",
            Self::DbServerRejected => "db_server_rejected",
            Self::DomainTaken => "domain_taken",
            Self::EscalationRefused => "escalation_refused",
            Self::FeatureDisabled => "feature_disabled",
            Self::Forbidden => "forbidden",
            Self::FourEyes => "four_eyes",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Internal => "internal",
            Self::InvalidHost => "invalid_host",
            Self::InvalidInput => "invalid_input",
            Self::InvalidState => "invalid_state",
            Self::InvalidToken => "invalid_token",
            Self::InvalidTransition => "invalid_transition",
            Self::LegalHoldActive => "legal_hold_active",
            Self::LinkExpired => "link_expired",
            Self::LinkInvalid => "link_invalid",
            Self::LinkRevoked => "link_revoked",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::NotReady => "not_ready",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::RateLimited => "rate_limited",
            Self::RequestTimeout => "request_timeout",
            Self::RequesterLostRights => "requester_lost_rights",
            Self::RetentionActive => "retention_active",
            Self::RunNotFound => "run_not_found",
            Self::SameOperator => "same_operator",
            Self::ScannerUnavailable => "scanner_unavailable",
            Self::ServiceUnavailable => "service_unavailable",
            Self::SlugTaken => "slug_taken",
            Self::StorageUnavailable => "storage_unavailable",
            Self::TenantBusy => "tenant_busy",
            Self::TenantDeleted => "tenant_deleted",
            Self::TenantMoving => "tenant_moving",
            Self::TenantNotFound => "tenant_not_found",
            Self::TenantRateLimited => "tenant_rate_limited",
            Self::TenantSuspended => "tenant_suspended",
            Self::TenantUnavailable => "tenant_unavailable",
            Self::TenantUpgrading => "tenant_upgrading",
            Self::TicketClosed => "ticket_closed",
            Self::Unauthenticated => "unauthenticated",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UploadInfected => "upload_infected",
            Self::UploadInterrupted => "upload_interrupted",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The normalised host of a request, or the `invalid_host` problem.
pub fn request_host(headers: &HeaderMap) -> Result<portico_core::Hostname, Problem> {
    let raw = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    portico_core::Hostname::from_host_header(raw).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidHost,
            "The Host header is missing or malformed",
        )
    })
}

/// An RFC 9457 problem with a stable `code`. Internal causes are logged, never sent.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub title: &'static str,
    pub detail: Option<String>,
    pub retry_after: Option<u64>,
    /// Per-field validation errors: (field, what is wrong).
    pub errors: Box<[(String, String)]>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, code: ErrorCode, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
            retry_after: None,
            errors: Box::new([]),
            headers: Vec::new(),
        }
    }

    /// `422 invalid_input` listing what is wrong with which field.
    pub fn fields(errors: Vec<(String, String)>) -> Self {
        let mut p = Self::invalid_input(
            errors
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        );
        p.errors = errors.into_boxed_slice();
        p
    }

    /// `403 forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "Forbidden").detail(detail)
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "Not found")
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "Internal error; quote the request id when reporting it",
        )
    }

    pub fn invalid_input(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidInput,
            "Invalid input",
        )
        .detail(detail)
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "Authentication required",
        )
        .header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portico\""),
        )
    }

    pub fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "The token is malformed, unknown, revoked or expired",
        )
        .header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portico\", error=\"invalid_token\""),
        )
    }

    /// A generic problem for an error status that carried none (routing, extractors, limits).
    fn for_status(status: StatusCode) -> Self {
        let (code, title) = match status {
            StatusCode::BAD_REQUEST => (ErrorCode::BadRequest, "Bad request"),
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "Not found"),
            StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "Method not allowed"),
            StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "Request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (ErrorCode::UnsupportedMediaType, "Unsupported media type")
            }
            StatusCode::UNPROCESSABLE_ENTITY => (ErrorCode::InvalidInput, "Invalid input"),
            StatusCode::REQUEST_TIMEOUT => (ErrorCode::RequestTimeout, "Request timed out"),
            s if s.is_client_error() => (ErrorCode::BadRequest, "Bad request"),
            _ => (
                ErrorCode::Internal,
                "Internal error; quote the request id when reporting it",
            ),
        };
        Self::new(status, code, title)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("urn:portico:problem:{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "code": self.code,
        });
        if let Some(detail) = &self.detail {
            body["detail"] = detail.as_str().into();
        }
        if !self.errors.is_empty() {
            body["errors"] = self
                .errors
                .iter()
                .map(|(f, m)| serde_json::json!({"field": f, "detail": m}))
                .collect();
        }
        if let Some(id) = RequestId::current() {
            body["request_id"] = id.0.into();
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

pub type KeyedLimiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// A per-key limiter allowing `per_second` requests per second (bursts of the same size), or
/// `None` when `per_second` is 0.
pub fn keyed_limiter<K: std::hash::Hash + Eq + Clone>(
    per_second: u32,
) -> Option<Arc<KeyedLimiter<K>>> {
    NonZeroU32::new(per_second)
        .map(|n| Arc::new(RateLimiter::keyed(Quota::per_second(n).allow_burst(n))))
}

/// A per-key limiter allowing `per_minute` requests per minute (bursts of the same size), or
/// `None` when `per_minute` is 0.
pub fn keyed_limiter_per_minute<K: std::hash::Hash + Eq + Clone>(
    per_minute: u32,
) -> Option<Arc<KeyedLimiter<K>>> {
    NonZeroU32::new(per_minute)
        .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))))
}

/// Checks `key` against `limiter`: `Err` is the 429 problem with `Retry-After`.
pub fn check_limit<K: std::hash::Hash + Eq + Clone>(
    limiter: Option<&KeyedLimiter<K>>,
    key: &K,
    code: ErrorCode,
) -> Result<(), Problem> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        metrics::counter!("portico_rate_limited_total", "limit" => code.as_str()).increment(1);
        Problem::new(StatusCode::TOO_MANY_REQUESTS, code, "Too many requests")
            .retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    })
}

/// What the edge middleware needs.
#[derive(Clone)]
pub struct Edge {
    pub trusted_proxies: Arc<Vec<IpNet>>,
    pub ip_limiter: Option<Arc<KeyedLimiter<IpAddr>>>,
    pub request_timeout: Duration,
    /// The time limit of streamed uploads ([`UPLOAD_ROUTES`]) instead of `request_timeout`.
    pub upload_timeout: Duration,
    /// The largest JSON or form body read (the text guard reads those whole).
    pub body_limit: usize,
}

const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    ("cache-control", "no-store"),
];

/// The outermost middleware of every request: request id, client address, span, per-IP rate
/// limit, timeout, problem+json for bare error statuses, security headers, log line, metrics.
pub async fn edge(State(edge): State<Edge>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = RequestId::from_headers(req.headers());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let ip = client_ip(peer, req.headers(), &edge.trusted_proxies);
    req.extensions_mut().insert(ClientIp(ip));
    req.extensions_mut().insert(request_id.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.0,
        method = %method,
        route = %route,
        client_ip = %ip,
        tenant_id = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let health = matches!(route.as_str(), "/healthz" | "/readyz");
    let work = async {
        tracing::debug!("request started");
        if !health
            && let Err(p) = check_limit(edge.ip_limiter.as_deref(), &ip, ErrorCode::RateLimited)
        {
            return p.into_response();
        }
        let req = match textguard::check(req, edge.body_limit).await {
            Ok(r) => r,
            Err(p) => return p.into_response(),
        };
        let upload = method == axum::http::Method::POST && UPLOAD_ROUTES.contains(&route.as_str());
        let limit = if upload {
            edge.upload_timeout
        } else {
            edge.request_timeout
        };
        let mut handler = Box::pin(next.run(req));
        let response = match tokio::time::timeout(limit, handler.as_mut()).await {
            Ok(r) => r,
            Err(_) => {
                // Drop the unfinished handler here, where connections it holds can see that
                // it was abandoned.
                let _ = CURRENT_REQUEST.try_with(|r| r.abandoned.set(true));
                drop(handler);
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::RequestTimeout,
                    "The request took too long",
                )
                .retry_after(1)
                .into_response()
            }
        };
        as_problem(response).await
    };
    let mut response = tracing::Instrument::instrument(
        CURRENT_REQUEST.scope(
            RequestScope {
                id: request_id.clone(),
                abandoned: std::cell::Cell::new(false),
            },
            work,
        ),
        span.clone(),
    )
    .await;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id.0) {
        headers.insert(REQUEST_ID, v);
    }
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(*name) {
            headers.insert(*name, HeaderValue::from_static(value));
        }
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.record("status", status);
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::info!("request finished"));
    metrics::counter!("portico_http_requests_total", "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("portico_http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    response
}

/// Error responses without a problem body (router 404/405, extractor rejections, body limits)
/// become problems; the rejection's text becomes the detail.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    // Browser pages (the sign-in failure page) are answers of their own.
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if status.as_u16() < 400 || is_problem || is_page {
        return response;
    }
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut problem = Problem::for_status(status);
    let text = String::from_utf8_lossy(&text);
    if !text.trim().is_empty() && status.is_client_error() {
        problem = problem.detail(text.chars().take(300).collect::<String>());
    }
    problem.into_response()
}

/// The field a JSON body error is about: serde's "missing field `x`" / "unknown field `x`", or
/// the path axum puts before the message ("items[2].title: invalid type …").
fn json_error_field(detail: &str) -> Option<String> {
    let msg = detail
        .rsplit_once("target type: ")
        .map_or(detail, |(_, m)| m);
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = msg.split_once(marker).map(|(_, r)| r) {
            return rest.split_once('`').map(|(f, _)| f.to_owned());
        }
    }
    let (path, _) = msg.split_once(": ")?;
    let ok = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
    ok.then(|| path.to_owned())
}

/// A JSON body extractor whose rejections are problems (422/400/415 with the reason).
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => {
                let status = rejection.status();
                let detail = rejection.body_text();
                let (code, title) = match status {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                        (ErrorCode::UnsupportedMediaType, "Expected a JSON body")
                    }
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        (ErrorCode::PayloadTooLarge, "Request body too large")
                    }
                    StatusCode::UNPROCESSABLE_ENTITY => (ErrorCode::InvalidInput, "Invalid input"),
                    _ => (ErrorCode::BadRequest, "Malformed JSON body"),
                };
                let mut p = Problem::new(status, code, title).detail(detail.clone());
                if let Some(field) = json_error_field(&detail) {
                    p.errors = vec![(field, detail)].into_boxed_slice();
                }
                Err(p)
            }
        }
    }
}

/// A query-string extractor whose rejections are problems listing the reason.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r) => Err(Problem::invalid_input(r.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for value in v {
            h.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // Untrusted peer: the header is ignored.
        assert_eq!(client_ip(outsider, &xff(&["1.2.3.4"]), &trusted), outsider);
        // Trusted peer: rightmost untrusted entry (the client's own claim on the left is ignored).
        assert_eq!(
            client_ip(peer, &xff(&["6.6.6.6, 198.51.100.7, 10.1.1.1"]), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Several headers are one list.
        assert_eq!(
            client_ip(peer, &xff(&["6.6.6.6", "198.51.100.7"]), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // No header: the peer.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        // Garbage: the last trusted hop.
        assert_eq!(
            client_ip(peer, &xff(&["nonsense, 10.1.1.1"]), &trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        // Nothing trusted: the peer, always.
        assert_eq!(client_ip(peer, &xff(&["1.2.3.4"]), &[]), peer);
        // IPv4-mapped peers match IPv4 blocks.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &xff(&["198.51.100.7"]), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn error_codes_are_unique_snake_case_strings() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty() && s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{s}"
            );
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(s));
        }
    }

    #[test]
    fn json_errors_name_their_field() {
        let pre = "Failed to deserialize the JSON body into the target type: ";
        assert_eq!(
            json_error_field(&format!("{pre}missing field `title` at line 1 column 2")),
            Some("title".into())
        );
        assert_eq!(
            json_error_field(&format!(
                "{pre}attachments[0]: invalid length 3 at line 1 column 9"
            )),
            Some("attachments[0]".into())
        );
        assert_eq!(json_error_field("EOF while parsing a value"), None);
    }

    #[test]
    fn request_ids_are_accepted_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123.X_y:z"));
        assert_eq!(RequestId::from_headers(&h).0, "abc-123.X_y:z");
        for bad in ["", "has space", "semi;colon", &"a".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = RequestId::from_headers(&h).0;
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok());
        }
    }
}
