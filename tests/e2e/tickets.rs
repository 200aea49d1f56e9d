//! Service tickets: idempotent creation under concurrent retries, the workflow, visibility by
//! role and site, and other tenants.

use reqwest::Method;
use serde_json::json;

use crate::portal::{add_sites, content, post, upload, user};
use crate::support::{Backend, TestEnv, host_of};

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_create_one_ticket() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "member").await;
    let (_, ben) = user(&env, "acme", "ben@acme.example", "member").await;
    let server = std::sync::Arc::new(env.serve(&[]));
    let acme = host_of("acme");
    let body = json!({"title": "Pump 3 leaks", "description": "Since Monday."});
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (server, acme, ann, body) =
                (server.clone(), acme.clone(), ann.clone(), body.clone());
            tokio::spawn(async move {
                server
                    .request(
                        Method::POST,
                        &acme,
                        "/api/v1/tickets",
                        Some(&ann),
                        &[("idempotency-key", "k-1")],
                        Some(body),
                    )
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    for a in &answers {
        assert_eq!(a.status, 201, "{a:?}");
        assert_eq!(a.body, answers[0].body, "every retry gets the first answer");
    }
    let replays = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed").is_some())
        .count();
    assert_eq!(replays, 15);
    let p = env.platform().await;
    let db = p.connect_as_tenant("acme").await.expect("db");
    let n: i64 = db
        .query_one("select count(*) from tickets", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    // The same key with another body is refused; nothing is created.
    let r = server
        .request(
            Method::POST,
            &acme,
            "/api/v1/tickets",
            Some(&ann),
            &[("idempotency-key", "k-1")],
            Some(json!({"title": "Pump 4 leaks"})),
        )
        .await;
    r.assert_problem(422, "idempotency_key_reused");
    // Keys belong to their principal: ben's k-1 is his own ticket.
    let r = server
        .request(
            Method::POST,
            &acme,
            "/api/v1/tickets",
            Some(&ben),
            &[("idempotency-key", "k-1")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_ne!(r.body["id"], answers[0].body["id"]);
    // Without a key, each request is a new ticket; a malformed key is a field error.
    let bad = server
        .request(
            Method::POST,
            &acme,
            "/api/v1/tickets",
            Some(&ann),
            &[("idempotency-key", "")],
            Some(body),
        )
        .await;
    bad.assert_problem(422, "invalid_input");
    assert_eq!(bad.body["errors"][0]["field"], "Idempotency-Key");
    let n: i64 = db
        .query_one("select count(*) from tickets", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
    env.cleanup().await;
}

#[tokio::test]
async fn tickets_follow_the_workflow_roles_sites_and_tenant() {
    tickets_follow_the_workflow_roles_sites_and_tenant_on(TestEnv::new(Backend::FileLocal).await)
        .await;
}

/// The same on the pooled tier: tenants in one shared database, behind role switching.
#[tokio::test]
async fn tickets_follow_the_workflow_roles_sites_and_tenant_pooled() {
    tickets_follow_the_workflow_roles_sites_and_tenant_on(
        TestEnv::pooled(Backend::FileLocal).await,
    )
    .await;
}

async fn tickets_follow_the_workflow_roles_sites_and_tenant_on(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let (_, ann) = user(&env, "acme", "ann@acme.example", "member").await;
    let (_, ben) = user(&env, "acme", "ben@acme.example", "member").await;
    let (_, tech) = user(&env, "acme", "tech@acme.example", "technician").await;
    let (berlin_tech_id, berlin_tech) = user(&env, "acme", "bt@acme.example", "technician").await;
    let g_admin = env.tenant_token("globex", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    add_sites(&server, &acme, &admin, &["berlin", "munich"]).await;
    crate::portal::put(
        &server,
        &acme,
        &format!("/api/v1/users/{berlin_tech_id}/sites"),
        &admin,
        json!({"sites": ["berlin"]}),
    )
    .await;
    let doc = upload(
        &server,
        &acme,
        &admin,
        &[
            ("type", "delivery_note"),
            ("title", "DN"),
            ("site", "munich"),
        ],
        content(10, 1),
    )
    .await;
    let t = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &ann,
        json!({"title": "Wrong delivery", "site": "munich", "attachments": [doc.body["id"]]}),
    )
    .await;
    assert_eq!(t.status, 201, "{t:?}");
    assert_eq!(t.body["status"], "open");
    assert_eq!(t.body["attachments"], json!([doc.body["id"]]));
    let id = t.body["id"].as_str().expect("id").to_owned();
    let path = format!("/api/v1/tickets/{id}");

    // Who sees it: its creator and technicians (all tickets) of its site; not ben, not a
    // Berlin-only technician, not globex.
    for (token, status) in [
        (&ann, 200),
        (&tech, 200),
        (&admin, 200),
        (&ben, 404),
        (&berlin_tech, 404),
    ] {
        assert_eq!(server.get(&acme, &path, Some(token)).await.status, status);
    }
    server
        .get(&host_of("globex"), &path, Some(&g_admin))
        .await
        .assert_problem(404, "not_found");
    post(
        &server,
        &host_of("globex"),
        &format!("{path}/comments"),
        &g_admin,
        json!({"body": "hi"}),
    )
    .await
    .assert_problem(404, "not_found");
    post(
        &server,
        &acme,
        &format!("{path}/comments"),
        &ben,
        json!({"body": "me too"}),
    )
    .await
    .assert_problem(404, "not_found");
    let list = |token: &str| {
        let (server, acme, token) = (&server, &acme, token.to_owned());
        async move {
            server.get(acme, "/api/v1/tickets", Some(&token)).await.body["items"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    assert_eq!(
        (
            list(&ann).await,
            list(&ben).await,
            list(&tech).await,
            list(&berlin_tech).await
        ),
        (1, 0, 1, 0)
    );

    // The workflow: the creator cannot work the ticket; the technician can, step by step.
    let status = |token: &str, to: &str| {
        let (server, acme, token, path, to) = (
            &server,
            &acme,
            token.to_owned(),
            path.clone(),
            to.to_owned(),
        );
        async move {
            post(
                server,
                acme,
                &format!("{path}/status"),
                &token,
                json!({"status": to}),
            )
            .await
        }
    };
    status(&ann, "in_progress")
        .await
        .assert_problem(403, "forbidden");
    status(&tech, "closed")
        .await
        .assert_problem(409, "invalid_transition");
    status(&tech, "paused")
        .await
        .assert_problem(422, "invalid_input");
    assert_eq!(
        status(&tech, "in_progress").await.body["status"],
        "in_progress"
    );
    assert_eq!(
        status(&tech, "waiting_for_customer").await.body["status"],
        "waiting_for_customer"
    );
    let c = post(
        &server,
        &acme,
        &format!("{path}/comments"),
        &ann,
        json!({"body": "Serial number is 4711."}),
    )
    .await;
    assert_eq!(c.status, 201);
    assert_eq!(
        status(&ann, "in_progress").await.status,
        200,
        "the creator answers"
    );
    assert_eq!(status(&tech, "resolved").await.status, 200);
    assert_eq!(
        status(&ann, "closed").await.status,
        200,
        "the creator closes"
    );
    post(
        &server,
        &acme,
        &format!("{path}/comments"),
        &ann,
        json!({"body": "one more"}),
    )
    .await
    .assert_problem(409, "ticket_closed");
    let shown = server.get(&acme, &path, Some(&tech)).await;
    assert_eq!(shown.body["comments"][0]["body"], "Serial number is 4711.");
    let history = server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=ticket_status_changed",
            Some(&admin),
        )
        .await;
    assert_eq!(history.body["items"].as_array().expect("items").len(), 5);
    // Attachments must be documents the caller can read.
    post(
        &server,
        &acme,
        "/api/v1/tickets",
        &berlin_tech,
        json!({"title": "x", "site": "berlin", "attachments": [doc.body["id"]]}),
    )
    .await
    .assert_problem(422, "invalid_input");
    env.cleanup().await;
}
