//! Documents through the API against real S3 (SeaweedFS), KMS (moto) and clamd: encrypted
//! storage, filters and cursors, ranges, versions, links, scanning, tampering, memory.

use aws_lc_rs::digest::{SHA256, digest};
use portico_core::keys::TenantKeyRef;
use portico_core::storage::tenant_prefix;
use reqwest::Method;
use serde_json::json;

use crate::portal::{add_sites, content, fetch, new_version, post, upload};
use crate::support::{Backend, TestEnv, host_of, tenant_id};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn sha_hex(b: &[u8]) -> String {
    hex::encode(digest(&SHA256, b).as_ref())
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn data_key_calls(server: &crate::support::Server) -> f64 {
    server
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("portico_data_key_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn documents_are_stored_encrypted_listed_ranged_and_versioned() {
    let env = TestEnv::new(Backend::S3Kms).await;
    let acme_row = env.json(&["tenant", "create", "acme", "--json"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    add_sites(&server, &acme, &admin, &["berlin", "munich"]).await;
    let a = content(200_000, 1);
    let r = upload(
        &server,
        &acme,
        &admin,
        &[
            ("type", "invoice"),
            ("title", "Invoice 1"),
            ("period", "2026-11"),
            ("site", "berlin"),
            ("file_name", "inv-1.pdf"),
        ],
        a.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(r.body["current_version"]["sha256"], sha_hex(&a));
    assert_eq!(r.body["current_version"]["size"], 200_000);
    assert_eq!(r.body["current_version"]["media_type"], "application/pdf");

    // What is stored under the tenant's prefix is ciphertext: 4 segments, each with its tag.
    let store = env.store().await;
    let prefix = format!("{}documents/", tenant_prefix(tenant_id(&acme_row)));
    let objects = store.list(&prefix).await.expect("list");
    assert_eq!(objects.len(), 1, "{objects:?}");
    let stored = store.get(&objects[0]).await.expect("get").expect("object");
    assert_eq!(stored.len(), 200_000 + 4 * 16);
    assert!(
        !stored.windows(64).any(|w| w == &a[1000..1064]),
        "plaintext in storage"
    );

    // Whole file, and ranges (across segment boundaries, suffix, open-ended, unsatisfiable).
    let path = format!("/api/v1/documents/{id}/content");
    let (s, h, body) = fetch(&server, &acme, &path, Some(&admin), None).await;
    assert_eq!((s, body.as_deref().expect("body")), (200, &a[..]));
    assert_eq!(h["etag"], format!("\"{}\"", sha_hex(&a)).as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    for (range, from, to) in [
        ("bytes=70000-140000", 70_000, 140_000),
        ("bytes=-10", 199_990, 199_999),
        ("bytes=131072-", 131_072, 199_999),
        ("bytes=0-0", 0, 0),
    ] {
        let (s, h, body) = fetch(&server, &acme, &path, Some(&admin), Some(range)).await;
        assert_eq!(s, 206, "{range}");
        assert_eq!(body.expect("body"), &a[from..=to], "{range}");
        assert_eq!(
            h["content-range"],
            format!("bytes {from}-{to}/200000").as_str()
        );
    }
    let (s, h, _) = fetch(&server, &acme, &path, Some(&admin), Some("bytes=200000-")).await;
    assert_eq!(
        (s, &h["content-range"]),
        (
            416,
            &"bytes */200000"
                .parse::<reqwest::header::HeaderValue>()
                .expect("hv")
        )
    );

    // Filters and cursor pagination.
    let b = upload(
        &server,
        &acme,
        &admin,
        &[
            ("type", "delivery_note"),
            ("title", "DN 7"),
            ("period", "2026-10"),
            ("site", "munich"),
        ],
        content(10, 2),
    )
    .await;
    assert_eq!(b.status, 201, "{b:?}");
    let c = upload(
        &server,
        &acme,
        &admin,
        &[
            ("type", "contract"),
            ("title", "Frame contract"),
            ("period", "2026"),
            ("status", "draft"),
        ],
        content(0, 3),
    )
    .await;
    assert_eq!(c.status, 201, "{c:?}");
    let list = |q: &str| {
        let q = q.to_owned();
        let (server, acme, admin) = (&server, &acme, &admin);
        async move {
            server
                .get(acme, &format!("/api/v1/documents{q}"), Some(admin))
                .await
        }
    };
    assert_eq!(
        ids(&list("?type=invoice").await.body),
        std::slice::from_ref(&id)
    );
    assert_eq!(ids(&list("?site=munich").await.body).len(), 1);
    assert_eq!(ids(&list("?period=2026-10").await.body).len(), 1);
    assert_eq!(
        ids(&list("?status=draft").await.body),
        [c.body["id"].as_str().expect("id")]
    );
    let page1 = list("?limit=2").await;
    assert_eq!(ids(&page1.body).len(), 2);
    let cursor = page1.body["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let page2 = list(&format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page2.body).len(), 1);
    assert!(page2.body["next_cursor"].is_null());
    let mut all: Vec<String> = ids(&page1.body)
        .into_iter()
        .chain(ids(&page2.body))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3);
    let bad = list("?limit=0&type=bogus&valid_at=yesterday").await;
    bad.assert_problem(422, "invalid_input");
    let bad = list("?cursor=!!!").await;
    bad.assert_problem(422, "invalid_input");
    // The empty file comes back empty.
    let (s, _, body) = fetch(
        &server,
        &acme,
        &format!(
            "/api/v1/documents/{}/content",
            c.body["id"].as_str().expect("id")
        ),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((s, body.expect("body").len()), (200, 0));

    // A new version replaces the current one; the old one stays readable by id.
    let v1 = r.body["current_version"]["id"]
        .as_str()
        .expect("v1")
        .to_owned();
    let b2 = content(1_000, 4);
    let v = new_version(&server, &acme, &admin, &id, b2.clone()).await;
    assert_eq!(v.status, 201, "{v:?}");
    assert_eq!(v.body["version"], 2);
    let doc = server
        .get(&acme, &format!("/api/v1/documents/{id}"), Some(&admin))
        .await;
    assert_eq!(doc.body["current_version"]["version"], 2);
    let versions = doc.body["versions"].as_array().expect("versions");
    assert_eq!(versions[0]["replaced_by"], v.body["id"]);
    assert!(versions[0]["valid_until"].is_string());
    assert!(versions[1]["valid_until"].is_null());
    assert_eq!(
        fetch(&server, &acme, &path, Some(&admin), None)
            .await
            .2
            .expect("body"),
        b2
    );
    let old = fetch(
        &server,
        &acme,
        &format!("{path}?version={v1}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(old.2.expect("body"), a);

    // Validation errors name the fields; nothing is stored for them.
    let bad = upload(
        &server,
        &acme,
        &admin,
        &[("type", "bogus"), ("title", ""), ("period", "2026-13")],
        content(5, 5),
    )
    .await;
    bad.assert_problem(422, "invalid_input");
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["type", "title", "period"]);
    assert_eq!(store.list(&prefix).await.expect("list").len(), 4);

    // Every upload says in the audit log that clamd scanned it.
    let uploads = server
        .get(
            &acme,
            "/api/v1/audit-events?event_type=document_uploaded",
            Some(&admin),
        )
        .await;
    let scanned: Vec<&serde_json::Value> = uploads.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| &e["details"]["scanned"])
        .collect();
    assert_eq!(scanned, [&json!(true); 3]);
    // Data keys are cached: 4 uploads and 8 downloads cost one GenerateDataKey in all.
    assert_eq!(data_key_calls(&server).await, 1.0);
    env.cleanup().await;
}

#[tokio::test]
async fn another_tenant_cannot_reach_documents_by_id_host_token_link_or_key() {
    another_tenant_cannot_reach_documents_by_id_host_token_link_or_key_on(
        TestEnv::new(Backend::S3Kms).await,
    )
    .await;
}

/// The same on the pooled tier: tenants in one shared database, behind role switching.
#[tokio::test]
async fn another_tenant_cannot_reach_documents_by_id_host_token_link_or_key_pooled() {
    another_tenant_cannot_reach_documents_by_id_host_token_link_or_key_on(
        TestEnv::pooled(Backend::S3Kms).await,
    )
    .await;
}

async fn another_tenant_cannot_reach_documents_by_id_host_token_link_or_key_on(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let a_admin = env.tenant_token("acme", "admin", "admin");
    let g_admin = env.tenant_token("globex", "admin", "admin");
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let r = upload(
        &server,
        &acme,
        &a_admin,
        &[("type", "invoice"), ("title", "Secret invoice")],
        content(1000, 9),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().expect("id");
    let link = post(
        &server,
        &acme,
        &format!("/api/v1/documents/{id}/links"),
        &a_admin,
        json!({}),
    )
    .await;
    assert_eq!(link.status, 201, "{link:?}");
    let link_path = link.body["url"]
        .as_str()
        .expect("url")
        .split_once("/d/")
        .map(|(_, t)| format!("/d/{t}"))
        .expect("path");

    // Globex's admin, on globex's host, by id: nothing exists.
    for (m, p) in [
        (Method::GET, format!("/api/v1/documents/{id}")),
        (Method::GET, format!("/api/v1/documents/{id}/content")),
        (Method::POST, format!("/api/v1/documents/{id}/versions")),
        (Method::POST, format!("/api/v1/documents/{id}/links")),
        (Method::GET, format!("/api/v1/documents/{id}/links")),
    ] {
        let body = (m == Method::POST).then(|| json!({}));
        server
            .request(m.clone(), &globex, &p, Some(&g_admin), &[], body)
            .await
            .assert_problem(404, "not_found");
    }
    assert_eq!(
        ids(&server
            .get(&globex, "/api/v1/documents", Some(&g_admin))
            .await
            .body),
        Vec::<String>::new()
    );
    let link_id = link.body["id"].as_str().expect("link id");
    server
        .request(
            Method::DELETE,
            &globex,
            &format!("/api/v1/documents/{id}/links/{link_id}"),
            Some(&g_admin),
            &[],
            None,
        )
        .await
        .assert_problem(404, "not_found");
    // Acme's token on globex's host is no token at all.
    server
        .get(&globex, &format!("/api/v1/documents/{id}"), Some(&a_admin))
        .await
        .assert_problem(401, "invalid_token");
    // Acme's link on globex's host fails; on acme's host it works.
    server
        .get(&globex, &link_path, None)
        .await
        .assert_problem(404, "link_invalid");
    assert_eq!(fetch(&server, &acme, &link_path, None, None).await.0, 200);

    // Acme's data key cannot be unwrapped with globex's key, nor in globex's name.
    let p = env.platform().await;
    let db = p.connect_as_tenant("acme").await.expect("db");
    let row = db
        .query_one(
            "select data_key_wrapped, data_key_ref from document_versions",
            &[],
        )
        .await
        .expect("row");
    let (wrapped, a_ref): (Vec<u8>, String) = (row.get(0), row.get(1));
    let (a_id, _) = p.tenant_key("acme").await.expect("acme key");
    let (g_id, g_ref) = p.tenant_key("globex").await.expect("globex key");
    let keyring = env.keyring().await;
    assert!(
        keyring
            .decrypt_data_key(a_id, &TenantKeyRef::new(a_ref.clone()), &wrapped)
            .await
            .is_ok()
    );
    assert!(
        keyring
            .decrypt_data_key(g_id, &g_ref, &wrapped)
            .await
            .is_err()
    );
    assert!(
        keyring
            .decrypt_data_key(g_id, &TenantKeyRef::new(a_ref), &wrapped)
            .await
            .is_err()
    );
    env.cleanup().await;
}

fn object_path(
    env: &TestEnv,
    slug_row: &serde_json::Value,
    doc: &serde_json::Value,
) -> std::path::PathBuf {
    env.storage_root().join(format!(
        "{}documents/{}/{}",
        tenant_prefix(tenant_id(slug_row)),
        doc["id"].as_str().expect("id"),
        doc["current_version"]["id"].as_str().expect("version")
    ))
}

#[tokio::test]
async fn tampered_truncated_reordered_or_swapped_content_never_yields_wrong_bytes() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let (x, y) = (content(200_000, 1), content(200_000, 2));
    let dx = upload(
        &server,
        &acme,
        &admin,
        &[("type", "other"), ("title", "x")],
        x.clone(),
    )
    .await
    .body;
    let dy = upload(
        &server,
        &acme,
        &admin,
        &[("type", "other"), ("title", "y")],
        y.clone(),
    )
    .await
    .body;
    let (px, py) = (object_path(&env, &row, &dx), object_path(&env, &row, &dy));
    let original = std::fs::read(&px).expect("object");
    let path = format!(
        "/api/v1/documents/{}/content",
        dx["id"].as_str().expect("id")
    );
    const SEG: usize = 65_536 + 16;
    // Whatever arrives is a prefix of the true content, and the transfer fails (after the
    // headers, or before them when the server gives up before flushing them).
    let broken = |(status, _, got): (u16, reqwest::header::HeaderMap, Result<Vec<u8>, Vec<u8>>)| {
        assert!(status == 200 || status == 0, "{status}");
        let got = got.expect_err("the transfer must fail");
        assert!(
            got.len() < x.len() && x.starts_with(&got),
            "{} bytes",
            got.len()
        );
    };

    // A flipped bit in segment 2: its bytes never arrive; segment 0 alone is still fine.
    let mut t = original.clone();
    t[2 * SEG + 10] ^= 1;
    std::fs::write(&px, &t).expect("write");
    broken(fetch(&server, &acme, &path, Some(&admin), None).await);
    let (s, _, got) = fetch(&server, &acme, &path, Some(&admin), Some("bytes=0-99")).await;
    assert_eq!((s, got.expect("body")), (206, x[..100].to_vec()));
    // In segment 0: a problem before any byte.
    let mut t = original.clone();
    t[5] ^= 1;
    std::fs::write(&px, &t).expect("write");
    server
        .get(&acme, &path, Some(&admin))
        .await
        .assert_problem(500, "content_integrity");
    // Truncated at a segment boundary (the last segment dropped).
    std::fs::write(&px, &original[..3 * SEG]).expect("write");
    broken(fetch(&server, &acme, &path, Some(&admin), None).await);
    // Segments 1 and 2 swapped.
    let mut t = original.clone();
    t[SEG..2 * SEG].copy_from_slice(&original[2 * SEG..3 * SEG]);
    t[2 * SEG..3 * SEG].copy_from_slice(&original[SEG..2 * SEG]);
    std::fs::write(&px, &t).expect("write");
    broken(fetch(&server, &acme, &path, Some(&admin), None).await);
    // Another document's object (same tenant, same data key) in its place.
    std::fs::copy(&py, &px).expect("copy");
    server
        .get(&acme, &path, Some(&admin))
        .await
        .assert_problem(500, "content_integrity");
    // Restored: the right bytes again.
    std::fs::write(&px, &original).expect("write");
    assert_eq!(
        fetch(&server, &acme, &path, Some(&admin), None)
            .await
            .2
            .expect("body"),
        x
    );
    env.cleanup().await;
}

#[tokio::test]
async fn infected_uploads_are_rejected_and_a_missing_scanner_refuses_uploads_only() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let clean = upload(
        &server,
        &acme,
        &admin,
        &[("type", "other"), ("title", "clean")],
        content(5000, 1),
    )
    .await;
    assert_eq!(clean.status, 201, "{clean:?}");
    let dir = env
        .storage_root()
        .join(format!("{}documents", tenant_prefix(tenant_id(&row))));
    let files_before = walk(&dir);
    // EICAR alone, and EICAR inside a larger file past the first segment.
    let mut big = content(150_000, 7);
    big[100_000..100_000 + EICAR.len()].copy_from_slice(EICAR);
    for bytes in [EICAR.to_vec(), big] {
        let r = upload(
            &server,
            &acme,
            &admin,
            &[("type", "other"), ("title", "invoice.pdf")],
            bytes,
        )
        .await;
        r.assert_problem(422, "upload_infected");
        assert!(
            r.body["detail"]
                .as_str()
                .expect("detail")
                .contains("Portico.Test.EICAR"),
            "{r:?}"
        );
    }
    assert_eq!(
        walk(&dir),
        files_before,
        "nothing of an infected upload is kept"
    );
    assert_eq!(
        ids(&server
            .get(&acme, "/api/v1/documents", Some(&admin))
            .await
            .body)
        .len(),
        1
    );
    let p = env.platform().await;
    let db = p.connect_as_tenant("acme").await.expect("db");
    let reasons: Vec<String> = db
        .query(
            "select v.value from portico_audit.audit_events e
               join portico_audit.audit_values v on v.ref = e.reason
              where e.event_type = 'upload_rejected' order by e.seq",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["infected", "infected"]);
    drop(server);

    // The scanner is unreachable: uploads are refused (fail closed), downloads keep working.
    let server = env.serve(&[("PORTICO_CLAMD", "unix:/nonexistent/clamd.sock")]);
    upload(
        &server,
        &acme,
        &admin,
        &[("type", "other"), ("title", "later")],
        content(10, 3),
    )
    .await
    .assert_problem(503, "scanner_unavailable");
    let path = format!(
        "/api/v1/documents/{}/content",
        clean.body["id"].as_str().expect("id")
    );
    assert_eq!(
        fetch(&server, &acme, &path, Some(&admin), None)
            .await
            .2
            .expect("body"),
        content(5000, 1)
    );
    assert_eq!(walk(&dir), files_before);
    env.cleanup().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn links_are_signed_time_limited_revocable_and_audited() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let (_, member) = crate::portal::user(&env, "acme", "m@acme.example", "member").await;
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let bytes = content(3000, 4);
    let doc = upload(
        &server,
        &acme,
        &admin,
        &[("type", "certificate"), ("title", "ISO 9001")],
        bytes.clone(),
    )
    .await;
    let id = doc.body["id"].as_str().expect("id").to_owned();
    let links = format!("/api/v1/documents/{id}/links");
    post(&server, &acme, &links, &admin, json!({"expires_in_s": 10}))
        .await
        .assert_problem(422, "invalid_input");
    post(&server, &acme, &links, &member, json!({}))
        .await
        .assert_problem(403, "forbidden");
    let l = post(
        &server,
        &acme,
        &links,
        &admin,
        json!({"expires_in_s": 3600}),
    )
    .await;
    assert_eq!(l.status, 201, "{l:?}");
    let url = l.body["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("https://{acme}/d/pdl_")), "{url}");
    let path = format!("/d/{}", url.split_once("/d/").expect("path").1);
    // No credentials needed; the link alone, on its own host.
    let (s, h, got) = fetch(&server, &acme, &path, None, None).await;
    assert_eq!((s, got.expect("body")), (200, bytes.clone()));
    assert_eq!(h["cache-control"], "private, no-store");
    server
        .get(&host_of("globex"), &path, None)
        .await
        .assert_problem(404, "link_invalid");
    let mut forged = path.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    server
        .get(&acme, &forged, None)
        .await
        .assert_problem(404, "link_invalid");
    let listed = server.get(&acme, &links, Some(&admin)).await;
    assert_eq!(listed.body[0]["uses"], 1);
    assert!(
        listed.body[0].get("url").is_none(),
        "the token is shown once"
    );
    // Revoked: gone.
    let link_id = l.body["id"].as_str().expect("link id");
    let r = server
        .request(
            Method::DELETE,
            &acme,
            &format!("{links}/{link_id}"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    server
        .get(&acme, &path, None)
        .await
        .assert_problem(410, "link_revoked");
    // Expired: gone.
    let l2 = post(&server, &acme, &links, &admin, json!({})).await;
    let path2 = format!(
        "/d/{}",
        l2.body["url"]
            .as_str()
            .expect("url")
            .split_once("/d/")
            .expect("path")
            .1
    );
    let p = env.platform().await;
    let db = p.connect_as_tenant("acme").await.expect("db");
    db.execute(
        "update document_links set expires_at = now() - interval '1 second' where id = $1",
        &[&uuid::Uuid::parse_str(l2.body["id"].as_str().expect("id")).expect("uuid")],
    )
    .await
    .expect("age");
    server
        .get(&acme, &path2, None)
        .await
        .assert_problem(410, "link_expired");
    // Every use is in the audit log, refused ones with their reason.
    let used: Vec<(String, Option<String>)> = db
        .query(
            "select e.outcome, v.value from portico_audit.audit_events e
               left join portico_audit.audit_values v on v.ref = e.reason
              where e.event_type = 'document_link_used' order by e.seq",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let s = |o: &str, r: Option<&str>| (o.to_owned(), r.map(str::to_owned));
    assert_eq!(
        used,
        [
            s("success", None),
            s("failure", Some("link_invalid")),
            s("failure", Some("link_revoked")),
            s("failure", Some("link_expired"))
        ]
    );
    env.cleanup().await;
}

/// Peak resident memory of a process (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn large_uploads_and_downloads_stream_in_bounded_memory() {
    const MIB: usize = 1 << 20;
    // 256 MiB keeps the suite quick; `PORTICO_TEST_LARGE_MIB=1024` checks a 1 GiB file.
    let size_mib: usize = std::env::var("PORTICO_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let env = TestEnv::new(Backend::S3Kms).await;
    env.ok(&["tenant", "create", "acme"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    // Warm up (first upload allocates the pools, the S3 client, …).
    assert_eq!(
        upload(
            &server,
            &acme,
            &admin,
            &[("type", "other"), ("title", "w")],
            content(MIB, 1)
        )
        .await
        .status,
        201
    );
    let before = peak_rss_kb(server.pid());
    let chunk = |i: usize| bytes::Bytes::from(content(MIB, i as u8));
    let mut expected = aws_lc_rs::digest::Context::new(&SHA256);
    for i in 0..size_mib {
        expected.update(&chunk(i));
    }
    let expected = hex::encode(expected.finish().as_ref());
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..size_mib).map(move |i| Ok::<_, std::io::Error>(chunk(i))),
    ));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let r = http
        .post(format!(
            "http://{}/api/v1/documents?type=other&title=big",
            server.addr
        ))
        .header("host", &acme)
        .bearer_auth(&admin)
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let doc: serde_json::Value = r.json().await.expect("json");
    assert_eq!(doc["current_version"]["sha256"], expected);
    let mut resp = http
        .get(format!(
            "http://{}/api/v1/documents/{}/content",
            server.addr,
            doc["id"].as_str().expect("id")
        ))
        .header("host", &acme)
        .bearer_auth(&admin)
        .send()
        .await
        .expect("download");
    let mut got = aws_lc_rs::digest::Context::new(&SHA256);
    let mut n = 0usize;
    while let Some(c) = resp.chunk().await.expect("chunk") {
        n += c.len();
        got.update(&c);
    }
    assert_eq!(
        (n, hex::encode(got.finish().as_ref())),
        (size_mib * MIB, expected)
    );
    let grown_mib = (peak_rss_kb(server.pid()).saturating_sub(before)) / 1024;
    println!("peak RSS grew by {grown_mib} MiB moving a {size_mib} MiB file each way");
    // Measured: about 65 MiB whatever the size (256 MiB or 1 GiB): one S3 part, the queues,
    // and what the allocator keeps. A server that buffered the file would grow by its size.
    assert!(
        grown_mib < 128,
        "peak RSS grew by {grown_mib} MiB for a {size_mib} MiB file"
    );
    env.cleanup().await;
}

/// A client that goes away in the middle of an upload leaves nothing behind: no object, no
/// temporary file, no document row.
#[tokio::test]
async fn an_interrupted_upload_leaves_nothing_behind() {
    use std::io::Write;
    let env = TestEnv::new(Backend::FileLocal).await;
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    write!(
        s,
        "POST /api/v1/documents?type=other&title=cut HTTP/1.1\r\nHost: {acme}\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/pdf\r\nContent-Length: 1000000\r\n\r\n"
    )
    .expect("head");
    s.write_all(&content(300_000, 1)).expect("part of the body");
    s.flush().expect("flush");
    drop(s);
    server.wait_for_stderr(
        r#""route":"/api/v1/documents","status":400"#,
        std::time::Duration::from_secs(30),
    );
    let dir = env
        .storage_root()
        .join(format!("{}documents", tenant_prefix(tenant_id(&row))));
    assert_eq!(walk(&dir), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        ids(&server
            .get(&acme, "/api/v1/documents", Some(&admin))
            .await
            .body)
        .len(),
        0
    );
    env.cleanup().await;
}

/// An upload in progress does not hold a connection of the tenant's pool: with a pool of one,
/// other requests of the tenant are served while a file is still arriving.
#[tokio::test]
async fn a_slow_upload_does_not_hold_the_tenants_connection() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    let server = env.serve(&[
        ("PORTICO_TENANT_POOL_SIZE", "1"),
        ("PORTICO_POOL_WAIT_MS", "500"),
    ]);
    let acme = host_of("acme");
    // The body's second half is sent only when the test says so.
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let first = bytes::Bytes::from(content(100_000, 1));
    let second = bytes::Bytes::from(content(100_000, 2));
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures_util::stream::once(async move {
            let _ = wait.await;
            Ok::<_, std::io::Error>(second)
        }),
    );
    use futures_util::StreamExt;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let upload = tokio::spawn(
        http.post(format!(
            "http://{}/api/v1/documents?type=other&title=slow",
            server.addr
        ))
        .header("host", &acme)
        .bearer_auth(&admin)
        .header("content-length", "200000")
        .body(reqwest::Body::wrap_stream(body))
        .send(),
    );
    // The upload is streaming once its temporary file exists (the handler gave its
    // connection back just before).
    let dir = env
        .storage_root()
        .join(format!("{}documents", tenant_prefix(tenant_id(&row))));
    let started = crate::support::within(std::time::Duration::from_secs(30), || {
        let dir = dir.clone();
        async move { !walk(&dir).is_empty() }
    })
    .await;
    assert!(started.is_some(), "the upload never started streaming");
    let listed = server.get(&acme, "/api/v1/documents", Some(&admin)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    go.send(()).expect("upload waiting");
    let done = upload.await.expect("task").expect("upload");
    assert_eq!(done.status(), 201);
    env.cleanup().await;
}
