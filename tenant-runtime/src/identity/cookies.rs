//! Our two browser cookies (`__Host-` prefixed, so host-only and `Secure`): the session and
//! the pre-login flow, and the small response helpers that set them.

use crate::store::sessions::{self, Timeouts};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};

pub const SESSION_COOKIE: &str = "__Host-portico_session";
pub const FLOW_COOKIE: &str = "__Host-portico_flow";

/// The digest of one of our cookies in a request, if present and well-formed.
pub fn cookie_digest(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| Cookie::parse(c.trim().to_owned()).ok())
        .find(|c| c.name() == name)
        .and_then(|c| sessions::presented(c.value()))
}

pub(crate) fn session_cookie(value: Option<&str>, timeouts: Timeouts) -> String {
    let mut c = Cookie::build((SESSION_COOKIE, value.unwrap_or("").to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax);
    c = match value {
        Some(_) => c.max_age(timeouts.absolute),
        None => c.max_age(time::Duration::ZERO),
    };
    c.build().to_string()
}

pub(crate) fn flow_cookie(value: Option<&str>) -> String {
    // SameSite=None: the SAML IdP comes back with a cross-site POST.
    Cookie::build((FLOW_COOKIE, value.unwrap_or("").to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::None)
        .max_age(match value {
            Some(_) => sessions::FLOW_TTL,
            None => time::Duration::ZERO,
        })
        .build()
        .to_string()
}

pub(crate) fn with_cookies(
    mut resp: Response,
    cookies: impl IntoIterator<Item = String>,
) -> Response {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}
