//! Tenant export on both tiers: an archive encrypted to an age recipient (or plaintext when
//! asked), with every table from one snapshot, the plaintext of every document version and a
//! signed manifest; `portico export verify` checks it offline and names a changed byte in a
//! data file, in a document and in the manifest, a signature by another key and a truncated
//! archive; another tenant's data is nowhere in it; a killed export never leaves a file that
//! looks complete.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::archive::{contains, decrypt, entries, export_dir, identity};
use crate::crash::pause_at;
use crate::portal::{content, new_version, post, upload, user};
use crate::support::{Answer, Backend, Server, TestEnv, host_of};

#[tokio::test]
async fn a_dedicated_tenant_exports_encrypted_and_verifies_offline() {
    export_and_verify(TestEnv::new(Backend::S3Kms).await).await;
}

#[tokio::test]
async fn a_pooled_tenant_exports_encrypted_and_verifies_offline() {
    export_and_verify(TestEnv::pooled(Backend::FileLocal).await).await;
}

async fn export_and_verify(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, gus) = user(&env, "globex", "gus@globex.example", "admin").await;
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let mut uploaded = Vec::new();
    for (i, size) in [(1u8, 200_000usize), (2, 1_000)] {
        let up = upload(
            &server,
            &acme,
            &ann,
            &[("type", "invoice"), ("title", &format!("Invoice {i}"))],
            content(size, i),
        )
        .await;
        assert_eq!(up.status, 201, "{up:?}");
        uploaded.push((
            up.body["id"].as_str().expect("id").to_owned(),
            content(size, i),
        ));
    }
    let v2 = new_version(&server, &acme, &ann, &uploaded[0].0, content(90_000, 9)).await;
    assert_eq!(v2.status, 201, "{v2:?}");
    let ticket = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &ann,
        json!({"title": "Printer broken"}),
    )
    .await;
    assert_eq!(ticket.status, 201, "{ticket:?}");
    let g = upload(
        &server,
        &globex,
        &gus,
        &[("type", "contract"), ("title", "GlobexSecretPlan")],
        content(500, 5),
    )
    .await;
    assert_eq!(g.status, 201, "{g:?}");

    let dir = tempfile::tempdir().expect("dir");
    let (id_file, recipient) = identity(dir.path(), "compliance.txt");
    let (other_id, _) = identity(dir.path(), "other.txt");
    let out = dir.path().join("acme.tar.age");
    let public = env.ok(&["export", "public-key"]).trim().to_owned();
    let report = env.json(&[
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--recipient",
        &recipient,
        "--json",
    ]);
    assert_eq!(report["encrypted"], true, "{report}");
    assert_eq!(report["documents"], 3, "{report}");
    assert!(!crate::export::partial(&out).exists());
    let events_now: i64 = env
        .tenant_db("acme")
        .await
        .query_one("select count(*) from audit_events", &[])
        .await
        .expect("count")
        .get(0);

    // Encrypted: nothing readable without the identity.
    let raw = std::fs::read(&out).expect("archive");
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    assert!(!contains(&raw, b"Printer broken") && !contains(&raw, b"ann@acme.example"));
    let ok = env.ok(&[
        "export",
        "verify",
        out.to_str().expect("path"),
        "--identity",
        id_file.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(ok.contains("valid export of tenant 'acme'"), "{ok}");
    env.run(&["export", "verify", out.to_str().expect("path")])
        .assert_error("is encrypted");
    env.run(&[
        "export",
        "verify",
        out.to_str().expect("path"),
        "--identity",
        other_id.to_str().expect("path"),
    ])
    .assert_error("cannot decrypt");
    env.run(&[
        "tenant",
        "export",
        "acme",
        "--out",
        dir.path().join("x").to_str().expect("path"),
    ])
    .assert_error("--recipient");
    env.run(&[
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--plaintext",
    ])
    .assert_error("exists already");

    // What is inside, read with nothing but age and tar.
    let plain = decrypt(&raw, &id_file);
    let files = entries(&plain);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"].1).expect("manifest");
    assert_eq!(manifest["format"], "portico-export/1");
    assert_eq!(manifest["tenant"]["slug"], "acme");
    assert_eq!(manifest["encrypted"], true);
    assert_eq!(manifest["audit"]["events"], events_now);
    let docs = manifest["documents"].as_array().expect("documents");
    assert_eq!(docs.len(), 3);
    for (doc_id, bytes) in &uploaded {
        let d = docs
            .iter()
            .find(|d| d["document_id"] == doc_id.as_str() && d["size"] == bytes.len())
            .unwrap_or_else(|| panic!("{doc_id} is not exported: {docs:?}"));
        let file = d["file"].as_str().expect("file");
        assert_eq!(&files[file].1, bytes, "{file}");
        assert_eq!(d["sha256"], hex::encode(Sha256::digest(bytes)));
    }
    let tickets = &files["tables/data.tickets.jsonl"].1;
    assert_eq!(tickets.iter().filter(|b| **b == b'\n').count(), 1);
    assert!(contains(tickets, b"Printer broken"));
    assert!(!contains(
        &files["tables/data.document_versions.jsonl"].1,
        b"data_key_wrapped"
    ));
    assert!(files.contains_key("tables/audit.audit_events.jsonl"));
    for (name, (_, data)) in &files {
        assert!(
            !contains(data, b"GlobexSecretPlan") && !contains(data, b"gus@globex.example"),
            "globex data in {name}"
        );
    }

    // Import as a new tenant on the other tier: same content, new id, keys and prefix.
    let other_tier = if env.backend == Backend::S3Kms {
        "pooled"
    } else {
        "dedicated"
    };
    let imported = env.json(&[
        "tenant",
        "import",
        out.to_str().expect("path"),
        "--slug",
        "acme-copy",
        "--identity",
        id_file.to_str().expect("path"),
        "--public-key",
        &public,
        "--tier",
        other_tier,
        "--json",
    ]);
    assert_eq!(imported["tenant"]["status"], "active", "{imported}");
    assert_eq!(imported["tenant"]["tier"], other_tier, "{imported}");
    assert_eq!(imported["source_slug"], "acme");
    assert_ne!(imported["tenant"]["id"], manifest["tenant"]["id"]);
    let copy = host_of("acme-copy");
    let copied_server = env.serve(&[]);
    // Refused before anything is created: the wrong identity, or a signature by another key.
    let stranger = portico_core::signing::SigningKey::generate()
        .expect("key")
        .0
        .public_key()
        .to_string();
    for (args, expected) in [
        (
            vec!["--identity", other_id.to_str().expect("path")],
            "cannot decrypt",
        ),
        (
            vec![
                "--identity",
                id_file.to_str().expect("path"),
                "--public-key",
                &stranger,
            ],
            "not by the expected key",
        ),
    ] {
        let mut cmd = vec![
            "tenant",
            "import",
            out.to_str().expect("path"),
            "--slug",
            "acme-nope",
        ];
        cmd.extend(args);
        env.run(&cmd).assert_error(expected);
        env.run(&["tenant", "show", "acme-nope"])
            .assert_error("no tenant named");
    }
    // Every version, decrypted under the copy's own keys, is what was exported.
    for d in docs {
        let path = format!(
            "/api/v1/documents/{}/content?version={}",
            d["document_id"].as_str().expect("doc"),
            d["version_id"].as_str().expect("version")
        );
        let (status, _, body) =
            crate::portal::fetch(&copied_server, &copy, &path, Some(&ann), None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            hex::encode(Sha256::digest(body.expect("body"))),
            d["sha256"].as_str().expect("sha"),
            "{path}"
        );
    }
    let verified = env.ok(&["audit", "verify", "acme-copy"]);
    assert!(verified.contains("intact"), "{verified}");
    let next = manifest["audit"]["head_seq"].as_i64().expect("seq") + 1;
    let last: String = env
        .tenant_db("acme-copy")
        .await
        .query_one(
            "select event_type from audit_events where seq = $1",
            &[&next],
        )
        .await
        .expect("event")
        .get(0);
    assert_eq!(last, "tenant_imported", "the chain goes on with the import");
    // Round trip: export the copy; every content hash and count agrees, except the row that
    // names the tenant and the audit log (which goes on with the import and the downloads).
    let again = dir.path().join("copy.tar.age");
    env.ok(&[
        "tenant",
        "export",
        "acme-copy",
        "--out",
        again.to_str().expect("path"),
        "--recipient",
        &recipient,
    ]);
    let m2: Value = serde_json::from_slice(
        &entries(&decrypt(&std::fs::read(&again).expect("read"), &id_file))["manifest.json"].1,
    )
    .expect("manifest");
    let by_name = |m: &Value| -> BTreeMap<String, Value> {
        m["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .map(|t| (t["name"].as_str().expect("n").to_owned(), t.clone()))
            .collect()
    };
    let (t1, t2) = (by_name(&manifest), by_name(&m2));
    assert_eq!(t1.keys().collect::<Vec<_>>(), t2.keys().collect::<Vec<_>>());
    for (name, a) in &t1 {
        let b = &t2[name];
        match name.as_str() {
            "data.tenant_profile" => {}
            "audit.audit_events" | "audit.audit_values" => {
                assert!(b["rows"].as_u64() > a["rows"].as_u64(), "{name}")
            }
            _ => assert_eq!(
                (&a["sha256"], &a["rows"]),
                (&b["sha256"], &b["rows"]),
                "{name} differs after the round trip"
            ),
        }
    }
    assert_eq!(
        manifest["documents"], m2["documents"],
        "document versions differ after the round trip"
    );
    let t2 = post(
        &copied_server,
        &copy,
        "/api/v1/tickets",
        &ann,
        json!({"title": "After import"}),
    )
    .await;
    assert_eq!(t2.status, 201, "{t2:?}");
    assert_eq!(t2.body["number"], 2, "ticket numbers continue: {t2:?}");
    // Tampering, on a plaintext export: each change is named.
    let p = dir.path().join("acme.tar");
    env.ok(&[
        "tenant",
        "export",
        "acme",
        "--out",
        p.to_str().expect("path"),
        "--plaintext",
    ]);
    let good = std::fs::read(&p).expect("archive");
    let ok = env.ok(&[
        "export",
        "verify",
        p.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(ok.contains("valid export"), "{ok}");
    let files = entries(&good);
    let doc_file = docs[0]["file"].as_str().expect("file").to_owned();
    let manifest_bytes = files["manifest.json"].1.clone();
    let forged_sig = {
        let other = portico_core::signing::SigningKey::generate()
            .expect("key")
            .0;
        let sig = json!({
            "alg": "Ed25519",
            "key": other.public_key().to_string(),
            "value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, other.sign(&manifest_bytes)),
        })
        .to_string();
        assert_eq!(
            sig.len(),
            files["manifest.sig"].1.len(),
            "same length, so the tar stays valid"
        );
        sig
    };
    let flip = |name: &str, at: usize| {
        let mut bad = good.clone();
        let pos = usize::try_from(files[name].0).expect("pos") + at;
        bad[pos] ^= 0x01;
        bad
    };
    let slug_at = manifest_bytes
        .windows(6)
        .position(|w| w == b"\"acme\"")
        .expect("slug in manifest")
        + 4;
    let sig_pos = usize::try_from(files["manifest.sig"].0).expect("pos");
    let mut resigned = good.clone();
    resigned[sig_pos..sig_pos + forged_sig.len()].copy_from_slice(forged_sig.as_bytes());
    let manifest_pos = usize::try_from(files["manifest.json"].0).expect("pos");
    let truncated = good[..manifest_pos - 512].to_vec();
    for (what, bytes, expected) in [
        (
            "a data file",
            flip("tables/data.tickets.jsonl", 20),
            "tables/data.tickets.jsonl was changed",
        ),
        ("a document", flip(&doc_file, 10), "was changed"),
        (
            "the manifest",
            flip("manifest.json", slug_at),
            "does not match its signature",
        ),
        ("the signature", resigned, "not by the expected key"),
        ("the end", truncated, "incomplete"),
    ] {
        let f = dir.path().join("tampered.tar");
        std::fs::write(&f, &bytes).expect("write");
        let r = env.run(&[
            "export",
            "verify",
            f.to_str().expect("path"),
            "--public-key",
            &public,
        ]);
        assert!(!r.success, "a changed {what} passed");
        assert!(r.stderr.contains(expected), "{what}: {}", r.stderr);
    }
    // Imported, a changed document is found while it loads, and the tenant it was going into
    // is removed again.
    let f = dir.path().join("bad.tar");
    std::fs::write(&f, flip(&doc_file, 10)).expect("write");
    env.run(&[
        "tenant",
        "import",
        f.to_str().expect("path"),
        "--slug",
        "acme-bad",
    ])
    .assert_error("nothing was imported");
    env.run(&["tenant", "show", "acme-bad"])
        .assert_error("no tenant named 'acme-bad'");
    env.cleanup().await;
}

#[tokio::test]
async fn killed_exports_and_imports_leave_nothing_that_looks_complete() {
    let env = TestEnv::new(Backend::FileLocal).await;
    acme_with_a_document(&env, content(300_000, 3)).await;
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("acme.tar");
    let args = [
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--plaintext",
    ];
    for point in ["export:tables", "export:manifest"] {
        let (mut child, _watchdog) = pause_at(&env, &args, point);
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        assert!(!out.exists(), "killed at {point}, the archive exists");
        let partial = crate::export::partial(&out);
        assert!(
            partial.exists(),
            "killed at {point}: nothing was being written"
        );
        let r = env.run(&["export", "verify", partial.to_str().expect("path")]);
        assert!(
            !r.success,
            "an unfinished archive (killed at {point}) verified"
        );
    }
    env.ok(&args);
    assert!(!crate::export::partial(&out).exists());
    assert!(
        env.ok(&["export", "verify", out.to_str().expect("path")])
            .contains("valid export")
    );

    // A killed import leaves a tenant that is still being created: running the import again
    // finishes it, `tenant create --rollback` removes it without a trace.
    for (slug, finish) in [("copy-one", true), ("copy-two", false)] {
        let import = [
            "tenant",
            "import",
            out.to_str().expect("path"),
            "--slug",
            slug,
        ];
        let (mut child, _watchdog) = pause_at(&env, &import, "import:loaded");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let shown = env.json(&["tenant", "show", slug, "--json"]);
        assert_eq!(shown["status"], "provisioning", "{shown}");
        if finish {
            env.ok(&import);
            assert_eq!(
                env.json(&["tenant", "show", slug, "--json"])["status"],
                "active"
            );
            let n: i64 = env
                .tenant_db(slug)
                .await
                .query_one("select count(*) from document_versions", &[])
                .await
                .expect("count")
                .get(0);
            assert_eq!(n, 1, "the load ran once");
            assert!(env.ok(&["audit", "verify", slug]).contains("intact"));
        } else {
            let id = crate::support::tenant_id(&shown);
            env.ok(&["tenant", "create", "--rollback", slug]);
            env.assert_no_trace(id).await;
        }
    }
    env.cleanup().await;
}

/// Tenant acme with an admin (Ann) who has uploaded `bytes`: the server, Ann's token and the
/// upload's answer.
async fn acme_with_a_document(env: &TestEnv, bytes: Vec<u8>) -> (Server, String, Answer) {
    env.ok(&["tenant", "create", "acme"]);
    let (_, ann) = user(env, "acme", "ann@acme.example", "admin").await;
    let server = env.serve(&[]);
    let up = upload(
        &server,
        &host_of("acme"),
        &ann,
        &[("type", "invoice"), ("title", "One")],
        bytes,
    )
    .await;
    assert_eq!(up.status, 201, "{up:?}");
    (server, ann, up)
}

/// `<out>.partial`, as the export names it.
pub fn partial(out: &Path) -> PathBuf {
    portico_platform::export::partial_path(out)
}

#[tokio::test]
async fn operators_export_through_the_api_and_download_when_done() {
    use reqwest::Method;
    let env = TestEnv::new(Backend::S3Kms).await;
    let op = env.operator_token("alice");
    let (server, _, _) = acme_with_a_document(&env, content(150_000, 4)).await;
    let dir = tempfile::tempdir().expect("dir");
    let (id_file, recipient) = identity(dir.path(), "compliance.txt");
    let admin = crate::support::OPERATOR_HOST;
    let call = |m: Method, path: String, body: Option<Value>| {
        let (server, op) = (&server, op.clone());
        async move { server.request(m, admin, &path, Some(&op), &[], body).await }
    };
    let exports = "/operator/v1/tenants/acme/exports".to_owned();
    // Bad input changes nothing.
    call(Method::POST, exports.clone(), Some(json!({})))
        .await
        .assert_problem(422, "invalid_input");
    call(
        Method::POST,
        exports.clone(),
        Some(json!({"recipient": recipient, "plaintext": true})),
    )
    .await
    .assert_problem(422, "invalid_input");
    call(
        Method::POST,
        exports.clone(),
        Some(json!({"recipient": "age1nope"})),
    )
    .await
    .assert_problem(422, "invalid_input");
    call(
        Method::POST,
        "/operator/v1/tenants/nobody/exports".into(),
        Some(json!({"plaintext": true})),
    )
    .await
    .assert_problem(404, "tenant_not_found");
    let n: i64 = env
        .catalog()
        .await
        .query_one("select count(*) from tenant_exports", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);

    let started = call(
        Method::POST,
        exports.clone(),
        Some(json!({"recipient": recipient})),
    )
    .await;
    assert_eq!(started.status, 202, "{started:?}");
    let status_url = started.body["status_url"].as_str().expect("url").to_owned();
    let download = started.body["download_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let done = crate::support::within(std::time::Duration::from_secs(60), || {
        let call = &call;
        let status_url = status_url.clone();
        async move {
            let s = call(Method::GET, status_url, None).await;
            assert_ne!(s.body["status"], "failed", "{s:?}");
            s.body["status"] == "succeeded"
        }
    })
    .await;
    assert!(done.is_some(), "the export did not finish");
    let shown = call(Method::GET, status_url.clone(), None).await;
    assert_eq!(shown.body["progress"]["documents"], 1, "{shown:?}");
    assert_eq!(shown.body["report"]["encrypted"], true, "{shown:?}");
    let answer = server
        .send_raw(Method::GET, admin, &download, Some(&op), &[], None)
        .await;
    let file = dir.path().join("downloaded.tar.age");
    crate::archive::assert_verified_download(&env, answer, &file, &id_file, "acme");
    // Kept for the retention setting (7 days by default); not yet expired, nothing goes.
    let catalog = env.catalog().await;
    let kept: f64 = catalog
        .query_one(
            "select extract(epoch from expires_at - created_at)::float8 from tenant_exports",
            &[],
        )
        .await
        .expect("expiry")
        .get(0);
    assert_eq!(kept, 7.0 * 86_400.0);
    assert!(!env.ok(&["tenant", "purge-due"]).contains("expired"));
    // Its time comes (the clock moved on: the expiry is set back), the purge pass deletes the
    // archive, and the download says so.
    catalog
        .execute(
            "update tenant_exports set expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .expect("expire");
    let out = env.ok(&["tenant", "purge-due"]);
    assert!(out.contains("deleted 1 expired export(s)"), "{out}");
    assert_eq!(
        call(Method::GET, status_url.clone(), None).await.body["status"],
        "expired"
    );
    call(Method::GET, download.clone(), None)
        .await
        .assert_problem(410, "not_found");
    let left = std::fs::read_dir(export_dir(&env))
        .expect("export dir")
        .count();
    assert_eq!(left, 0, "the expired archive is still there");
    call(
        Method::GET,
        format!("/operator/v1/exports/{}", uuid::Uuid::new_v4()),
        None,
    )
    .await
    .assert_problem(404, "not_found");
    // Not on a tenant host, and not without a token.
    let elsewhere = server
        .request(
            Method::GET,
            &host_of("acme"),
            &download,
            Some(&op),
            &[],
            None,
        )
        .await;
    assert_ne!(elsewhere.status, 200);
    let anonymous = server
        .request(Method::GET, admin, &download, None, &[], None)
        .await;
    assert_eq!(anonymous.status, 401);
    let trail: Vec<String> = env
        .catalog()
        .await
        .query(
            "select action || ':' || outcome from operator_audit where actor = 'alice' order by id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for expected in [
        "tenant.export:failed",
        "tenant.export:succeeded",
        "export.download:succeeded",
    ] {
        assert!(
            trail.iter().any(|t| t == expected),
            "{expected} not in {trail:?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_anonymized_export_becomes_a_staging_tenant_with_nobodys_personal_data() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, bob) = user(&env, "acme", "bob@acme.example", "member").await;
    env.tenant_db("acme")
        .await
        .execute(
            "update users set display_name = case email when 'ann@acme.example' then 'Ann Smith' else 'Bob Builder' end",
            &[],
        )
        .await
        .expect("names");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    let t = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &bob,
        json!({
            "title": "Printer broken, call Bob Builder",
            "description": "Ann Smith knows. Vendor: carl@vendor.example.com, bob@acme.example"
        }),
    )
    .await;
    assert_eq!(t.status, 201, "{t:?}");
    let up = upload(
        &server,
        &acme,
        &ann,
        &[
            ("type", "contract"),
            ("title", "Contract signed by Ann Smith"),
        ],
        content(70_000, 6),
    )
    .await;
    assert_eq!(up.status, 201, "{up:?}");
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("anon.tar");
    let r = env.json(&[
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--plaintext",
        "--anonymize",
        "--json",
    ]);
    assert_eq!(r["anonymized"], true, "{r}");
    assert!(
        env.ok(&["export", "verify", out.to_str().expect("path")])
            .contains("valid export")
    );
    let files = entries(&std::fs::read(&out).expect("read"));
    let manifest: Value = serde_json::from_slice(&files["manifest.json"].1).expect("manifest");
    assert_eq!(manifest["anonymized"], true);
    assert_eq!(manifest["audit"]["events"], 0);
    for (name, (_, data)) in files.iter().filter(|(n, _)| n.starts_with("tables/")) {
        let text = String::from_utf8_lossy(data).to_lowercase();
        for personal in [
            "ann@acme.example",
            "bob@acme.example",
            "ann smith",
            "bob builder",
            "carl@vendor.example.com",
            "127.0.0.1",
        ] {
            assert!(!text.contains(personal), "{personal} in {name}: {text}");
        }
    }
    for dropped in [
        "tables/data.api_tokens.jsonl",
        "tables/data.sessions.jsonl",
        "tables/data.local_credentials.jsonl",
        "tables/audit.audit_events.jsonl",
    ] {
        assert!(files[dropped].1.is_empty(), "{dropped} is not empty");
    }
    let tickets = String::from_utf8_lossy(&files["tables/data.tickets.jsonl"].1).into_owned();
    assert!(
        tickets.contains("User 2") && tickets.contains("person-1@anonymized.invalid"),
        "{tickets}"
    );
    // Document content is business data: kept as it is.
    let doc = manifest["documents"][0]["file"].as_str().expect("file");
    assert_eq!(files[doc].1, content(70_000, 6));

    // Imported, it is a working staging tenant whose log starts with the import.
    env.ok(&[
        "tenant",
        "import",
        out.to_str().expect("path"),
        "--slug",
        "acme-staging",
    ]);
    assert!(
        env.ok(&["audit", "verify", "acme-staging"])
            .contains("intact")
    );
    let staff = env.tenant_token("acme-staging", "qa", "admin");
    let staging = host_of("acme-staging");
    let list = server.get(&staging, "/api/v1/tickets", Some(&staff)).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(!list.body.to_string().contains("acme.example"), "{list:?}");
    let doc_id = up.body["id"].as_str().expect("id");
    let (status, _, body) = crate::portal::fetch(
        &server,
        &staging,
        &format!("/api/v1/documents/{doc_id}/content"),
        Some(&staff),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("body"), content(70_000, 6));
    // Nobody's credentials came along.
    server
        .get(&staging, "/api/v1/tenant", Some(&ann))
        .await
        .assert_problem(401, "invalid_token");
    env.cleanup().await;
}

#[tokio::test]
async fn an_import_scans_every_document_and_refuses_malware() {
    let env = TestEnv::new(Backend::FileLocal).await;
    acme_with_a_document(&env, content(5_000, 8)).await;
    let dir = tempfile::tempdir().expect("dir");
    let clean = plaintext_export(&env, dir.path());

    // The archive a compromised exporter could sign: a document carrying the scanner's test
    // marker, every hash made to agree, signed with the platform's own key.
    let marker = b"PORTICO-TEST-MALWARE-MARKER";
    let crafted = dir.path().join("crafted.tar");
    resigned(env.platform().await, &clean, &crafted, |manifest, files| {
        let doc_file = manifest["documents"][0]["file"]
            .as_str()
            .expect("file")
            .to_owned();
        let old_sha = manifest["documents"][0]["sha256"]
            .as_str()
            .expect("sha")
            .to_owned();
        let (_, data) = files
            .iter_mut()
            .find(|(n, _)| *n == doc_file)
            .expect("document");
        data[100..100 + marker.len()].copy_from_slice(marker);
        let new_sha = hex::encode(Sha256::digest(&data[..]));
        manifest["documents"][0]["sha256"] = new_sha.clone().into();
        let (_, rows) = files
            .iter_mut()
            .find(|(n, _)| n == "tables/data.document_versions.jsonl")
            .expect("versions");
        *rows = String::from_utf8(rows.clone())
            .expect("utf-8")
            .replace(&old_sha, &new_sha)
            .into_bytes();
    })
    .await;
    let public = env.ok(&["export", "public-key"]).trim().to_owned();
    assert!(
        env.ok(&[
            "export",
            "verify",
            crafted.to_str().expect("path"),
            "--public-key",
            &public
        ])
        .contains("valid export"),
        "the crafted archive verifies: only the scanner can stop it"
    );

    refused_then_clean_imports(&env, &crafted, &clean, "malware");
    env.cleanup().await;
}

#[tokio::test]
async fn an_import_whose_rows_a_table_refuses_changes_nothing() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let db = env
        .platform()
        .await
        .connect_as_tenant("acme")
        .await
        .expect("db");
    // More rows than one insert batch: the archive is still being read when the first batch
    // fails.
    db.execute(
        "insert into tickets (id, title, description, created_by)
         select gen_random_uuid(), 'Ticket ' || i, 'Leaks', 'test'
           from generate_series(1, 3500) as i",
        &[],
    )
    .await
    .expect("tickets");
    drop(db);
    let dir = tempfile::tempdir().expect("dir");
    let clean = plaintext_export(&env, dir.path());
    // Signed and every hash agreeing, but the tenth ticket has no title.
    let crafted = dir.path().join("crafted.tar");
    resigned(env.platform().await, &clean, &crafted, |_, files| {
        let (_, rows) = files
            .iter_mut()
            .find(|(n, _)| n == "tables/data.tickets.jsonl")
            .expect("tickets");
        let text = String::from_utf8(rows.clone()).expect("utf-8");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut row: Value = serde_json::from_str(&lines[9]).expect("row");
        row["title"] = Value::Null;
        lines[9] = row.to_string();
        *rows = format!("{}\n", lines.join("\n")).into_bytes();
    })
    .await;
    refused_then_clean_imports(&env, &crafted, &clean, "tickets");
    // Every ticket came with the clean archive.
    let copied: i64 = env
        .platform()
        .await
        .connect_as_tenant("acme-good")
        .await
        .expect("db")
        .query_one("select count(*) from tickets", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(copied, 3500);
    env.cleanup().await;
}

/// `acme` exported `--plaintext` into `dir`.
fn plaintext_export(env: &TestEnv, dir: &Path) -> PathBuf {
    let out = dir.join("clean.tar");
    env.ok(&[
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--plaintext",
    ]);
    out
}

/// The crafted archive is refused naming `why`, with no tenant left behind; the clean one
/// imports (as `acme-good`).
fn refused_then_clean_imports(env: &TestEnv, crafted: &Path, clean: &Path, why: &str) {
    env.run(&[
        "tenant",
        "import",
        crafted.to_str().expect("path"),
        "--slug",
        "acme-bad",
    ])
    .assert_error(why);
    env.run(&["tenant", "show", "acme-bad"])
        .assert_error("no tenant named 'acme-bad'");
    env.ok(&[
        "tenant",
        "import",
        clean.to_str().expect("path"),
        "--slug",
        "acme-good",
    ]);
}

/// Rewrites the plaintext archive `from` into `to` as a compromised exporter could: `edit`
/// changes the manifest and the files, then every table's hash, size and row count are made to
/// agree and the manifest is signed with the platform's own key.
async fn resigned(
    platform: portico_platform::Platform,
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&mut Value, &mut Vec<(String, Vec<u8>)>),
) {
    let raw = std::fs::read(from).expect("read");
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(&raw[..]);
    for e in archive.entries().expect("tar") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        files.push((name, data));
    }
    let mut manifest: Value = serde_json::from_slice(
        &files
            .iter()
            .find(|(n, _)| n == "manifest.json")
            .expect("manifest")
            .1,
    )
    .expect("json");
    files.retain(|(n, _)| !n.starts_with("manifest."));
    edit(&mut manifest, &mut files);
    for (name, data) in &files {
        if let Some(t) = manifest["tables"]
            .as_array_mut()
            .expect("tables")
            .iter_mut()
            .find(|t| t["file"] == name.as_str())
        {
            t["sha256"] = hex::encode(Sha256::digest(&data[..])).into();
            t["bytes"] = data.len().into();
            t["rows"] = data.iter().filter(|b| **b == b'\n').count().into();
        }
    }
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("json");
    let signer = portico_platform::signing::signing_key(&platform)
        .await
        .expect("key");
    let sig = json!({
        "alg": "Ed25519",
        "key": signer.public_key().to_string(),
        "value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signer.sign(&manifest_bytes)),
    });
    files.push(("manifest.json".into(), manifest_bytes));
    files.push(("manifest.sig".into(), sig.to_string().into_bytes()));
    let mut b = tar::Builder::new(std::fs::File::create(to).expect("create"));
    for (name, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).expect("append");
    }
    b.finish().expect("finish");
}
