//! Helpers of the portal tests: users with tokens, uploads and downloads over real HTTP.

use portico_tenant_runtime::store::{roles::RoleName, users};
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Answer, Server, TestEnv};

/// A local user of `slug` with `role`, and an API token acting for them.
pub async fn user(env: &TestEnv, slug: &str, email: &str, role: &str) -> (Uuid, String) {
    let p = env.platform().await;
    let client = p.connect_as_tenant(slug).await.expect("tenant db");
    // Nobody signs in with this password: the tests act through the user's token.
    let id = users::create_local(
        &client,
        email,
        RoleName::parse(role).expect("role"),
        "$argon2id$v=19$m=19456,t=2,p=1$bm90LXVzZWQ$bm90LXVzZWQtbm90LXVzZWQtbm90LXVzZWQ",
    )
    .await
    .expect("user");
    let v = env.json(&[
        "tenant", "token", "create", slug, "--name", email, "--user", email, "--json",
    ]);
    (id.as_uuid(), v["token"].as_str().expect("token").to_owned())
}

fn answer(
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Result<Vec<u8>, Vec<u8>>,
) -> Answer {
    let text = String::from_utf8_lossy(&body.expect("complete body")).into_owned();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// `POST /api/v1/documents?<query>` with `bytes` as the file.
pub async fn upload(
    server: &Server,
    host: &str,
    token: &str,
    query: &[(&str, &str)],
    bytes: Vec<u8>,
) -> Answer {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let (s, h, b) = server
        .send_raw(
            Method::POST,
            host,
            &format!("/api/v1/documents?{q}"),
            Some(token),
            &[("content-type", "application/pdf")],
            Some(bytes.into()),
        )
        .await;
    answer(s, h, b)
}

/// `POST /api/v1/documents/{id}/versions`.
pub async fn new_version(
    server: &Server,
    host: &str,
    token: &str,
    id: &str,
    bytes: Vec<u8>,
) -> Answer {
    let (s, h, b) = server
        .send_raw(
            Method::POST,
            host,
            &format!("/api/v1/documents/{id}/versions?file_name=v2.pdf"),
            Some(token),
            &[("content-type", "application/pdf")],
            Some(bytes.into()),
        )
        .await;
    answer(s, h, b)
}

/// GET of a content path: status, headers, body (`Err` with what arrived when it broke off).
pub async fn fetch(
    server: &Server,
    host: &str,
    path: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Result<Vec<u8>, Vec<u8>>) {
    let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
    server
        .send_raw(Method::GET, host, path, token, &headers, None)
        .await
}

pub async fn post(server: &Server, host: &str, path: &str, token: &str, body: Value) -> Answer {
    server
        .request(Method::POST, host, path, Some(token), &[], Some(body))
        .await
}

pub async fn put(server: &Server, host: &str, path: &str, token: &str, body: Value) -> Answer {
    server
        .request(Method::PUT, host, path, Some(token), &[], Some(body))
        .await
}

/// Deterministic test content of `len` bytes (distinct per `seed`).
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// `POST /api/v1/approvals/{id}/{verb}` (`approve` or `reject`) as `token`.
pub async fn decide(server: &Server, host: &str, id: &str, verb: &str, token: &str) -> Answer {
    post(
        server,
        host,
        &format!("/api/v1/approvals/{id}/{verb}"),
        token,
        serde_json::json!({}),
    )
    .await
}

/// The approval id of a `202 pending_approval` answer (asserting it was pending).
pub fn approval_id(pending: &Answer) -> String {
    assert_eq!(pending.status, 202, "{pending:?}");
    assert_eq!(pending.body["status"], "pending_approval");
    pending.body["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_owned()
}

/// Approves a pending request as `approver`, asserting it was pending.
pub async fn approve(server: &Server, host: &str, pending: &Answer, approver: &str) -> Answer {
    decide(server, host, &approval_id(pending), "approve", approver).await
}

/// `PUT /api/v1/users/{user}/role` as `token`.
pub async fn set_role(
    server: &Server,
    host: &str,
    user: impl std::fmt::Display,
    token: &str,
    role: &str,
) -> Answer {
    put(
        server,
        host,
        &format!("/api/v1/users/{user}/role"),
        token,
        serde_json::json!({ "role": role }),
    )
    .await
}

/// `POST /api/v1/sites` with `code` as code and name, as `token`.
pub async fn add_site(server: &Server, host: &str, token: &str, code: &str) -> Answer {
    post(
        server,
        host,
        "/api/v1/sites",
        token,
        serde_json::json!({"code": code, "name": code}),
    )
    .await
}

/// Creates each site of `codes`, asserting every one was created.
pub async fn add_sites(server: &Server, host: &str, token: &str, codes: &[&str]) {
    for code in codes {
        let r = add_site(server, host, token, code).await;
        assert_eq!(r.status, 201, "{r:?}");
    }
}
