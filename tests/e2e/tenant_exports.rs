//! Self-service exports: a tenant admin with `data.export` asks for an export of their own
//! organisation (four-eyes by default), follows it, and fetches the signed archive through a
//! time-limited link that works on their own host only. Members, other tenants and other hosts
//! get nothing; every step is audited; the feature flag turns it off.

use reqwest::Method;
use serde_json::json;

use crate::archive::{assert_verified_download, export_dir, identity};
use crate::portal::{content, post, upload, user};
use crate::support::{Backend, TestEnv, host_of};

#[tokio::test]
async fn a_tenant_admin_exports_the_organisation_with_a_second_admins_approval() {
    let env = TestEnv::new(Backend::S3Kms).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (ann_id, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, amy) = user(&env, "acme", "amy@acme.example", "admin").await;
    let (_, bob) = user(&env, "acme", "bob@acme.example", "member").await;
    let (_, gus) = user(&env, "globex", "gus@globex.example", "admin").await;
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let up = upload(
        &server,
        &acme,
        &ann,
        &[("type", "invoice"), ("title", "One")],
        content(90_000, 3),
    )
    .await;
    assert_eq!(up.status, 201, "{up:?}");
    let dir = tempfile::tempdir().expect("dir");
    let (id_file, recipient) = identity(dir.path(), "officer.txt");
    let catalog = env.catalog().await;
    let exports_made = || async {
        let n: i64 = env
            .catalog()
            .await
            .query_one("select count(*) from tenant_exports", &[])
            .await
            .expect("count")
            .get(0);
        n
    };

    // Without data.export, and with bad input: refused, nothing recorded.
    post(
        &server,
        &acme,
        "/api/v1/exports",
        &bob,
        json!({"plaintext": true}),
    )
    .await
    .assert_problem(403, "forbidden");
    for bad in [
        json!({}),
        json!({"recipient": recipient, "plaintext": true}),
        json!({"recipient": "age1nope"}),
        json!({"recipient": recipient, "format": "zip"}),
    ] {
        let r = post(&server, &acme, "/api/v1/exports", &ann, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {r:?}");
    }
    assert_eq!(exports_made().await, 0);

    // Four-eyes by default: Ann asks, Ann cannot approve, Amy approves and the export starts.
    let asked = post(
        &server,
        &acme,
        "/api/v1/exports",
        &ann,
        json!({"recipient": recipient}),
    )
    .await;
    assert_eq!(asked.status, 202, "{asked:?}");
    assert_eq!(asked.body["approval"]["action"], "export_tenant_data");
    assert_eq!(exports_made().await, 0, "nothing runs before the approval");
    let approval = asked.body["approval"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let approve = format!("/api/v1/approvals/{approval}/approve");
    post(&server, &acme, &approve, &ann, json!({}))
        .await
        .assert_problem(403, "four_eyes");
    let approved = post(&server, &acme, &approve, &amy, json!({})).await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let outcome = approved.body["outcome"]
        .as_str()
        .expect("outcome")
        .to_owned();
    let id = outcome
        .strip_prefix("applied: export ")
        .expect("the outcome names the export")
        .to_owned();

    // The export is Ann's; Amy and Ann see it, other tenants do not.
    let listed = server.get(&acme, "/api/v1/exports", Some(&amy)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1), "{listed:?}");
    assert_eq!(listed.body[0]["id"], id.as_str());
    assert_eq!(listed.body[0]["requested_by"], format!("user:{ann_id}"));
    assert_eq!(listed.body[0]["encrypted"], true);
    let status = format!("/api/v1/exports/{id}");
    server
        .get(&globex, &status, Some(&gus))
        .await
        .assert_problem(404, "not_found");
    assert_eq!(server.get(&acme, &status, Some(&gus)).await.status, 401);
    assert_eq!(
        server
            .get(&globex, "/api/v1/exports", Some(&gus))
            .await
            .body,
        json!([])
    );
    server
        .get(&acme, &status, Some(&bob))
        .await
        .assert_problem(403, "forbidden");

    succeeded(&server, &acme, &status, &ann).await;

    // A link: anyone holding it downloads the archive, on acme's host only.
    let links = format!("/api/v1/exports/{id}/links");
    post(&server, &acme, &links, &ann, json!({"expires_in_s": 10}))
        .await
        .assert_problem(422, "invalid_input");
    let link = post(&server, &acme, &links, &ann, json!({})).await;
    assert_eq!(link.status, 201, "{link:?}");
    let url = link.body["url"].as_str().expect("url").to_owned();
    let path = url[url.find("/x/").expect("a /x/ link")..].to_owned();
    let (code, _, _) = server
        .send_raw(Method::GET, &globex, &path, None, &[], None)
        .await;
    assert_eq!(code, 404, "another tenant's host");
    let mut forged = path.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (code, _, _) = server
        .send_raw(Method::GET, &acme, &forged, None, &[], None)
        .await;
    assert_eq!(code, 404, "a changed link");
    let answer = server
        .send_raw(Method::GET, &acme, &path, None, &[], None)
        .await;
    let file = dir.path().join("acme.tar.age");
    assert_verified_download(&env, answer, &file, &id_file, "acme");

    // Audited in acme's own log: who asked, who approved, the link, each use of it.
    let events = server
        .get(&acme, "/api/v1/audit-events?limit=200", Some(&ann))
        .await;
    let trail: Vec<String> = events.body["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            let t = e["event_type"].as_str().unwrap_or("");
            t.starts_with("export_") || t.starts_with("approval_")
        })
        .map(|e| {
            format!(
                "{}:{}:{}",
                e["event_type"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            "approval_requested:success:",
            "approval_approved:success:",
            "export_requested:success:",
            "export_link_created:success:",
            "export_downloaded:failure:link_invalid",
            "export_downloaded:success:",
        ],
        "{events:?}"
    );

    // When the archive expires (the clock moves on: its expiry is set back), the link stops
    // working and no new link is made.
    catalog
        .execute(
            "update tenant_exports set expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .expect("expire");
    let (code, _, _) = server
        .send_raw(Method::GET, &acme, &path, None, &[], None)
        .await;
    assert_eq!(code, 410);
    let out = env.ok(&["tenant", "purge-due"]);
    assert!(out.contains("deleted 1 expired export(s)"), "{out}");
    post(&server, &acme, &links, &ann, json!({}))
        .await
        .assert_problem(410, "link_expired");
    assert_eq!(std::fs::read_dir(export_dir(&env)).expect("dir").count(), 0);

    // With the approval rule off, asking starts the export at once; plaintext must be said.
    let policy = server
        .request(
            Method::PUT,
            &acme,
            "/api/v1/approval-policy",
            Some(&ann),
            &[],
            Some(json!({"action": "export_tenant_data", "required": false})),
        )
        .await;
    assert_eq!(policy.status, 202, "{policy:?}");
    let off = policy.body["approval"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let decided = post(
        &server,
        &acme,
        &format!("/api/v1/approvals/{off}/approve"),
        &amy,
        json!({}),
    )
    .await;
    assert_eq!(decided.status, 200, "{decided:?}");
    let direct = post(
        &server,
        &acme,
        "/api/v1/exports",
        &amy,
        json!({"plaintext": true}),
    )
    .await;
    assert_eq!(direct.status, 201, "{direct:?}");
    assert_eq!(direct.body["encrypted"], false);
    assert_eq!(direct.body["status"], "running");
    let second = direct.body["id"].as_str().expect("id").to_owned();
    let second_status = format!("/api/v1/exports/{second}");
    succeeded(&server, &acme, &second_status, &ann).await;

    // A leaked link is ended by discarding the export: its archive goes at once. Only acme's
    // admins can.
    let link = post(
        &server,
        &acme,
        &format!("{second_status}/links"),
        &amy,
        json!({"expires_in_s": 600}),
    )
    .await;
    assert_eq!(link.status, 201, "{link:?}");
    let url = link.body["url"].as_str().expect("url").to_owned();
    let second_path = url[url.find("/x/").expect("a /x/ link")..].to_owned();
    let refused = server
        .request(
            Method::DELETE,
            &globex,
            &second_status,
            Some(&gus),
            &[],
            None,
        )
        .await;
    refused.assert_problem(404, "not_found");
    let discarded = server
        .request(Method::DELETE, &acme, &second_status, Some(&amy), &[], None)
        .await;
    assert_eq!(discarded.status, 200, "{discarded:?}");
    assert_eq!(discarded.body["status"], "expired");
    let (code, _, _) = server
        .send_raw(Method::GET, &acme, &second_path, None, &[], None)
        .await;
    assert_eq!(code, 410);
    assert_eq!(std::fs::read_dir(export_dir(&env)).expect("dir").count(), 0);

    // The feature flag turns the whole thing off.
    env.ok(&["tenant", "feature", "set", "acme", "data_exports", "off"]);
    let gone = crate::support::within(std::time::Duration::from_secs(10), || {
        let (server, acme, ann) = (&server, &acme, &ann);
        async move { server.get(acme, "/api/v1/exports", Some(ann)).await.status == 404 }
    })
    .await;
    assert!(gone.is_some(), "the flag did not turn exports off");
    server
        .get(&acme, "/api/v1/exports", Some(&ann))
        .await
        .assert_problem(404, "feature_disabled");
    env.cleanup().await;
}

/// Waits (at most a minute) until the export at `status` has succeeded; fails if it fails.
async fn succeeded(server: &crate::support::Server, host: &str, status: &str, token: &str) {
    let done = crate::support::within(std::time::Duration::from_secs(60), || async move {
        let s = server.get(host, status, Some(token)).await;
        assert_ne!(s.body["status"], "failed", "{s:?}");
        s.body["status"] == "succeeded"
    })
    .await;
    assert!(done.is_some(), "the export at {status} did not finish");
}
