//! Tenant deletion: two operators (the requester cannot approve), the tenant gone for every
//! caller at once and restorable during its grace period, retention and legal holds refusing
//! a deletion unless overridden with a reason, then a purge (from the CLI, from `portico
//! serve`, killed at every step and re-run) that leaves nothing behind — document objects
//! copied aside can no longer be decrypted — and a signed certificate that verifies offline
//! and fails when edited.

use portico_core::keys::{Keyring, TenantKeyRef};
use portico_provisioning::TenantDbNames;
use portico_provisioning::keys::{KeyPresence, tenant_key_presence};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use time::OffsetDateTime;

use crate::archive::{export_dir, identity, manifest_sha};
use crate::crash::kill_at;
use crate::portal::{content, fetch, put, upload, user};
use crate::support::{Backend, OPERATOR_HOST, Server, TestEnv, host_of, tenant_id, within};

/// No grace: an approved deletion is due for purging at once.
const NO_GRACE: (&str, &str) = ("PORTICO_DELETION_GRACE", "0s");

async fn op(
    server: &Server,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> crate::support::Answer {
    server
        .request(method, OPERATOR_HOST, path, Some(token), &[], body)
        .await
}

/// `POST /operator/v1/tenants/{slug}/deletion` as the operator of `token`.
async fn ask(server: &Server, token: &str, slug: &str, body: Value) -> crate::support::Answer {
    let path = format!("/operator/v1/tenants/{slug}/deletion");
    op(server, Method::POST, &path, token, Some(body)).await
}

/// `POST /operator/v1/approvals/{id}/{verb}` (`approve` or `reject`) as the operator of `token`.
async fn decide(
    server: &Server,
    token: &str,
    id: &str,
    verb: &str,
    body: Option<Value>,
) -> crate::support::Answer {
    let path = format!("/operator/v1/approvals/{id}/{verb}");
    op(server, Method::POST, &path, token, body).await
}

/// Asks (as `requester`) and approves (as `approver`) a deletion through the CLI.
/// Asks (as `requester`, with `args` added to `tenant delete`) and approves (as `approver`) a
/// deletion through the CLI.
fn delete_with_cli(
    env: &TestEnv,
    slug: &str,
    requester: &str,
    approver: &str,
    extra: &[(&str, &str)],
    args: &[&str],
) {
    let mut vars = vec![("PORTICO_OPERATOR_TOKEN", requester)];
    vars.extend_from_slice(extra);
    let mut cmd = vec![
        "tenant",
        "delete",
        slug,
        "--reason",
        "Contract ended",
        "--json",
    ];
    cmd.extend_from_slice(args);
    let a: Value = serde_json::from_str(&env.ok_with(&cmd, &vars)).expect("approval json");
    let id = a["id"].as_str().expect("approval id").to_owned();
    let mut vars = vec![("PORTICO_OPERATOR_TOKEN", approver)];
    vars.extend_from_slice(extra);
    env.ok_with(&["operator", "approvals", "approve", &id], &vars);
}

async fn status_of(env: &TestEnv, slug: &str) -> String {
    env.catalog()
        .await
        .query_one("select status from tenants where slug = $1", &[&slug])
        .await
        .expect("tenant status")
        .get(0)
}

#[tokio::test]
async fn deletion_takes_two_operators_and_is_restorable_during_grace() {
    let env = TestEnv::new(Backend::S3Kms).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let g_token = env.tenant_token("globex", "admin", "admin");
    let alice = env.operator_token("alice");
    let bob = env.operator_token("bob");
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let doc = upload(
        &server,
        &acme,
        &ann,
        &[("type", "invoice"), ("title", "Q3")],
        content(5000, 7),
    )
    .await;
    assert_eq!(doc.status, 201, "{doc:?}");
    let doc = doc.body["id"].as_str().expect("id").to_owned();

    // Bad input changes nothing.
    let bad = ask(&server, &alice, "acme", json!({"reason": " "})).await;
    bad.assert_problem(422, "invalid_input");
    let short = ask(
        &server,
        &alice,
        "acme",
        json!({"reason": "x", "grace_days": 1}),
    )
    .await;
    short.assert_problem(422, "invalid_input");
    let asked = ask(&server, &alice, "acme", json!({"reason": "Customer left"})).await;
    assert_eq!(asked.status, 202, "{asked:?}");
    assert_eq!(asked.body["status"], "pending");
    assert_eq!(asked.body["requested_by"], "alice");
    let id = asked.body["id"].as_str().expect("id").to_owned();
    let again = ask(&server, &bob, "acme", json!({"reason": "twice"})).await;
    again.assert_problem(409, "conflict");

    // The requester cannot approve their own request; nothing changes.
    let own = decide(&server, &alice, &id, "approve", None).await;
    own.assert_problem(403, "same_operator");
    assert_eq!(status_of(&env, "acme").await, "active");
    assert_eq!(
        server.get(&acme, "/api/v1/tenant", Some(&ann)).await.status,
        200
    );
    let pending = op(&server, Method::GET, "/operator/v1/approvals", &bob, None).await;
    assert_eq!(
        pending.body.as_array().map(Vec::len),
        Some(1),
        "{pending:?}"
    );
    assert_eq!(pending.body[0]["request"]["reason"], "Customer left");

    // A note that is not printable text is refused; nothing is decided.
    for note in ["x".repeat(1001), "bell \u{7}".to_owned()] {
        decide(&server, &bob, &id, "approve", Some(json!({ "note": note })))
            .await
            .assert_problem(422, "invalid_input");
    }
    assert_eq!(status_of(&env, "acme").await, "active");

    // Another operator approves: gone at once for every caller, the neighbour untouched.
    let approved = decide(
        &server,
        &bob,
        &id,
        "approve",
        Some(json!({"note": "checked with sales"})),
    )
    .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.body["status"], "grace");
    assert_eq!(approved.body["approved_by"], "bob");
    let grace_until = OffsetDateTime::parse(
        approved.body["grace_until"].as_str().expect("grace_until"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    assert!(
        grace_until - OffsetDateTime::now_utc() > time::Duration::days(29),
        "default grace is 30 days"
    );
    let gone = within(Duration::from_secs(10), || async {
        server.get(&acme, "/api/v1/tenant", Some(&ann)).await.status == 410
    })
    .await;
    assert!(gone.is_some(), "acme's host still answers");
    server
        .get(&acme, &format!("/api/v1/documents/{doc}"), Some(&ann))
        .await
        .assert_problem(410, "tenant_deleted");
    assert_eq!(
        server
            .get(&globex, "/api/v1/tenant", Some(&g_token))
            .await
            .status,
        200
    );
    let twice = decide(&server, &bob, &id, "approve", None).await;
    twice.assert_problem(409, "approval_decided");

    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(
        (&shown["status"], &shown["deletion"]["status"]),
        (&json!("deleting"), &json!("grace")),
        "{shown}"
    );
    assert!(
        env.ok(&["tenant", "show", "acme"])
            .contains("approved by bob")
    );
    // Not due: the purge leaves it alone.
    assert!(
        env.ok(&["tenant", "purge-due"])
            .contains("no tenant is due")
    );
    let names =
        TenantDbNames::for_tenant(tenant_id(&env.json(&["tenant", "show", "acme", "--json"])));
    let (db, role) =
        portico_provisioning::database::tenant_objects_exist(&env.server_admin().await, &names)
            .await
            .expect("objects");
    assert!(db && role);

    // Restored exactly as it was: the same token, the same document.
    let restored = op(
        &server,
        Method::POST,
        "/operator/v1/tenants/acme/restore",
        &alice,
        None,
    )
    .await;
    assert_eq!(restored.body["status"], "restored", "{restored:?}");
    let back = within(Duration::from_secs(10), || async {
        server.get(&acme, "/api/v1/tenant", Some(&ann)).await.status == 200
    })
    .await;
    assert!(back.is_some(), "acme did not come back");
    let (status, _, body) = fetch(
        &server,
        &acme,
        &format!("/api/v1/documents/{doc}/content"),
        Some(&ann),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("body"), content(5000, 7));
    env.run(&["tenant", "restore", "acme"])
        .assert_error("not being deleted");

    // The CLI acts for the operator in PORTICO_OPERATOR_TOKEN, under the same rules.
    env.run(&["tenant", "delete", "acme", "--reason", "again"])
        .assert_error("PORTICO_OPERATOR_TOKEN");
    let a: Value = serde_json::from_str(&env.ok_with(
        &[
            "tenant",
            "delete",
            "acme",
            "--reason",
            "Second try",
            "--json",
        ],
        &[("PORTICO_OPERATOR_TOKEN", &bob)],
    ))
    .expect("json");
    let id2 = a["id"].as_str().expect("id").to_owned();
    env.run_with(
        &["operator", "approvals", "approve", &id2],
        &[("PORTICO_OPERATOR_TOKEN", &bob)],
    )
    .assert_error("cannot approve");
    let listed = env.ok(&["operator", "approvals", "list"]);
    assert!(
        listed.contains("Second try") && listed.contains(&id2),
        "{listed}"
    );
    env.ok_with(
        &["operator", "approvals", "reject", &id2, "--note", "not now"],
        &[("PORTICO_OPERATOR_TOKEN", &alice)],
    );
    assert_eq!(status_of(&env, "acme").await, "active");
    assert!(
        env.ok(&["operator", "approvals", "list"])
            .contains("no requests")
    );

    // Everything is in the operator audit trail, the refusal included.
    let trail: Vec<(String, String, String)> = env
        .catalog()
        .await
        .query(
            "select actor, action, outcome from operator_audit order by id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for expected in [
        ("alice", "tenant.delete_request", "succeeded"),
        ("alice", "approval.approve", "failed"),
        ("bob", "approval.approve", "succeeded"),
        ("alice", "tenant.restore", "succeeded"),
        ("bob", "tenant.delete_request", "succeeded"),
        ("bob", "approval.approve", "failed"),
        ("alice", "approval.reject", "succeeded"),
    ] {
        assert!(
            trail
                .iter()
                .any(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()) == expected),
            "{expected:?} missing from {trail:?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn retention_and_legal_holds_refuse_deletion_unless_overridden() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, gus) = user(&env, "globex", "gus@globex.example", "admin").await;
    let alice = env.operator_token("alice");
    let bob = env.operator_token("bob");
    let server = env.serve(&[]);
    let future = (OffsetDateTime::now_utc() + time::Duration::days(400))
        .date()
        .to_string();
    let kept = upload(
        &server,
        &host_of("acme"),
        &ann,
        &[
            ("type", "contract"),
            ("title", "Kept"),
            ("retention_until", &future),
        ],
        content(100, 1),
    )
    .await;
    assert_eq!(kept.status, 201, "{kept:?}");
    let held = upload(
        &server,
        &host_of("globex"),
        &gus,
        &[("type", "contract"), ("title", "Held")],
        content(100, 2),
    )
    .await;
    let held = held.body["id"].as_str().expect("id").to_owned();
    let hold = put(
        &server,
        &host_of("globex"),
        &format!("/api/v1/documents/{held}/legal-hold"),
        &gus,
        json!({"reason": "litigation"}),
    )
    .await;
    assert_eq!(hold.status, 200, "{hold:?}");

    let refused = ask(&server, &alice, "acme", json!({"reason": "Customer left"})).await;
    refused.assert_problem(409, "retention_active");
    let refused = ask(
        &server,
        &alice,
        "globex",
        json!({"reason": "Customer left"}),
    )
    .await;
    refused.assert_problem(409, "legal_hold_active");
    env.run_with(
        &["tenant", "delete", "globex", "--reason", "x"],
        &[("PORTICO_OPERATOR_TOKEN", &alice)],
    )
    .assert_error("legal hold");
    let none = op(
        &server,
        Method::GET,
        "/operator/v1/approvals?all=true",
        &bob,
        None,
    )
    .await;
    assert_eq!(none.body, json!([]), "a refused request records nothing");

    // Overridden with a reason, which the approver sees.
    let asked = ask(&server, &alice, "acme", json!({"reason": "Customer left", "override_retention": "Records handed to the customer, ticket LEGAL-7"})).await;
    assert_eq!(asked.status, 202, "{asked:?}");
    let seen = op(&server, Method::GET, "/operator/v1/approvals", &bob, None).await;
    assert_eq!(
        seen.body[0]["request"]["override_retention"],
        "Records handed to the customer, ticket LEGAL-7"
    );
    assert!(
        env.ok(&["operator", "approvals", "list"])
            .contains("ticket LEGAL-7")
    );
    // A hold placed while a request waits stops its approval.
    env.ok(&["tenant", "create", "initech"]);
    let (_, ian) = user(&env, "initech", "ian@initech.example", "admin").await;
    let up = upload(
        &server,
        &host_of("initech"),
        &ian,
        &[("type", "contract"), ("title", "Late")],
        content(100, 3),
    )
    .await;
    let late = up.body["id"].as_str().expect("id").to_owned();
    let i_asked = ask(&server, &alice, "initech", json!({"reason": "r"})).await;
    assert_eq!(i_asked.status, 202, "{i_asked:?}");
    let hold = put(
        &server,
        &host_of("initech"),
        &format!("/api/v1/documents/{late}/legal-hold"),
        &ian,
        json!({"reason": "subpoena"}),
    )
    .await;
    assert_eq!(hold.status, 200, "{hold:?}");
    let stopped = decide(
        &server,
        &bob,
        i_asked.body["id"].as_str().expect("id"),
        "approve",
        None,
    )
    .await;
    stopped.assert_problem(409, "legal_hold_active");
    assert_eq!(status_of(&env, "initech").await, "active");
    let ok = decide(
        &server,
        &bob,
        asked.body["id"].as_str().expect("id"),
        "approve",
        None,
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        ok.body["override_retention"],
        "Records handed to the customer, ticket LEGAL-7"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn purge_destroys_a_dedicated_tenant_and_certifies_it() {
    purge_and_certify(TestEnv::new(Backend::S3Kms).await, false).await;
}

#[tokio::test]
async fn purge_destroys_a_pooled_tenant_from_serve_and_certifies_it() {
    purge_and_certify(TestEnv::pooled(Backend::FileLocal).await, true).await;
}

async fn purge_and_certify(env: TestEnv, by_serve: bool) {
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    env.ok(&["tenant", "create", "globex"]);
    let id = tenant_id(&row);
    let key_id = env.json(&["tenant", "show", "acme", "--json"])["key_id"]
        .as_str()
        .expect("key")
        .to_owned();
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let g_token = env.tenant_token("globex", "admin", "admin");
    env.platform()
        .await
        .claim_domain("acme", "corp", "acme.example")
        .await
        .expect("claim");
    let alice = env.operator_token("alice");
    let bob = env.operator_token("bob");
    let server = env.serve(&[]);
    let acme = host_of("acme");
    for (i, size) in [(1u8, 70_000usize), (2, 1_234)] {
        let up = upload(
            &server,
            &acme,
            &ann,
            &[("type", "invoice"), ("title", &format!("Doc {i}"))],
            content(size, i),
        )
        .await;
        assert_eq!(up.status, 201, "{up:?}");
    }
    // A contract under retention: the deletion must export first.
    let future = (OffsetDateTime::now_utc() + time::Duration::days(400))
        .date()
        .to_string();
    let kept = upload(
        &server,
        &acme,
        &ann,
        &[
            ("type", "contract"),
            ("title", "Kept"),
            ("retention_until", &future),
        ],
        content(3_000, 3),
    )
    .await;
    assert_eq!(kept.status, 201, "{kept:?}");
    let dir = tempfile::tempdir().expect("dir");
    let (identity, recipient) = identity(dir.path(), "compliance.key");
    // What a backup would keep: an object and the wrapped data key of its version.
    let (object_key, wrapped, key_ref): (String, Vec<u8>, String) = {
        let db = env.tenant_db("acme").await;
        let r = db
            .query_one(
                "select object_key, data_key_wrapped, data_key_ref from document_versions limit 1",
                &[],
            )
            .await
            .expect("a version");
        (r.get(0), r.get(1), r.get(2))
    };
    let store = env.store().await;
    let copied = store
        .get(&portico_core::storage::ObjectKey::parse(&object_key).expect("key"))
        .await
        .expect("read")
        .expect("object");
    let keyring = env.keyring().await;
    keyring
        .decrypt_data_key(id, &TenantKeyRef::new(key_ref.clone()), &wrapped)
        .await
        .expect("the copied key decrypts before the purge");
    let head: (i64, String) = {
        let db = env.tenant_db("acme").await;
        let r = db
            .query_one(
                "select seq, encode(hash, 'hex') from audit_events order by seq desc limit 1",
                &[],
            )
            .await
            .expect("head");
        (r.get(0), r.get(1))
    };
    let rows_before: i64 = {
        let (admin, _) = env
            .platform()
            .await
            .connect_as_admin("acme")
            .await
            .expect("admin");
        let target = env
            .platform()
            .await
            .tenant_target("acme")
            .await
            .expect("target");
        let mut admin = admin;
        portico_provisioning::moves::fingerprint(&mut admin, &target)
            .await
            .expect("fingerprint")
            .iter()
            .map(|(_, n, _)| n)
            .sum()
    };
    let objects_before = store
        .list_sized(&format!("tenants/{id}/"))
        .await
        .expect("list");
    // An upload that never finished (S3: a multipart upload holding data, not an object).
    if env.backend == Backend::S3Kms {
        let key = portico_core::storage::ObjectKey::tenant_object(id, "documents/unfinished")
            .expect("key");
        let mut w = store.writer(&key).await.expect("writer");
        w.write(&[7u8; 100]).await.expect("write");
        // Neither finished nor aborted: as a killed process leaves it.
        std::mem::forget(w);
    }

    env.run_with(
        &["tenant", "delete", "acme", "--reason", "Contract ended"],
        &[("PORTICO_OPERATOR_TOKEN", &alice)],
    )
    .assert_error("under retention");
    delete_with_cli(
        &env,
        "acme",
        &alice,
        &bob,
        &[NO_GRACE],
        &["--export-first", &recipient],
    );
    server
        .get(&acme, "/api/v1/tenant", Some(&ann))
        .await
        .assert_problem(410, "tenant_deleted");
    if by_serve {
        // `portico serve` purges due tenants at start-up (and every five minutes).
        let purger = env.serve(&[]);
        let done = within(Duration::from_secs(60), || async {
            status_of(&env, "acme").await == "deleted"
        })
        .await;
        assert!(
            done.is_some(),
            "serve did not purge acme: {:?}",
            purger.stderr_lines()
        );
    } else {
        // Even with exports expiring at once, a deletion's export is kept.
        let now = [("PORTICO_EXPORT_RETENTION", "0s")];
        let out = env.ok_with(&["tenant", "purge-due"], &now);
        assert!(out.contains("purged 'acme'"), "{out}");
        env.ok_with(&["tenant", "purge-due"], &now);
    }

    // Nothing left: database (or schemas), role, objects, key, domains, claims, placement.
    let names = TenantDbNames::for_tenant(id);
    let (db, role) =
        portico_provisioning::database::tenant_objects_exist(&env.server_admin().await, &names)
            .await
            .expect("objects");
    assert!(!db && !role, "database {db} role {role}");
    assert!(
        store
            .list(&format!("tenants/{id}/"))
            .await
            .expect("list")
            .is_empty()
    );
    let catalog = env.catalog().await;
    for table in ["tenant_domains", "tenant_placements", "sso_domain_claims"] {
        let n: i64 = catalog
            .query_one(
                &format!("select count(*) from {table} where tenant_id = $1"),
                &[&id.as_uuid()],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "{table} keeps rows of the purged tenant");
    }
    assert_eq!(
        status_of(&env, "acme").await,
        "deleted",
        "the tombstone stays"
    );
    if by_serve {
        // Pooled: the shared database keeps serving the neighbour, and has no trace of acme.
        let n: i64 = crate::support::connect(&crate::support::admin_url(
            row["placement"]["database"].as_str().expect("db"),
        ))
        .await
        .query_one(
            "select count(*) from pg_namespace where nspname like $1",
            &[&format!("{}%", names.role)],
        )
        .await
        .expect("schemas")
        .get(0);
        assert_eq!(n, 0);
    }
    assert_eq!(
        server
            .get(&host_of("globex"), "/api/v1/tenant", Some(&g_token))
            .await
            .status,
        200
    );
    assert_eq!(
        server.get(&acme, "/api/v1/tenant", Some(&ann)).await.status,
        404,
        "the host is released"
    );
    env.run(&["tenant", "create", "acme"])
        .assert_error("already taken");

    // Crypto-shredding: the copy cannot be decrypted any more.
    match env.backend {
        Backend::FileLocal => {
            let refused = keyring
                .decrypt_data_key(id, &TenantKeyRef::new(key_ref.clone()), &wrapped)
                .await;
            assert!(refused.is_err(), "the copied data key still decrypts");
        }
        Backend::S3Kms => {
            // moto answers Decrypt even for keys pending deletion (AWS refuses): check the state.
            assert_eq!(
                tenant_key_presence(&keyring, id).await.expect("presence"),
                KeyPresence::Absent
            );
            let Keyring::Kms(kms) = &keyring else {
                panic!("kms")
            };
            let meta = kms
                .client()
                .describe_key()
                .key_id(&key_id)
                .send()
                .await
                .expect("describe")
                .key_metadata
                .expect("meta");
            assert_eq!(
                meta.key_state().map(|s| s.as_str()),
                Some("PendingDeletion")
            );
        }
    }
    assert!(!copied.is_empty());

    // The certificate: signed, complete, verifying offline, failing when edited.
    let file = dir.path().join("acme.json");
    env.ok(&[
        "tenant",
        "certificate",
        "acme",
        "--out",
        file.to_str().expect("path"),
    ]);
    let public = env.ok(&["export", "public-key"]).trim().to_owned();
    assert!(public.starts_with("ed25519:"), "{public}");
    let out = env.ok(&[
        "certificate",
        "verify",
        file.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(
        out.contains("valid deletion certificate of tenant 'acme'"),
        "{out}"
    );
    let cert: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    let p = &cert["payload"];
    assert_eq!(p["tenant"]["id"], id.to_string());
    assert_eq!(p["requested_by"], "alice");
    assert_eq!(p["approved_by"], "bob");
    assert_eq!(p["destroyed"]["rows"], rows_before);
    assert_eq!(p["destroyed"]["objects"], objects_before.len());
    assert_eq!(
        p["destroyed"]["bytes"],
        objects_before.iter().map(|(_, s)| s).sum::<u64>()
    );
    assert_eq!(p["destroyed"]["keys"][0]["key_id"], key_id.as_str());
    let unfinished = u64::from(env.backend == Backend::S3Kms);
    assert_eq!(p["destroyed"]["uploads_aborted"], unfinished);
    assert_eq!(p["audit_chain_head"]["seq"], head.0);
    // The export made before the purge: kept, verifying, named by the certificate.
    let export = export_of(&env, id).await;
    let out = env.ok(&[
        "export",
        "verify",
        export.to_str().expect("path"),
        "--identity",
        identity.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(
        out.contains("valid export of tenant 'acme'") && out.contains("3 document versions"),
        "{out}"
    );
    assert_eq!(
        p["export_manifest_sha256"],
        manifest_sha(&export, &identity)
    );
    assert_eq!(p["audit_chain_head"]["hash"], head.1.as_str());
    let steps: Vec<&str> = p["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().expect("step"))
        .collect();
    assert_eq!(steps, portico_platform::deletion::PURGE_STEPS);
    assert!(
        p["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["finished_at"].is_string())
    );

    for edit in [
        json!({"path": ["destroyed", "rows"], "value": 0}),
        json!({"path": ["approved_by"], "value": "alice"}),
    ] {
        let mut forged = cert.clone();
        let path: Vec<&str> = edit["path"]
            .as_array()
            .expect("path")
            .iter()
            .map(|v| v.as_str().expect("s"))
            .collect();
        let mut at = &mut forged["payload"];
        for k in &path {
            at = &mut at[*k];
        }
        *at = edit["value"].clone();
        let f = dir.path().join("forged.json");
        std::fs::write(&f, serde_json::to_string_pretty(&forged).expect("json")).expect("write");
        env.run(&["certificate", "verify", f.to_str().expect("path")])
            .assert_error("signature does not match");
    }
    // Signed by another key (a forger's): refused against the published key.
    let other = portico_core::signing::SigningKey::generate()
        .expect("key")
        .0;
    let f = dir.path().join("other.json");
    std::fs::write(&f, other.sign_document(cert["payload"].clone()).to_string()).expect("write");
    env.run(&[
        "certificate",
        "verify",
        f.to_str().expect("path"),
        "--public-key",
        &public,
    ])
    .assert_error("not by the expected key");
    env.cleanup().await;
}

/// The archive of the tenant's (last) export in the export directory.
async fn export_of(env: &TestEnv, id: portico_core::TenantId) -> std::path::PathBuf {
    let name: String = env
        .catalog()
        .await
        .query_one(
            "select file_name from tenant_exports where tenant_id = $1 order by created_at desc limit 1",
            &[&id.as_uuid()],
        )
        .await
        .expect("an export")
        .get(0);
    export_dir(env).join(name)
}

const PURGE_POINTS: &[&str] = &[
    "purge:started",
    "before:export",
    "export:tables",
    "after:export",
    "before:inventory",
    "after:inventory",
    "before:sessions",
    "after:sessions",
    "before:database",
    "after:database",
    "before:role",
    "after:role",
    "before:storage",
    "after:storage",
    "before:key",
    "after:key",
    "before:catalog",
];

#[tokio::test]
async fn a_purge_killed_at_every_step_is_finished_by_running_it_again() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let alice = env.operator_token("alice");
    let bob = env.operator_token("bob");
    let keys = tempfile::tempdir().expect("dir");
    let (identity, recipient) = identity(keys.path(), "compliance.key");
    for (i, point) in PURGE_POINTS.iter().enumerate() {
        let slug = format!("gone{i}");
        let id = tenant_id(&env.json(&["tenant", "create", &slug, "--json"]));
        env.tenant_token(&slug, "svc", "admin");
        delete_with_cli(
            &env,
            &slug,
            &alice,
            &bob,
            &[NO_GRACE],
            &["--export-first", &recipient],
        );
        kill_at(&env, &["tenant", "purge-due"], point);
        assert_ne!(status_of(&env, &slug).await, "deleted", "killed at {point}");
        // A restore is refused once the purge has started.
        env.run(&["tenant", "restore", &slug])
            .assert_error("cannot be restored");
        let out = env.ok(&["tenant", "purge-due"]);
        assert!(
            out.contains(&format!("purged '{slug}'")),
            "after {point}: {out}"
        );
        assert_eq!(status_of(&env, &slug).await, "deleted");
        let names = TenantDbNames::for_tenant(id);
        let (db, role) =
            portico_provisioning::database::tenant_objects_exist(&env.server_admin().await, &names)
                .await
                .expect("objects");
        assert!(!db && !role, "after {point}: database {db} role {role}");
        assert_eq!(
            tenant_key_presence(&env.keyring().await, id)
                .await
                .expect("key"),
            KeyPresence::Absent,
            "after {point}"
        );
        assert!(
            env.store()
                .await
                .list(&format!("tenants/{id}/"))
                .await
                .expect("list")
                .is_empty(),
            "after {point}"
        );
        assert!(
            !env.storage_root().join(format!("tenants/{id}")).exists(),
            "after {point}"
        );
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("c.json");
        env.ok(&[
            "tenant",
            "certificate",
            &slug,
            "--out",
            file.to_str().expect("path"),
        ]);
        let cert: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert!(
            cert["payload"]["destroyed"]["rows"].as_i64().expect("rows") > 0,
            "after {point}: the count survives the crash"
        );
        assert!(
            cert["payload"]["destroyed"]["objects"]
                .as_u64()
                .expect("objects")
                >= 1,
            "after {point}"
        );
        env.ok(&["certificate", "verify", file.to_str().expect("path")]);
        let export = export_of(&env, id).await;
        assert_eq!(
            cert["payload"]["export_manifest_sha256"],
            manifest_sha(&export, &identity),
            "after {point}"
        );
        let exports: i64 = env
            .catalog()
            .await
            .query_one(
                "select count(*) from tenant_exports where tenant_id = $1",
                &[&id.as_uuid()],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(exports, 1, "after {point}: the purge's export is made once");
    }
    // A purge with nothing due says so.
    assert!(
        env.ok(&["tenant", "purge-due"])
            .contains("no tenant is due")
    );
    env.cleanup().await;
}
