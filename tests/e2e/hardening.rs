//! Fixes of the security review (issue 11): each test here failed before its fix.

use reqwest::Method;
use serde_json::json;

use crate::portal::{
    add_site, add_sites, approval_id, approve, content, decide, post, set_role, upload, user,
};
use crate::support::{Backend, TestEnv, host_of};

/// A site-limited manager cannot mint an unlimited (or other-site) user by inviting one:
/// invitations carry sites, default to the inviter's own, and anything wider is refused and
/// audited. The accepted user reads only the sites it was invited into.
#[tokio::test]
async fn invitations_carry_sites_and_never_widen_a_site_limited_inviter() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    add_sites(&server, &acme, &admin, &["berlin", "paris"]).await;
    let paris_doc = upload(
        &server,
        &acme,
        &admin,
        &[("type", "invoice"), ("title", "p"), ("site", "paris")],
        content(64, 1),
    )
    .await;
    assert_eq!(paris_doc.status, 201, "{paris_doc:?}");
    let berliner = env.json(&[
        "tenant",
        "token",
        "create",
        "acme",
        "--name",
        "berlin-admin",
        "--role",
        "admin",
        "--site",
        "berlin",
        "--json",
    ])["token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Wider than the inviter's sites: refused, audited, nothing created.
    for sites in [
        json!(["paris"]),
        json!(["berlin", "paris"]),
        json!(["berlin", "atlantis"]),
    ] {
        let body = json!({"email": "eve@acme.example", "role": "member", "sites": sites});
        post(&server, &acme, "/api/v1/users/invitations", &berliner, body)
            .await
            .assert_problem(403, "escalation_refused");
    }
    // Default: the inviter's own sites.
    let inv = post(
        &server,
        &acme,
        "/api/v1/users/invitations",
        &berliner,
        json!({"email": "bea@acme.example", "role": "member"}),
    )
    .await;
    assert_eq!(inv.status, 201, "{inv:?}");
    assert_eq!(inv.body["sites"], json!(["berlin"]));
    // Unknown sites are bad input, from anyone.
    post(
        &server,
        &acme,
        "/api/v1/users/invitations",
        &admin,
        json!({"email": "x@acme.example", "role": "member", "sites": ["atlantis"]}),
    )
    .await
    .assert_problem(422, "invalid_input");

    // The accepted user is limited to berlin: paris documents are invisible to her.
    let url = inv.body["url"].as_str().expect("url");
    let path = url.trim_start_matches(&format!("https://{acme}"));
    let mut b = crate::idp::Browser::new(&server);
    let page = b.get(&acme, path).await;
    let csrf = page.field("csrf").expect("csrf");
    let done = b
        .post(
            &acme,
            path,
            &[
                ("csrf", &csrf),
                ("password", "correct horse battery staple"),
            ],
        )
        .await;
    assert_eq!(done.status, 303, "{done:?}");
    let me = b.whoami(&acme).await.expect("signed in");
    assert_eq!(me["caller"]["sites"], json!(["berlin"]), "{me}");
    let paris_id = paris_doc.body["id"].as_str().expect("id");
    let seen = b.get(&acme, &format!("/api/v1/documents/{paris_id}")).await;
    assert_eq!(seen.status, 404, "{seen:?}");

    // Nor through an SSO connection, whose users would not be limited to any site.
    post(
        &server,
        &acme,
        "/api/v1/sso/connections",
        &berliner,
        json!({"kind": "oidc", "name": "wide", "issuer": "https://idp.example", "client_id": "c", "client_secret": "s"}),
    )
    .await
    .assert_problem(403, "forbidden");

    // Every refusal is in the audit log.
    let events = server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=permission_denied&limit=50",
            Some(&admin),
        )
        .await;
    let site_refusals = events.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["reason"] == "site_scope")
        .count();
    assert_eq!(site_refusals, 4, "{}", events.body);
    env.cleanup().await;
}

/// Four-eyes means two people: service tokens (which belong to no person) cannot approve, and
/// a request whose requester lost the rights it needed (or was deactivated) cannot be approved.
#[tokio::test]
async fn approvals_need_a_second_person_who_still_could() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let svc1 = env.tenant_token("acme", "svc-1", "admin");
    let svc2 = env.tenant_token("acme", "svc-2", "admin");
    let (alice_id, alice) = user(&env, "acme", "alice@acme.example", "admin").await;
    let (_, bob) = user(&env, "acme", "bob@acme.example", "admin").await;
    let (carol_id, _) = user(&env, "acme", "carol@acme.example", "member").await;
    let server = env.serve(&[]);
    let acme = host_of("acme");

    // One operator's two service tokens: the second cannot approve the first's request.
    let pending = set_role(&server, &acme, carol_id, &svc1, "admin").await;
    assert_eq!(pending.status, 202, "{pending:?}");
    let id = approval_id(&pending);
    decide(&server, &acme, &id, "approve", &svc2)
        .await
        .assert_problem(403, "four_eyes");
    // A person can.
    assert_eq!(approve(&server, &acme, &pending, &alice).await.status, 200);

    // Alice asks, then is demoted: her request no longer stands.
    let (dave_id, _) = user(&env, "acme", "dave@acme.example", "member").await;
    let pending = set_role(&server, &acme, dave_id, &alice, "admin").await;
    assert_eq!(pending.status, 202, "{pending:?}");
    let r = server
        .request(
            Method::PUT,
            &acme,
            "/api/v1/approval-policy",
            Some(&bob),
            &[],
            Some(json!({"action": "grant_privileged_role", "required": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let demote = set_role(&server, &acme, alice_id, &bob, "member").await;
    assert_eq!(demote.status, 200, "{demote:?}");
    approve(&server, &acme, &pending, &bob)
        .await
        .assert_problem(409, "requester_lost_rights");
    let me = server.get(&acme, "/api/v1/me", Some(&bob)).await;
    assert_eq!(me.status, 200);
    let dave = server.get(&acme, "/api/v1/users", Some(&bob)).await;
    let dave_role = dave
        .body
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["email"] == "dave@acme.example")
        .expect("dave")["role"]
        .clone();
    assert_eq!(dave_role, "member", "nothing was applied");

    // Audit gaps: turning a rule on, and refusals of the admin-only and site checks.
    let (_, member) = user(&env, "acme", "mo@acme.example", "member").await;
    server
        .get(&acme, "/api/v1/sso/connections", Some(&member))
        .await
        .assert_problem(403, "forbidden");
    let events = server
        .get(&acme, "/api/v1/audit-events?limit=200", Some(&bob))
        .await;
    let items = events.body["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|e| e["event_type"] == "approval_policy_changed"
                && e["target"] == "grant_privileged_role"
                && e["details"]["required"] == true),
        "{items:?}"
    );
    assert!(
        items.iter().any(|e| e["event_type"] == "permission_denied"
            && e["actor"] == "mo@acme.example"
            && e["reason"] == "sso.manage"),
        "{items:?}"
    );
    assert!(
        items
            .iter()
            .any(|e| e["event_type"] == "permission_denied"
                && e["reason"] == "service_token_approval"),
        "{items:?}"
    );
    env.cleanup().await;
}

/// The tenant role owns its database, so it can create schemas and drop `public`. Run *as
/// the tenant role*: a shadow `audit_events` first on the search path (schema, role and
/// database settings all pointing at it) changes nothing the runtime or `audit verify` reads;
/// dropping `public` leaves the log; and changes only an admin could make are reported by
/// `audit verify` as an unprotected log.
#[tokio::test]
async fn the_tenant_role_cannot_shadow_repoint_or_drop_the_audit_log() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    assert_eq!(add_site(&server, &acme, &admin, "s1").await.status, 201);

    let p = env.platform().await;
    let tenant_db = p.connect_as_tenant("acme").await.expect("tenant db");
    let role: String = tenant_db
        .query_one("select current_user::text", &[])
        .await
        .expect("role")
        .get(0);
    // A shadow log with a rewritten history, first on every search path the role controls.
    tenant_db
        .batch_execute(&format!(
            "create schema {role};
             create table {role}.audit_events (like portico_audit.audit_events including all);
             insert into {role}.audit_events select * from portico_audit.audit_events;
             update {role}.audit_events set actor = 'mallory';
             alter role {role} set search_path = {role}, public;
             do $$ begin execute format('alter database %I set search_path = {role}, public', current_database()); end $$;"
        ))
        .await
        .expect("the tenant role may do all this in its own database");
    // New connections of the runtime (a restart empties the pools) and of the CLI.
    drop(server);
    let server = env.serve(&[]);
    assert_eq!(add_site(&server, &acme, &admin, "s2").await.status, 201);
    let listed = server
        .get(&acme, "/api/v1/audit-events?limit=50", Some(&admin))
        .await;
    let items = listed.body["items"].as_array().expect("items");
    assert!(items.iter().all(|e| e["actor"] != "mallory"), "{items:?}");
    assert!(
        items.iter().any(|e| e["target"] == "s2"),
        "the new event is in the real log"
    );
    let shadow_rows: i64 = tenant_db
        .query_one(
            &format!("select count(*) from {role}.audit_events where target = 's2'"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(shadow_rows, 0, "nothing was written to the shadow table");
    let ok = env.ok(&["audit", "verify", "acme"]);
    assert!(ok.contains("is intact: 3 events"), "{ok}");

    // Dropping public (the role owns it) takes the tenant's own tables, not the log.
    tenant_db
        .batch_execute("drop schema public cascade")
        .await
        .expect("the owner of public may drop it");
    let ok = env.ok(&["audit", "verify", "acme"]);
    assert!(ok.contains("is intact: 3 events"), "{ok}");

    // What only an admin could do is detected: a disabled trigger, a granted update.
    let db_name = format!("t_{}", crate::support::tenant_id(&row).simple());
    let su = crate::support::connect(&crate::support::admin_url(&db_name)).await;
    for (break_it, mend) in [
        (
            "alter table portico_audit.audit_events disable trigger audit_events_no_update",
            "alter table portico_audit.audit_events enable trigger audit_events_no_update",
        ),
        (
            "grant update on portico_audit.audit_events to pg_database_owner",
            "revoke update on portico_audit.audit_events from pg_database_owner",
        ),
        (
            "alter function portico_audit.audit_events_chain() reset search_path",
            "alter function portico_audit.audit_events_chain() set search_path = pg_catalog, pg_temp",
        ),
    ] {
        su.batch_execute(break_it).await.expect(break_it);
        let r = env.run(&["audit", "verify", "acme"]);
        assert_eq!(r.code, Some(1), "{break_it}: {r:?}");
        assert!(r.stdout.contains("UNPROTECTED"), "{break_it}: {}", r.stdout);
        su.batch_execute(mend).await.expect(mend);
    }
    assert!(env.ok(&["audit", "verify", "acme"]).contains("intact"));
    drop(server);
    env.cleanup().await;
}

/// Audit rows written so far in `slug`'s log, read as the tenant role.
async fn audit_rows(env: &TestEnv, slug: &str) -> i64 {
    let db = env.tenant_db(slug).await;
    db.query_one("select count(*) from portico_audit.audit_events", &[])
        .await
        .expect("count")
        .get(0)
}

/// `n` requests for invalid document links from one address, 16 at a time; their statuses.
async fn flood(server: &crate::support::Server, host: &str, n: usize) -> Vec<u16> {
    use futures_util::StreamExt;
    futures_util::stream::iter((0..n).map(|i| async move {
        server
            .get(host, &format!("/d/not-a-link-{i}"), None)
            .await
            .status
    }))
    .buffer_unordered(16)
    .collect()
    .await
}

/// 2,000 invalid document links from one address: past the first few per reason and minute,
/// refusals are counted, not written (at most 100 new rows; before the fix, one row each). With
/// the limits off, the log still accounts for every refusal once the server has stopped: rows
/// written in full plus the counts of the `anonymous_failures` summaries make 2,000. With the
/// default limits, the address is refused with 429 long before that.
#[tokio::test]
async fn a_flood_of_bad_links_leaves_a_bounded_audit_trail() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let acme = host_of("acme");
    const FLOOD: usize = 2_000;
    // Limits off: aggregation alone bounds the rows.
    let unlimited = [
        ("PORTICO_RATE_LIMIT_PER_IP", "0"),
        ("PORTICO_RATE_LIMIT_PER_TENANT", "0"),
        ("PORTICO_ANONYMOUS_LIMIT_PER_IP", "0"),
        ("PORTICO_ANONYMOUS_LIMIT_PER_TENANT", "0"),
    ];
    let server = env.serve(&unlimited);
    let before = audit_rows(&env, "acme").await;
    let statuses = flood(&server, &acme, FLOOD).await;
    assert!(
        statuses.iter().all(|s| *s == 404),
        "every bad link is refused"
    );
    let added = audit_rows(&env, "acme").await - before;
    assert!(added <= 100, "{added} audit rows for {FLOOD} bad links");
    // A graceful stop writes what was only counted.
    server.terminate();
    assert!(server.wait().success());
    let db = env.tenant_db("acme").await;
    let row = db
        .query_one(
            "select count(*) filter (where event_type = 'document_link_used'),
                    coalesce(sum((details->>'count')::bigint)
                             filter (where event_type = 'anonymous_failures'), 0)::bigint,
                    count(*) filter (where event_type = 'anonymous_failures')
               from portico_audit.audit_events",
            &[],
        )
        .await
        .expect("accounting");
    let (full, counted, summaries) = (
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
    );
    assert_eq!(
        full + counted,
        FLOOD as i64,
        "{full} in full + {counted} counted"
    );
    assert!(
        summaries >= 1 && full <= 100,
        "{full} full rows, {summaries} summaries"
    );
    let summary = db
        .query_one(
            "select e.client_ip::text, t.value, r.value from portico_audit.audit_events e
               join portico_audit.audit_values t on t.ref = e.target
               join portico_audit.audit_values r on r.ref = e.reason
              where e.event_type = 'anonymous_failures' limit 1",
            &[],
        )
        .await
        .expect("summary");
    assert_eq!(
        summary.get::<_, Option<String>>(0).as_deref(),
        Some("127.0.0.1/32")
    );
    assert_eq!(
        summary.get::<_, Option<String>>(1).as_deref(),
        Some("document_link_used")
    );
    assert_eq!(
        summary.get::<_, Option<String>>(2).as_deref(),
        Some("link_invalid")
    );
    assert_eq!(env.run(&["audit", "verify", "acme"]).code, Some(0));

    // Default anonymous limits: the address is refused before any work. (The per-tenant
    // request limit stays off: how much of a 2,000-request flood fits in its one-second
    // window depends on the machine's speed, and it answers first.)
    let server = env.serve(&[
        ("PORTICO_RATE_LIMIT_PER_IP", "0"),
        ("PORTICO_RATE_LIMIT_PER_TENANT", "0"),
    ]);
    let before = audit_rows(&env, "acme").await;
    let statuses = flood(&server, &acme, FLOOD).await;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= FLOOD / 2,
        "{limited} of {FLOOD} refused with 429"
    );
    let r = server.get(&acme, "/d/one-more", None).await;
    r.assert_problem(429, "anonymous_rate_limited");
    assert!(r.header("retry-after").is_some());
    let added = audit_rows(&env, "acme").await - before;
    assert!(added <= 100, "{added} audit rows");
    drop(server);
    env.cleanup().await;
}

/// A 50-way parallel flood of sign-ins (each one an argon2 hash) does not hold the tenant's
/// pool: argon2 runs behind a semaphore sized to the cores and never while a pooled
/// connection is held, so the tenant keeps answering its API (before the fix, each sign-in held
/// one of the tenant's five connections through its hash, and the API answered 503).
#[tokio::test]
async fn a_sign_in_flood_does_not_starve_the_tenant() {
    use crate::idp::Browser;
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[
        ("PORTICO_RATE_LIMIT_PER_IP", "0"),
        ("PORTICO_ANONYMOUS_LIMIT_PER_IP", "0"),
        ("PORTICO_ANONYMOUS_LIMIT_PER_TENANT", "0"),
    ]);
    let acme = host_of("acme");
    // Fifty browsers, each with its own sign-in form (flow cookie and CSRF token), so every
    // post reaches the password check (unknown accounts are hashed too, against timing).
    let mut browsers = Vec::new();
    for _ in 0..50 {
        let mut b = Browser::new(&server);
        let csrf = b.get(&acme, "/login").await.field("csrf").expect("csrf");
        browsers.push((b, csrf));
    }
    let posts =
        futures_util::future::join_all(browsers.iter_mut().enumerate().map(|(i, (b, csrf))| {
            let acme = acme.clone();
            async move {
                let email = format!("nobody{i}@acme.example");
                b.post(
                    &acme,
                    "/login",
                    &[
                        ("csrf", csrf.as_str()),
                        ("email", &email),
                        ("password", "wrong password"),
                    ],
                )
                .await
                .status
            }
        }));
    let probes = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                server
                    .get(&acme, "/api/v1/tenant", Some(&admin))
                    .await
                    .status,
            );
        }
        statuses
    };
    let (posted, probed) = tokio::join!(posts, probes);
    assert!(
        posted.iter().all(|s| *s == 400),
        "every sign-in failed: {posted:?}"
    );
    assert!(
        probed.iter().all(|s| *s == 200),
        "the tenant kept answering: {probed:?}"
    );
    drop(server);
    env.cleanup().await;
}

/// NUL characters never reach PostgreSQL (found by Schemathesis: two answers were 500): in a
/// JSON field, a query parameter, a form field, a path segment, on the tenant and operator
/// APIs alike, the answer is 422 naming where it was, and nothing is created.
#[tokio::test]
async fn nul_characters_are_refused_at_the_edge_naming_the_field() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let operator = env.operator_token("ops");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let field = |a: &crate::support::Answer| {
        a.body["errors"][0]["field"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    let r = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &admin,
        json!({"title": "a\u{0}b", "description": "x"}),
    )
    .await;
    r.assert_problem(422, "invalid_input");
    assert_eq!(field(&r), "title");
    let r = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &admin,
        json!({"title": "t", "description": "d", "attachments": ["\u{0}"]}),
    )
    .await;
    r.assert_problem(422, "invalid_input");
    assert_eq!(field(&r), "attachments[0]");
    let r = server
        .get(&acme, "/api/v1/approvals?status=%00pending", Some(&admin))
        .await;
    r.assert_problem(422, "invalid_input");
    assert_eq!(field(&r), "status");
    let r = server
        .get(&acme, "/api/v1/sso/connections/a%00b", Some(&admin))
        .await;
    r.assert_problem(422, "invalid_input");
    assert_eq!(field(&r), "path");
    // A form: the sign-in form's e-mail.
    let r = server
        .send_raw(
            Method::POST,
            &acme,
            "/login",
            None,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some("csrf=x&email=a%00%40acme.example&password=p".into()),
        )
        .await;
    assert_eq!(r.0, 422, "{r:?}");
    // The operator API is behind the same edge.
    let r = server
        .request(
            Method::POST,
            crate::support::OPERATOR_HOST,
            "/operator/v1/tenants",
            Some(&operator),
            &[],
            Some(json!({"slug": "glo\u{0}bex"})),
        )
        .await;
    r.assert_problem(422, "invalid_input");
    assert_eq!(field(&r), "slug");
    let tickets = server.get(&acme, "/api/v1/tickets", Some(&admin)).await;
    assert_eq!(tickets.body["items"], json!([]), "nothing was created");
    drop(server);
    env.cleanup().await;
}
