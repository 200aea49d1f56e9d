//! Retention and legal hold on documents, on both tiers: a document is deleted with every
//! version, link, attachment and object, but not before its retention date and not while it
//! is held; a held document cannot be replaced; lifting a hold takes a second person; another
//! tenant can do none of it; everything is in the audit log, which still verifies.

use portico_core::storage::ObjectKey;
use reqwest::Method;
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::portal::{approve, content, decide, new_version, post, upload, user};
use crate::support::{Backend, TestEnv, host_of, tenant_id};

#[tokio::test]
async fn retention_and_legal_holds_guard_document_deletion() {
    retention_and_legal_holds_on(TestEnv::new(Backend::S3Kms).await).await;
}

#[tokio::test]
async fn retention_and_legal_holds_guard_document_deletion_pooled() {
    retention_and_legal_holds_on(TestEnv::pooled(Backend::FileLocal).await).await;
}

async fn retention_and_legal_holds_on(env: TestEnv) {
    let acme_row = env.json(&["tenant", "create", "acme", "--json"]);
    env.ok(&["tenant", "create", "globex"]);
    // Users, not service tokens: only a person decides on an approval.
    let (_, admin) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, second) = user(&env, "acme", "ben@acme.example", "admin").await;
    let member = env.tenant_token("acme", "member", "member");
    let g_admin = env.tenant_token("globex", "admin", "admin");
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    // Days away from today, so no run straddles a date boundary.
    let day = |d: i64| {
        (OffsetDateTime::now_utc() + Duration::days(d))
            .date()
            .to_string()
    };
    let (future, past) = (day(30), day(-30));
    let kept = upload(
        &server,
        &acme,
        &admin,
        &[
            ("type", "contract"),
            ("title", "Kept"),
            ("retention_until", &future),
        ],
        content(1000, 1),
    )
    .await;
    assert_eq!(kept.status, 201, "{kept:?}");
    let kept = kept.body["id"].as_str().expect("id").to_owned();
    let free = upload(
        &server,
        &acme,
        &admin,
        &[
            ("type", "invoice"),
            ("title", "Free"),
            ("retention_until", &past),
        ],
        content(2000, 2),
    )
    .await;
    assert_eq!(free.status, 201, "{free:?}");
    let free_v1 = free.body["current_version"]["id"]
        .as_str()
        .expect("version")
        .to_owned();
    let free = free.body["id"].as_str().expect("id").to_owned();
    let v2 = new_version(&server, &acme, &admin, &free, content(3000, 3)).await;
    assert_eq!(v2.status, 201, "{v2:?}");
    let free_v2 = v2.body["id"].as_str().expect("version").to_owned();
    let link = post(
        &server,
        &acme,
        &format!("/api/v1/documents/{free}/links"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(link.status, 201, "{link:?}");
    let link_path = link.body["url"]
        .as_str()
        .and_then(|u| u.split_once("/d/"))
        .map(|(_, t)| format!("/d/{t}"))
        .expect("link path");
    let doc_path = format!("/api/v1/documents/{free}");
    let hold_path = format!("/api/v1/documents/{free}/legal-hold");
    let request =
        |m: Method, host: &str, path: &str, token: &str, body: Option<serde_json::Value>| {
            let (server, host, path, token) =
                (&server, host.to_owned(), path.to_owned(), token.to_owned());
            async move {
                server
                    .request(m, &host, &path, Some(&token), &[], body)
                    .await
            }
        };

    // Another tenant reaches none of it: not by id on its own host, not with its token here.
    for (m, path, body) in [
        (Method::DELETE, &doc_path, None),
        (Method::PUT, &hold_path, Some(json!({"reason": "theirs"}))),
        (Method::DELETE, &hold_path, None),
    ] {
        request(m.clone(), &globex, path, &g_admin, body.clone())
            .await
            .assert_problem(404, "not_found");
        request(m, &acme, path, &g_admin, body)
            .await
            .assert_problem(401, "invalid_token");
    }
    // A member may read but not delete or hold.
    request(Method::DELETE, &acme, &doc_path, &member, None)
        .await
        .assert_problem(403, "forbidden");

    // Retention: refused until the date.
    let r = request(
        Method::DELETE,
        &acme,
        &format!("/api/v1/documents/{kept}"),
        &admin,
        None,
    )
    .await;
    r.assert_problem(409, "retention_active");

    // A legal hold blocks deletion and new versions.
    let bad = request(
        Method::PUT,
        &acme,
        &hold_path,
        &admin,
        Some(json!({"reason": ""})),
    )
    .await;
    bad.assert_problem(422, "invalid_input");
    let held = request(
        Method::PUT,
        &acme,
        &hold_path,
        &admin,
        Some(json!({"reason": "Litigation 2026-17"})),
    )
    .await;
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.body["legal_hold"]["reason"], "Litigation 2026-17");
    request(Method::DELETE, &acme, &doc_path, &admin, None)
        .await
        .assert_problem(409, "legal_hold_active");
    new_version(&server, &acme, &admin, &free, content(500, 4))
        .await
        .assert_problem(409, "legal_hold_active");

    // Lifting it takes a second person with documents.manage.
    let pending = request(Method::DELETE, &acme, &hold_path, &admin, None).await;
    let approval = crate::portal::approval_id(&pending);
    decide(&server, &acme, &approval, "approve", &admin)
        .await
        .assert_problem(403, "four_eyes");
    let done = approve(&server, &acme, &pending, &second).await;
    assert_eq!(done.status, 200, "{done:?}");
    let shown = request(Method::GET, &acme, &doc_path, &admin, None).await;
    assert!(shown.body.get("legal_hold").is_none(), "{shown:?}");

    // Deleted: rows, link, and every version's object.
    let gone = request(Method::DELETE, &acme, &doc_path, &admin, None).await;
    assert_eq!(gone.status, 204, "{gone:?}");
    request(Method::GET, &acme, &doc_path, &admin, None)
        .await
        .assert_problem(404, "not_found");
    let l = server.get(&acme, &link_path, None).await;
    assert_ne!(l.status, 200, "{l:?}");
    let store = env.store().await;
    let tenant = tenant_id(&acme_row);
    for v in [&free_v1, &free_v2] {
        let key = ObjectKey::tenant_object(tenant, &format!("documents/{free}/{v}")).expect("key");
        assert!(
            store.get(&key).await.expect("store").is_none(),
            "object of version {v} left behind"
        );
    }
    // The retained document and its object are untouched.
    assert_eq!(
        request(
            Method::GET,
            &acme,
            &format!("/api/v1/documents/{kept}"),
            &admin,
            None
        )
        .await
        .status,
        200
    );
    let db = env.tenant_db("acme").await;
    let row = db
        .query_one(
            "select count(*) filter (where event_type = 'legal_hold_set'),
                    count(*) filter (where event_type = 'legal_hold_cleared'),
                    count(*) filter (where event_type = 'document_deleted'),
                    (select count(*) from object_deletions)
               from audit_events",
            &[],
        )
        .await
        .expect("audit");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        (1, 1, 1, 0)
    );
    drop(db);
    let v = env.json(&["audit", "verify", "acme", "--json"]);
    assert_eq!(
        (&v["intact"], &v["protection"]),
        (&json!(true), &json!([])),
        "{v}"
    );
    drop(server);
    env.cleanup().await;
}
