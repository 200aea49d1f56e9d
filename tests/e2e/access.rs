//! Roles, permissions, site scopes, delegation without escalation, four-eyes approvals and
//! immediate revocation, through the tenant API.

use reqwest::Method;
use serde_json::json;

use crate::portal::{
    add_sites, approval_id, approve, content, decide, post, put, set_role, upload, user,
};
use crate::support::{Backend, TestEnv, host_of};

#[tokio::test]
async fn every_endpoint_follows_roles_and_site_scopes() {
    every_endpoint_follows_roles_and_site_scopes_on(TestEnv::new(Backend::FileLocal).await).await;
}

/// The same on the pooled tier: tenants in one shared database, behind role switching.
#[tokio::test]
async fn every_endpoint_follows_roles_and_site_scopes_pooled() {
    every_endpoint_follows_roles_and_site_scopes_on(TestEnv::pooled(Backend::FileLocal).await)
        .await;
}

async fn every_endpoint_follows_roles_and_site_scopes_on(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let (_, member) = user(&env, "acme", "member@acme.example", "member").await;
    let (_, accounting) = user(&env, "acme", "acc@acme.example", "accounting").await;
    let (_, tech) = user(&env, "acme", "tech@acme.example", "technician").await;
    let (berlin_id, berliner) = user(&env, "acme", "berlin@acme.example", "accounting").await;
    let server = env.serve(&[]);
    let acme = host_of("acme");
    add_sites(&server, &acme, &admin, &["berlin", "munich"]).await;
    let r = put(
        &server,
        &acme,
        &format!("/api/v1/users/{berlin_id}/sites"),
        &admin,
        json!({"sites": ["berlin"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let up = |token: &str, site: Option<&'static str>| {
        let mut q: Vec<(&str, &str)> = vec![("type", "invoice"), ("title", "t")];
        if let Some(s) = site {
            q.push(("site", s));
        }
        let (server, acme, token) = (&server, &acme, token.to_owned());
        async move { upload(server, acme, &token, &q, content(100, 1)).await }
    };
    // Uploads: documents.upload (admin, accounting), within the caller's sites.
    up(&member, None).await.assert_problem(403, "forbidden");
    up(&tech, None).await.assert_problem(403, "forbidden");
    let munich = up(&accounting, Some("munich")).await;
    assert_eq!(munich.status, 201);
    let berlin = up(&berliner, Some("berlin")).await;
    assert_eq!(berlin.status, 201);
    up(&berliner, Some("munich"))
        .await
        .assert_problem(422, "invalid_input");
    up(&berliner, None)
        .await
        .assert_problem(422, "invalid_input");
    let org = up(&admin, None).await;
    let (m_id, b_id, o_id) = (
        munich.body["id"].as_str().expect("id"),
        berlin.body["id"].as_str().expect("id"),
        org.body["id"].as_str().expect("id"),
    );

    // Reads: everyone with documents.read sees all sites, except the site-limited user.
    let count = |token: &str| {
        let (server, acme, token) = (&server, &acme, token.to_owned());
        async move {
            server
                .get(acme, "/api/v1/documents", Some(&token))
                .await
                .body["items"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    for t in [&admin, &member, &accounting, &tech] {
        assert_eq!(count(t).await, 3);
    }
    assert_eq!(count(&berliner).await, 1);
    server
        .get(&acme, &format!("/api/v1/documents/{m_id}"), Some(&berliner))
        .await
        .assert_problem(404, "not_found");
    server
        .get(
            &acme,
            &format!("/api/v1/documents/{o_id}/content"),
            Some(&berliner),
        )
        .await
        .assert_problem(404, "not_found");
    assert_eq!(
        server
            .get(
                &acme,
                &format!("/api/v1/documents/{b_id}/content"),
                Some(&berliner)
            )
            .await
            .status,
        200
    );

    // The rest of the matrix: (caller, method, path, body, expected status).
    let versions = format!("/api/v1/documents/{m_id}/versions");
    let links = format!("/api/v1/documents/{m_id}/links");
    let matrix: Vec<(&str, Method, String, Option<serde_json::Value>, u16)> = vec![
        (&member, Method::POST, links.clone(), Some(json!({})), 403),
        (
            &accounting,
            Method::POST,
            links.clone(),
            Some(json!({})),
            201,
        ),
        (&tech, Method::GET, links.clone(), None, 403),
        (&berliner, Method::POST, links.clone(), Some(json!({})), 404),
        (
            &member,
            Method::POST,
            versions.clone(),
            Some(json!({})),
            403,
        ),
        (&member, Method::GET, "/api/v1/users".into(), None, 403),
        (&accounting, Method::GET, "/api/v1/users".into(), None, 403),
        (&admin, Method::GET, "/api/v1/users".into(), None, 200),
        (&member, Method::GET, "/api/v1/roles".into(), None, 403),
        (&admin, Method::GET, "/api/v1/roles".into(), None, 200),
        (
            &member,
            Method::POST,
            "/api/v1/roles".into(),
            Some(json!({"name": "x", "permissions": []})),
            403,
        ),
        (
            &tech,
            Method::POST,
            "/api/v1/sites".into(),
            Some(json!({"code": "x", "name": "x"})),
            403,
        ),
        (
            &member,
            Method::GET,
            "/api/v1/audit-events".into(),
            None,
            403,
        ),
        (&tech, Method::GET, "/api/v1/audit-events".into(), None, 403),
        (
            &admin,
            Method::GET,
            "/api/v1/audit-events".into(),
            None,
            200,
        ),
        (&member, Method::GET, "/api/v1/approvals".into(), None, 403),
        (
            &member,
            Method::GET,
            "/api/v1/sso/connections".into(),
            None,
            403,
        ),
        (
            &accounting,
            Method::GET,
            "/api/v1/approval-policy".into(),
            None,
            403,
        ),
        (
            &member,
            Method::POST,
            "/api/v1/tickets".into(),
            Some(json!({"title": "help"})),
            201,
        ),
        (
            &berliner,
            Method::POST,
            "/api/v1/tickets".into(),
            Some(json!({"title": "help", "site": "munich"})),
            422,
        ),
    ];
    for (token, method, path, body, expected) in matrix {
        let r = server
            .request(method.clone(), &acme, &path, Some(token), &[], body)
            .await;
        assert_eq!(r.status, expected, "{method} {path}: {r:?}");
    }
    // A denial is audited.
    let denied = server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=permission_denied",
            Some(&admin),
        )
        .await;
    assert!(
        denied.body["items"].as_array().expect("items").len() >= 5,
        "{denied:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn delegation_never_escalates_and_four_eyes_guard_privileged_changes() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (alice_id, alice) = user(&env, "acme", "alice@acme.example", "admin").await;
    let (_, bob) = user(&env, "acme", "bob@acme.example", "admin").await;
    let (carol_id, carol) = user(&env, "acme", "carol@acme.example", "member").await;
    let (dave_id, _) = user(&env, "acme", "dave@acme.example", "member").await;
    // A second token of alice's is still alice.
    let alice2 = env.json(&[
        "tenant",
        "token",
        "create",
        "acme",
        "--name",
        "alice-2",
        "--user",
        "alice@acme.example",
        "--json",
    ])["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let g_admin = env.tenant_token("globex", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");

    // A role with users.manage is privileged: defining it waits for a second admin.
    let helpdesk = json!({"name": "helpdesk", "description": "first-level support", "permissions": ["users.manage", "documents.read", "tickets.create"]});
    let pending = post(&server, &acme, "/api/v1/roles", &alice, helpdesk.clone()).await;
    assert_eq!(pending.status, 202, "{pending:?}");
    // The approver sees what is asked, and by whom.
    let asked = &pending.body["approval"];
    assert_eq!(asked["requested_by"], "alice@acme.example");
    assert_eq!(
        asked["details"]["permissions"],
        json!(["documents.read", "tickets.create", "users.manage"])
    );
    assert_eq!(
        server
            .get(&acme, "/api/v1/roles", Some(&alice))
            .await
            .body
            .as_array()
            .expect("roles")
            .len(),
        4
    );
    // Not by the requester (under any of her tokens), not from another tenant.
    let aid = approval_id(&pending);
    decide(&server, &acme, &aid, "approve", &alice)
        .await
        .assert_problem(403, "four_eyes");
    decide(&server, &acme, &aid, "approve", &alice2)
        .await
        .assert_problem(403, "four_eyes");
    decide(&server, &host_of("globex"), &aid, "approve", &g_admin)
        .await
        .assert_problem(404, "not_found");
    let ok = approve(&server, &acme, &pending, &bob).await;
    assert_eq!(
        (ok.status, &ok.body["status"]),
        (200, &json!("approved")),
        "{ok:?}"
    );
    decide(&server, &acme, &aid, "approve", &bob)
        .await
        .assert_problem(409, "approval_decided");

    // Granting it to carol: privileged, four-eyes again; a rejection leaves her a member.
    let grant = set_role(&server, &acme, carol_id, &alice, "helpdesk").await;
    let rid = approval_id(&grant);
    let rejected = decide(&server, &acme, &rid, "reject", &bob).await;
    assert_eq!(rejected.body["status"], "rejected");
    let me = server.get(&acme, "/api/v1/me", Some(&carol)).await;
    assert_eq!(me.body["caller"]["role"], "member");
    let grant = set_role(&server, &acme, carol_id, &alice, "helpdesk").await;
    assert_eq!(approve(&server, &acme, &grant, &bob).await.status, 200);
    // Effective on carol's very next request.
    let me = server.get(&acme, "/api/v1/me", Some(&carol)).await;
    assert_eq!(me.body["caller"]["role"], "helpdesk");

    // Carol (users.manage, but no roles.manage/audit.read/documents.upload) cannot escalate.
    set_role(&server, &acme, dave_id, &carol, "admin")
        .await
        .assert_problem(403, "escalation_refused");
    set_role(&server, &acme, dave_id, &carol, "accounting")
        .await
        .assert_problem(403, "escalation_refused");
    set_role(&server, &acme, alice_id, &carol, "member")
        .await
        .assert_problem(403, "escalation_refused");
    post(
        &server,
        &acme,
        &format!("/api/v1/users/{alice_id}/deactivate"),
        &carol,
        json!({}),
    )
    .await
    .assert_problem(403, "escalation_refused");
    post(
        &server,
        &acme,
        "/api/v1/roles",
        &carol,
        json!({"name": "sneaky", "permissions": ["audit.read"]}),
    )
    .await
    .assert_problem(403, "forbidden");
    // What she holds she may pass on (member has nothing privileged: no approval needed).
    assert_eq!(
        put(
            &server,
            &acme,
            &format!("/api/v1/users/{dave_id}/sites"),
            &carol,
            json!({"sites": null})
        )
        .await
        .status,
        200
    );
    // Bad input names the field.
    let bad = set_role(&server, &acme, dave_id, &alice, "no such role").await;
    bad.assert_problem(422, "invalid_input");
    assert_eq!(bad.body["errors"][0]["field"], "role");
    let bad = post(
        &server,
        &acme,
        "/api/v1/roles",
        &alice,
        json!({"name": "r", "permissions": ["documents.read", "root"]}),
    )
    .await;
    assert_eq!(bad.body["errors"][0]["field"], "permissions[1]");

    // Turning four-eyes off needs four eyes; then a privileged grant applies at once.
    let off = put(
        &server,
        &acme,
        "/api/v1/approval-policy",
        &alice,
        json!({"action": "grant_privileged_role", "required": false}),
    )
    .await;
    assert_eq!(approve(&server, &acme, &off, &bob).await.status, 200);
    let direct = set_role(&server, &acme, dave_id, &alice, "admin").await;
    assert_eq!(
        (direct.status, &direct.body["role"]),
        (200, &json!("admin")),
        "{direct:?}"
    );

    // Another tenant's admin reaches none of acme's users, roles or approvals by id or name.
    let globex = host_of("globex");
    for (m, path, body) in [
        (
            Method::PUT,
            format!("/api/v1/users/{dave_id}/role"),
            json!({"role": "member"}),
        ),
        (
            Method::PUT,
            format!("/api/v1/users/{dave_id}/sites"),
            json!({"sites": null}),
        ),
        (
            Method::POST,
            format!("/api/v1/users/{dave_id}/deactivate"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/v1/approvals/{rid}/reject"),
            json!({}),
        ),
        (
            Method::DELETE,
            "/api/v1/roles/helpdesk".to_owned(),
            json!({}),
        ),
        (
            Method::PUT,
            "/api/v1/roles/helpdesk".to_owned(),
            json!({"permissions": []}),
        ),
    ] {
        server
            .request(m.clone(), &globex, &path, Some(&g_admin), &[], Some(body))
            .await
            .assert_problem(404, "not_found");
    }
    let their_approvals = server
        .get(&globex, "/api/v1/approvals", Some(&g_admin))
        .await;
    assert_eq!(their_approvals.body, json!([]));
    let their_users = server.get(&globex, "/api/v1/users", Some(&g_admin)).await;
    assert_eq!(their_users.body, json!([]));

    // Deactivation: the user's tokens stop working on the next request.
    assert_eq!(
        server.get(&acme, "/api/v1/me", Some(&carol)).await.status,
        200
    );
    let r = post(
        &server,
        &acme,
        &format!("/api/v1/users/{carol_id}/deactivate"),
        &alice,
        json!({}),
    )
    .await;
    assert_eq!((r.status, &r.body["active"]), (200, &json!(false)), "{r:?}");
    server
        .get(&acme, "/api/v1/me", Some(&carol))
        .await
        .assert_problem(401, "invalid_token");

    // The whole story is in the audit log.
    let events = server
        .get(&acme, "/api/v1/audit-events?limit=200", Some(&alice))
        .await;
    let types: Vec<&str> = events.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    for t in [
        "approval_requested",
        "approval_approved",
        "approval_rejected",
        "role_created",
        "role_granted",
        "role_revoked",
        "user_deactivated",
        "permission_denied",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let granted = events.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["event_type"] == "role_granted")
        .expect("role_granted")
        .clone();
    assert_eq!(
        granted["actor"], "bob@acme.example",
        "carried out as the approver's act"
    );
    env.cleanup().await;
}
