//! Text PostgreSQL cannot store never gets past the edge: a NUL character in the path, in a
//! query parameter, in a form field or anywhere in a JSON body is refused with `422
//! invalid_input` naming where it was, before any handler (and so any SQL) sees it. `text`
//! columns cannot hold U+0000, and the driver's error would otherwise surface as a 500.
//!
//! JSON and form bodies are read whole here (they are small: the body limit applies); every
//! other body — uploads — streams through untouched.

use crate::ErrorCode;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};

use crate::Problem;

/// The place of the first NUL in a JSON value (`title`, `items[2].name`; `$` for the root).
pub fn nul_in_json(v: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match v {
        Value::String(s) if s.contains('\0') => {
            Some(if at.is_empty() { "$".into() } else { at.into() })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in_json(item, &format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_in_json(item, &join(k))
            }
        }),
        _ => None,
    }
}

/// The name of the first URL-encoded pair (query or form) with a NUL in its name or value.
pub fn nul_in_pairs(encoded: &[u8]) -> Option<String> {
    form_urlencoded::parse(encoded)
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| k.replace('\0', "\\u0000"))
}

fn refused(field: String) -> Problem {
    Problem::fields(vec![(field, "must not contain a NUL character".into())])
}

/// Checks path and query; for JSON and form bodies also the body (read up to `body_limit`).
/// Returns the request to pass on, rebuilt around the body it read.
pub async fn check(req: Request, body_limit: usize) -> Result<Request, Problem> {
    let path = req.uri().path();
    if path.contains("%00") || path.contains('\0') {
        return Err(refused("path".into()));
    }
    if let Some(field) = req.uri().query().and_then(|q| nul_in_pairs(q.as_bytes())) {
        return Err(refused(field));
    }
    let kind = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let json = kind
        .as_deref()
        .is_some_and(|k| k == "application/json" || k.ends_with("+json"));
    let form = kind.as_deref() == Some("application/x-www-form-urlencoded");
    if !json && !form {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, body_limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "Request body too large",
        )
    })?;
    let bad = if json {
        // Malformed JSON is left to the handler's extractor, which names the problem.
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| nul_in_json(&v, ""))
    } else {
        nul_in_pairs(&bytes)
    };
    match bad {
        Some(field) => Err(refused(field)),
        None => Ok(Request::from_parts(parts, Body::from(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_found_and_named_wherever_it_is() {
        assert_eq!(
            nul_in_json(&json!({"title": "a\u{0}b"}), ""),
            Some("title".into())
        );
        assert_eq!(
            nul_in_json(&json!({"items": [{"name": "ok"}, {"name": "\u{0}"}]}), ""),
            Some("items[1].name".into())
        );
        assert_eq!(
            nul_in_json(&json!({"a\u{0}": 1}), ""),
            Some("a\\u0000".into())
        );
        assert_eq!(nul_in_json(&json!("\u{0}"), ""), Some("$".into()));
        assert_eq!(
            nul_in_json(&json!({"title": "fine", "n": 1, "x": null}), ""),
            None
        );
        assert_eq!(nul_in_pairs(b"status=%00x"), Some("status".into()));
        assert_eq!(nul_in_pairs(b"a=1&email=x%00%40y"), Some("email".into()));
        assert_eq!(nul_in_pairs(b"a=1&b=2"), None);
    }
}
