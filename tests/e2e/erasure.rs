//! A person's erasure (GDPR Art. 17), on both tiers: four-eyes, refused across tenants, to
//! members and for oneself; afterwards a data-only dump of the tenant's database holds the
//! person's e-mail, name and IdP subject nowhere (in any case, JSON-escaped, base64 or hex),
//! their credentials and tokens are gone, their business records stay under a pseudonym, and
//! `portico audit verify` still passes, with the erasure itself in the log.

use base64::Engine;
use serde_json::json;

use crate::portal::{content, post, upload, user};
use crate::support::{Backend, TestEnv, admin_url, host_of};

#[tokio::test]
async fn an_erased_person_leaves_no_trace_and_the_chain_still_verifies() {
    erasure_on(TestEnv::new(Backend::FileLocal).await).await;
}

#[tokio::test]
async fn an_erased_person_leaves_no_trace_and_the_chain_still_verifies_pooled() {
    erasure_on(TestEnv::pooled(Backend::FileLocal).await).await;
}

/// `pg_dump --data-only` of the database holding `slug` (a pooled tenant's shared database).
async fn data_dump(env: &TestEnv, slug: &str) -> Vec<u8> {
    let (admin, _) = env
        .platform()
        .await
        .connect_as_admin(slug)
        .await
        .expect("admin");
    let db: String = admin
        .query_one("select current_database()::text", &[])
        .await
        .expect("database")
        .get(0);
    let out = crate::support::output_within(
        std::process::Command::new(crate::support::pg_tool("pg_dump")).args([
            "--data-only",
            "--dbname",
            &admin_url(&db),
        ]),
        crate::support::COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every form of `s` a dump could hold it in.
fn encodings(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    vec![
        s.to_owned(),
        s.to_lowercase(),
        s.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(b),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        hex::encode(b),
    ]
}

fn holds(dump: &[u8], s: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(dump).to_lowercase();
    encodings(s)
        .into_iter()
        .filter(|e| text.contains(&e.to_lowercase()))
        .collect()
}

async fn erasure_on(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (ann_id, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, amy) = user(&env, "acme", "amy@acme.example", "admin").await;
    let (bob_id, bob) = user(&env, "acme", "bob@acme.example", "member").await;
    let (_, gus) = user(&env, "globex", "gus@globex.example", "admin").await;
    let (email, name, subject) = ("bob@acme.example", "Robert Tabler", "idp-subject-7731x");
    {
        let p = env.platform().await;
        let c = p.connect_as_tenant("acme").await.expect("acme");
        c.execute(
            "update users set display_name = $2 where id = $1",
            &[&bob_id, &name],
        )
        .await
        .expect("name");
        c.execute(
            "insert into user_identities (user_id, subject) values ($1, $2)",
            &[&bob_id, &subject],
        )
        .await
        .expect("identity");
    }
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let ticket = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &bob,
        json!({"title": "Printer broken", "description": "Ask Robert Tabler, bob@acme.example"}),
    )
    .await;
    assert_eq!(ticket.status, 201, "{ticket:?}");
    let tid = ticket.body["id"].as_str().expect("id").to_owned();
    let c = post(
        &server,
        &acme,
        &format!("/api/v1/tickets/{tid}/comments"),
        &ann,
        json!({"body": "Robert Tabler (BOB@acme.example) says it is fixed"}),
    )
    .await;
    assert_eq!(c.status, 201, "{c:?}");
    let doc = upload(
        &server,
        &acme,
        &ann,
        &[
            ("type", "contract"),
            ("title", "Service contract, Robert Tabler"),
        ],
        content(100, 1),
    )
    .await;
    assert_eq!(doc.status, 201, "{doc:?}");
    let seen = server
        .get(
            &acme,
            &format!("/api/v1/users/{bob_id}/data-export"),
            Some(&ann),
        )
        .await;
    assert_eq!(seen.status, 200, "{seen:?}");
    // The check below can fail: before the erasure the dump holds all of it.
    let before = data_dump(&env, "acme").await;
    for s in [email, name, subject] {
        assert!(
            !holds(&before, s).is_empty(),
            "{s} is not in the dump before"
        );
    }

    // Refused: another tenant, a member, oneself; nothing changes.
    let path = format!("/api/v1/users/{bob_id}/erasure");
    post(&server, &globex, &path, &gus, json!({}))
        .await
        .assert_problem(404, "not_found");
    assert_eq!(
        post(&server, &acme, &path, &gus, json!({})).await.status,
        401
    );
    post(&server, &acme, &path, &bob, json!({}))
        .await
        .assert_problem(403, "forbidden");
    post(
        &server,
        &acme,
        &format!("/api/v1/users/{ann_id}/erasure"),
        &ann,
        json!({}),
    )
    .await
    .assert_problem(409, "conflict");

    // Four-eyes: Ann asks, Amy approves. The approval names the person by id only.
    let asked = post(&server, &acme, &path, &ann, json!({})).await;
    assert_eq!(asked.status, 202, "{asked:?}");
    assert_eq!(asked.body["approval"]["action"], "erase_person");
    assert!(!asked.body.to_string().contains(email), "{asked:?}");
    let approval = asked.body["approval"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let done = post(
        &server,
        &acme,
        &format!("/api/v1/approvals/{approval}/approve"),
        &amy,
        json!({}),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["outcome"], "applied", "{done:?}");

    // Gone: credentials, tokens; every trace of the e-mail, name and subject.
    assert_eq!(
        server.get(&acme, "/api/v1/me", Some(&bob)).await.status,
        401
    );
    let after = data_dump(&env, "acme").await;
    for s in [email, name, subject] {
        assert_eq!(
            holds(&after, s),
            Vec::<String>::new(),
            "{s} is still in the dump"
        );
    }
    let users = server.get(&acme, "/api/v1/users", Some(&ann)).await;
    let erased = users
        .body
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["id"] == bob_id.to_string())
        .expect("the user row stays")
        .clone();
    let pseudonym = erased["email"].as_str().expect("email").to_owned();
    assert!(pseudonym.ends_with("@erased.invalid"), "{erased}");
    assert_eq!(erased["active"], false);

    // The records stay, under the pseudonym; so does the history.
    let t = server
        .get(&acme, &format!("/api/v1/tickets/{tid}"), Some(&ann))
        .await;
    assert_eq!(t.status, 200, "{t:?}");
    assert!(t.body.to_string().contains(&pseudonym), "{t:?}");
    let events = server
        .get(&acme, "/api/v1/audit-events?limit=200", Some(&ann))
        .await;
    let items = events.body["items"].as_array().expect("events");
    let created = items
        .iter()
        .find(|e| e["event_type"] == "ticket_created")
        .expect("ticket_created");
    assert_eq!(created["actor"], pseudonym.as_str(), "{created}");
    let erasure = items
        .iter()
        .find(|e| e["event_type"] == "person_erased")
        .expect("the erasure is audited");
    assert_eq!(erasure["target"], format!("user:{bob_id}"));
    assert_eq!(erasure["actor"], "amy@acme.example");
    let verified = env.ok(&["audit", "verify", "acme"]);
    assert!(verified.contains("intact"), "{verified}");
    assert!(verified.contains("erased"), "{verified}");
    // A value changed behind the erasure's back breaks the chain's check.
    {
        let (admin, _) = env
            .platform()
            .await
            .connect_as_admin("acme")
            .await
            .expect("admin");
        let a = portico_provisioning::escape_ident(&env.audit_schema("acme").await);
        admin
            .batch_execute(&format!(
                "update {a}.audit_values set value = 'someone else'
                  where ref = (select min(ref) from {a}.audit_values where salt is not null)"
            ))
            .await
            .expect("tamper");
    }
    let broken = env.run(&["audit", "verify", "acme"]);
    assert!(!broken.success);
    assert!(broken.stdout.contains("was changed"), "{broken:?}");
    // globex is untouched.
    assert!(env.ok(&["audit", "verify", "globex"]).contains("intact"));
    env.cleanup().await;
}
