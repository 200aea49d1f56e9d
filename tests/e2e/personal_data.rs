//! A person's data (GDPR Art. 15 and 20), on both tiers: what an admin managing the user gets
//! and what the person gets for themselves — their profile, tokens, sessions, tickets,
//! comments, documents and audit events, never a secret — refused to members for others, to
//! service tokens for themselves, and to every other tenant; each export is audited.

use serde_json::json;

use crate::portal::{content, post, upload, user};
use crate::support::{Backend, TestEnv, host_of};

#[tokio::test]
async fn a_persons_data_is_exported_to_them_and_their_admin_only() {
    personal_data_on(TestEnv::new(Backend::S3Kms).await).await;
}

#[tokio::test]
async fn a_persons_data_is_exported_to_them_and_their_admin_only_pooled() {
    personal_data_on(TestEnv::pooled(Backend::FileLocal).await).await;
}

async fn personal_data_on(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (ann_id, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (bob_id, bob) = user(&env, "acme", "bob@acme.example", "member").await;
    let (_, gus) = user(&env, "globex", "gus@globex.example", "admin").await;
    let service = env.tenant_token("acme", "erp-sync", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let ticket = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &bob,
        json!({"title": "Printer broken in hall 3"}),
    )
    .await;
    assert_eq!(ticket.status, 201, "{ticket:?}");
    let tid = ticket.body["id"].as_str().expect("id").to_owned();
    let c = post(
        &server,
        &acme,
        &format!("/api/v1/tickets/{tid}/comments"),
        &bob,
        json!({"body": "Still broken on Tuesday"}),
    )
    .await;
    assert_eq!(c.status, 201, "{c:?}");
    let doc = upload(
        &server,
        &acme,
        &ann,
        &[("type", "invoice"), ("title", "Ann's invoice")],
        content(100, 1),
    )
    .await;
    assert_eq!(doc.status, 201, "{doc:?}");

    let path = format!("/api/v1/users/{bob_id}/data-export");
    let got = server.get(&acme, &path, Some(&ann)).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body["format"], "portico-personal-data/1");
    let d = &got.body["data"];
    assert_eq!(d["user"]["email"], "bob@acme.example");
    assert_eq!(d["tickets"][0]["title"], "Printer broken in hall 3");
    assert_eq!(d["ticket_comments"][0]["body"], "Still broken on Tuesday");
    assert_eq!(d["tokens"][0]["name"], "bob@acme.example");
    assert!(
        d["documents"].as_array().expect("documents").is_empty(),
        "Ann's document is not Bob's"
    );
    let events: Vec<&str> = d["audit_events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert!(
        events.contains(&"ticket_created") && events.contains(&"ticket_commented"),
        "{events:?}"
    );
    let text = got.body.to_string();
    for secret in [
        "token_hash",
        "password_hash",
        "argon2",
        "csrf",
        "totp_secret",
        "ann@acme.example",
    ] {
        assert!(!text.contains(secret), "the export holds {secret}: {text}");
    }

    // The person themselves; Ann's own export has her document.
    let mine = server
        .get(&acme, "/api/v1/me/data-export", Some(&bob))
        .await;
    assert_eq!(mine.status, 200, "{mine:?}");
    assert_eq!(mine.body["data"]["user"]["id"], bob_id.to_string());
    let hers = server
        .get(&acme, "/api/v1/me/data-export", Some(&ann))
        .await;
    assert_eq!(hers.body["data"]["documents"][0]["title"], "Ann's invoice");

    // Refused: a member for someone else, a service token for itself, other tenants.
    server
        .get(
            &acme,
            &format!("/api/v1/users/{ann_id}/data-export"),
            Some(&bob),
        )
        .await
        .assert_problem(403, "forbidden");
    server
        .get(&acme, "/api/v1/me/data-export", Some(&service))
        .await
        .assert_problem(404, "not_found");
    server
        .get(&host_of("globex"), &path, Some(&gus))
        .await
        .assert_problem(404, "not_found");
    server
        .get(&acme, &path, Some(&gus))
        .await
        .assert_problem(401, "invalid_token");
    server
        .get(
            &acme,
            &format!("/api/v1/users/{}/data-export", uuid::Uuid::new_v4()),
            Some(&ann),
        )
        .await
        .assert_problem(404, "not_found");

    // Audited: who exported whose data.
    let log = server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=personal_data_exported",
            Some(&ann),
        )
        .await;
    assert_eq!(log.status, 200, "{log:?}");
    let targets: Vec<String> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            format!(
                "{}>{}",
                e["actor"].as_str().unwrap_or("?"),
                e["target"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        targets.contains(&format!("ann@acme.example>user:{bob_id}")),
        "{targets:?}"
    );
    assert!(
        targets.contains(&format!("bob@acme.example>user:{bob_id}")),
        "{targets:?}"
    );
    assert!(env.ok(&["audit", "verify", "acme"]).contains("intact"));
    env.cleanup().await;
}
