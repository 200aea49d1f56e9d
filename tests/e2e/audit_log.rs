//! The tamper-evident audit log: append-only for the tenant role, hash-chained, verified by
//! `portico audit verify` against itself and the control plane's anchors, exported as JSON
//! lines, and listed through the API.

use crate::portal::add_site;
use crate::support::{Backend, TestEnv, host_of};

#[tokio::test]
async fn the_audit_log_is_append_only_chained_anchored_and_verifiable() {
    the_audit_log_is_append_only_chained_anchored_and_verifiable_on(
        TestEnv::new(Backend::FileLocal).await,
    )
    .await;
}

/// The same on the pooled tier: tenants in one shared database, behind role switching.
#[tokio::test]
async fn the_audit_log_is_append_only_chained_anchored_and_verifiable_pooled() {
    the_audit_log_is_append_only_chained_anchored_and_verifiable_on(
        TestEnv::pooled(Backend::FileLocal).await,
    )
    .await;
}

async fn the_audit_log_is_append_only_chained_anchored_and_verifiable_on(env: TestEnv) {
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    env.ok(&["tenant", "create", "globex"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    for i in 0..5 {
        add_site(&server, &acme, &admin, &format!("s{i}")).await;
    }
    let p = env.platform().await;
    let tenant_db = p.connect_as_tenant("acme").await.expect("db");
    // The tenant's own role: insert and read only.
    let audit = env.audit_schema("acme").await;
    for stmt in [
        "update portico_audit.audit_events set actor = 'mallory'",
        "delete from portico_audit.audit_events",
        "truncate portico_audit.audit_events",
        "alter table portico_audit.audit_events disable trigger audit_events_no_update",
        "drop trigger audit_events_chain on portico_audit.audit_events",
        "create or replace function portico_audit.audit_events_chain() returns trigger language plpgsql as $$ begin return new; end $$",
        "drop table portico_audit.audit_events",
        "drop schema portico_audit cascade",
        "alter schema portico_audit rename to gone",
        "create table portico_audit.decoy (x int)",
        "create trigger t before insert on portico_audit.audit_events for each row execute function portico_audit.audit_events_append_only()",
    ] {
        // The same statements against this tenant's audit schema, wherever it lives.
        let stmt = stmt.replace("portico_audit", &audit);
        let stmt = stmt.as_str();
        let e = tenant_db.batch_execute(stmt).await.expect_err(stmt);
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(
            msg.contains("permission denied")
                || msg.contains("must be owner")
                || msg.contains("append-only"),
            "{stmt}: {msg}"
        );
    }
    // token_created (by the CLI) and five site_created.
    let ok = env.ok(&["audit", "verify", "acme"]);
    assert!(ok.contains("is intact: 6 events"), "{ok}");
    let anchored = env.ok(&["audit", "anchor", "acme"]);
    assert!(anchored.contains("at event 6"), "{anchored}");

    // Export: JSON lines, oldest first, each with its chain hashes (the export is audited too).
    let out = env.ok(&["audit", "export", "acme"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0]["event_type"], "token_created");
    assert_eq!(lines[6]["event_type"], "export_requested");
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    let since = env.ok(&["audit", "export", "acme", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(since, "");
    env.run(&["audit", "export", "acme", "--since", "yesterday"])
        .assert_error("RFC 3339");

    // The API lists it with filters and a cursor; another tenant sees only its own log.
    let page = server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=site_created&limit=3",
            Some(&admin),
        )
        .await;
    assert_eq!(page.body["items"].as_array().expect("items").len(), 3);
    assert_eq!(page.body["items"][0]["actor"], "token:admin");
    assert!(page.body["items"][0]["request_id"].is_string());
    assert_eq!(page.body["items"][0]["client_ip"], "127.0.0.1");
    let next = page.body["next_cursor"].as_str().expect("cursor");
    let rest = server
        .get(
            &acme,
            &format!("/api/v1/audit-events?event_type=site_created&cursor={next}"),
            Some(&admin),
        )
        .await;
    assert_eq!(rest.body["items"].as_array().expect("items").len(), 2);
    server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=nonsense",
            Some(&admin),
        )
        .await
        .assert_problem(422, "invalid_input");
    let g_admin = env.tenant_token("globex", "admin", "admin");
    let theirs = server
        .get(&host_of("globex"), "/api/v1/audit-events", Some(&g_admin))
        .await;
    let theirs = theirs.body["items"].as_array().expect("items");
    // Only globex's own token creation; nothing of acme's.
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["event_type"], "token_created");

    // An edit made as superuser (triggers bypassed) is found, with its position.
    let db_name = row["placement"]["database"].as_str().expect("database");
    assert_eq!(row["placement"]["schema"].is_string(), env.pooled, "{row}");
    let su = crate::support::connect(&crate::support::admin_url(db_name)).await;
    su.batch_execute(&format!(
        "set session_replication_role = replica; set search_path = {audit}"
    ))
    .await
    .expect("superuser session");
    // The actor is stored as a reference to its committed value (`audit_values`).
    let stored: String = su
        .query_one("select actor from audit_events where seq = 3", &[])
        .await
        .expect("stored actor")
        .get(0);
    assert!(stored.starts_with("pv:"), "{stored}");
    su.batch_execute("update audit_events set actor = 'mallory' where seq = 3")
        .await
        .expect("superuser edit");
    let r = env.run(&["audit", "verify", "acme"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("BROKEN at event 3"), "{}", r.stdout);
    su.execute(
        "update audit_events set actor = $1 where seq = 3",
        &[&stored],
    )
    .await
    .expect("undo");
    assert!(env.ok(&["audit", "verify", "acme"]).contains("intact"));
    // So is changing the value it refers to.
    su.execute(
        "update audit_values set value = 'mallory' where ref = $1",
        &[&stored],
    )
    .await
    .expect("superuser edit of the value");
    let r = env.run(&["audit", "verify", "acme"]);
    assert!(r.stdout.contains("BROKEN at event 3"), "{}", r.stdout);
    assert!(r.stdout.contains("was changed"), "{}", r.stdout);
    su.execute(
        "update audit_values set value = 'token:admin' where ref = $1",
        &[&stored],
    )
    .await
    .expect("undo");
    assert!(env.ok(&["audit", "verify", "acme"]).contains("intact"));
    // Deleting an event breaks the link after it.
    su.batch_execute("delete from audit_events where seq = 2")
        .await
        .expect("delete");
    let r = env.run(&["audit", "verify", "acme"]);
    assert!(r.stdout.contains("BROKEN at event 3"), "{}", r.stdout);

    // Rewriting the whole chain consistently (drop everything, record new events through the
    // same trigger) passes the chain check but not the anchor.
    su.batch_execute("delete from audit_events")
        .await
        .expect("wipe");
    for i in 0..6 {
        add_site(&server, &acme, &admin, &format!("r{i}")).await;
    }
    let r = env.run(&["audit", "verify", "acme", "--json"]);
    assert_eq!(r.code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    // `portico serve` anchors every tenant when it starts (and hourly), so the first broken
    // anchor is that one or the one `audit anchor` made at event 6.
    let at = report["broken"][0].as_i64().expect("seq");
    assert!((1..=6).contains(&at), "{report}");
    assert!(
        report["broken"][1]
            .as_str()
            .expect("problem")
            .contains("anchored"),
        "{report}"
    );
    env.cleanup().await;
}
