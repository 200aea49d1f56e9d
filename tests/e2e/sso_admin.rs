//! Managing SSO connections through the tenant admin API, and home-realm discovery on the
//! shared login host.

use reqwest::Method;
use serde_json::json;

use crate::idp::{Browser, OidcClient, OidcIdp, SamlIdp};
use crate::sso_oidc::LOOPBACK;
use crate::support::{Backend, TestEnv, host_of};

const LOGIN_HOST: &str = "login.portal.test";

#[tokio::test]
async fn tenant_admins_manage_their_own_connections_only() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let admin = env.tenant_token("acme", "admin", "admin");
    // Changing a connection is four-eyes by default: a second admin (a person: service tokens
    // cannot approve) approves.
    let (_, second) = crate::portal::user(&env, "acme", "second@acme.example", "admin").await;
    let member = env.tenant_token("acme", "member", "member");
    let globex = env.tenant_token("globex", "admin", "admin");
    let saml = SamlIdp::start();
    let secret = "api-client-secret-0123456789abcdef";
    let oidc = OidcIdp::start(&[OidcClient {
        id: "acme-api",
        secret,
        redirect_uri: format!("https://{}/sso/oidc/okta/callback", host_of("acme")),
    }]);
    let server = env.serve(&[LOOPBACK]);
    let acme = host_of("acme");
    let post = |token: &str, body: serde_json::Value| {
        let token = token.to_owned();
        let server = &server;
        let acme = acme.clone();
        async move {
            server
                .request(
                    Method::POST,
                    &acme,
                    "/api/v1/sso/connections",
                    Some(&token),
                    &[],
                    Some(body),
                )
                .await
        }
    };

    // A member may not.
    post(
        &member,
        json!({"kind": "saml", "name": "corp", "metadata_url": saml.metadata_url()}),
    )
    .await
    .assert_problem(403, "forbidden");
    // Bad input: a clear problem, nothing saved.
    post(&admin, json!({"kind": "saml", "name": "corp"}))
        .await
        .assert_problem(422, "invalid_input");
    post(&admin, json!({"kind": "saml", "name": "corp", "metadata_url": format!("{}?nosigning=1", saml.metadata_url())}))
        .await
        .assert_problem(422, "invalid_input");
    post(&admin, json!({"kind": "ldap", "name": "corp"}))
        .await
        .assert_problem(422, "invalid_input");
    post(
        &admin,
        json!({"kind": "saml", "name": "Bad Name", "metadata_url": saml.metadata_url()}),
    )
    .await
    .assert_problem(422, "invalid_input");

    let pending = post(&admin, json!({"kind": "saml", "name": "corp", "metadata_url": saml.metadata_url(), "map_group": ["admins=admin"]})).await;
    assert_eq!(pending.status, 202, "{pending:?}");
    // Nothing exists until a second admin approves.
    let none = server
        .get(&acme, "/api/v1/sso/connections", Some(&admin))
        .await;
    assert_eq!(none.body, json!([]));
    crate::portal::approve(&server, &acme, &pending, &admin)
        .await
        .assert_problem(403, "four_eyes");
    let r = crate::portal::approve(&server, &acme, &pending, &second).await;
    assert_eq!(r.body["status"], "approved", "{r:?}");
    let r = server
        .get(&acme, "/api/v1/sso/connections/corp", Some(&admin))
        .await;
    assert_eq!(r.body["protocol"]["kind"], "saml");
    post(
        &admin,
        json!({"kind": "saml", "name": "corp", "metadata_url": saml.metadata_url()}),
    )
    .await
    .assert_problem(409, "conflict");
    let r = post(&admin, json!({"kind": "oidc", "name": "okta", "issuer": oidc.issuer, "client_id": "acme-api", "client_secret": secret})).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert!(
        !r.body.to_string().contains(secret),
        "the secret is never echoed: {}",
        r.body
    );
    // The pending request keeps the secret only encrypted.
    let p = env.platform().await;
    let db = p.connect_as_tenant("acme").await.expect("db");
    let payloads: Vec<String> = db
        .query("select payload::text from approvals", &[])
        .await
        .expect("approvals")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(payloads.iter().all(|p| !p.contains(secret)));
    // The approver sees the connection's settings, not even its encrypted secret.
    let shown = &r.body["approval"]["details"]["connection"];
    assert_eq!(shown["name"], "okta");
    assert!(shown.get("secret_ciphertext").is_none(), "{shown}");
    assert_eq!(
        crate::portal::approve(&server, &acme, &r, &second)
            .await
            .status,
        200
    );

    let list = server
        .get(&acme, "/api/v1/sso/connections", Some(&admin))
        .await;
    let names: Vec<&str> = list
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["corp", "okta"]);
    assert!(!list.body.to_string().contains(secret));
    // The client secret is stored encrypted in acme's database.
    let row = db
        .query_one(
            "select secret_ciphertext, config::text from sso_connections where name = 'okta'",
            &[],
        )
        .await
        .expect("row");
    let ciphertext: Vec<u8> = row.get(0);
    assert!(
        !ciphertext
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );
    assert!(!row.get::<_, String>(1).contains(secret));

    // Another tenant sees nothing of it, even by name.
    let theirs = server
        .get(&host_of("globex"), "/api/v1/sso/connections", Some(&globex))
        .await;
    assert_eq!(theirs.body, json!([]));
    server
        .get(
            &host_of("globex"),
            "/api/v1/sso/connections/corp",
            Some(&globex),
        )
        .await
        .assert_problem(404, "not_found");
    server
        .request(
            Method::DELETE,
            &host_of("globex"),
            "/api/v1/sso/connections/corp",
            Some(&globex),
            &[],
            None,
        )
        .await
        .assert_problem(404, "not_found");
    // acme's token does not work on globex's host.
    server
        .get(&host_of("globex"), "/api/v1/sso/connections", Some(&admin))
        .await
        .assert_problem(401, "invalid_token");

    // The login page lists both; removing one is audited.
    let mut b = Browser::new(&server);
    let login = b.get(&acme, "/login").await;
    assert!(
        login.body.contains("/sso/corp/start") && login.body.contains("/sso/okta/start"),
        "{}",
        login.body
    );
    // globex's sign-in page offers none of acme's connections.
    let theirs = b.get(&host_of("globex"), "/login").await;
    assert!(
        !theirs.body.contains("/sso/corp/") && !theirs.body.contains("/sso/okta/"),
        "{}",
        theirs.body
    );
    let r = server
        .request(
            Method::DELETE,
            &acme,
            "/api/v1/sso/connections/corp",
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        crate::portal::approve(&server, &acme, &r, &second)
            .await
            .status,
        200
    );
    let events = env.json(&["tenant", "user", "events", "acme", "--json"]);
    let changes: Vec<_> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "sso_connection_changed")
        .map(|e| {
            (
                e["target"].as_str().unwrap_or(""),
                e["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("corp", "second@acme.example"),
            ("okta", "second@acme.example"),
            ("corp", "second@acme.example")
        ]
    );
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn home_realm_discovery_sends_claimed_domains_to_their_tenant_only() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let saml = SamlIdp::start();
    for slug in ["acme", "globex"] {
        env.ok_with(
            &[
                "tenant",
                "sso",
                "add-saml",
                slug,
                "--name",
                "corp",
                "--metadata-url",
                &saml.metadata_url(),
            ],
            &[LOOPBACK],
        );
    }
    env.ok(&[
        "tenant",
        "sso",
        "claim-domain",
        "acme",
        "corp",
        "acme.example",
    ]);
    env.run(&[
        "tenant",
        "sso",
        "claim-domain",
        "globex",
        "corp",
        "acme.example",
    ])
    .assert_error("already claimed");
    env.run(&[
        "tenant",
        "sso",
        "claim-domain",
        "globex",
        "nope",
        "globex.example",
    ])
    .assert_error("no connection");
    let server = env.serve(&[]);
    let mut b = Browser::new(&server);

    let page = b.get(LOGIN_HOST, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"discover\""), "{}", page.body);
    let go = b
        .post(LOGIN_HOST, "/", &[("email", "Ann@ACME.example")])
        .await;
    assert_eq!(go.status, 303, "{go:?}");
    assert_eq!(
        go.location.as_deref(),
        Some(
            format!(
                "https://{}/sso/corp/start?login_hint=ann%40acme.example",
                host_of("acme")
            )
            .as_str()
        )
    );
    // The tenant host takes it from there (to acme's IdP).
    let next = b.follow(go.location.as_deref().expect("location")).await;
    assert_eq!(next.status, 303, "{next:?}");
    assert!(next.location.expect("IdP").starts_with(&saml.base));

    // Unknown, malformed and unclaimed answers are indistinguishable.
    let unknown = b
        .post(LOGIN_HOST, "/", &[("email", "ann@unknown.example")])
        .await;
    let malformed = b.post(LOGIN_HOST, "/", &[("email", "not an email")]).await;
    assert_eq!((unknown.status, malformed.status), (200, 200));
    assert_eq!(unknown.body, malformed.body);
    assert!(unknown.body.contains("id=\"neutral\""));
    // A suspended tenant's domain is not offered.
    env.ok(&["tenant", "suspend", "acme"]);
    let suspended = b
        .post(LOGIN_HOST, "/", &[("email", "ann@acme.example")])
        .await;
    assert_eq!(suspended.body, unknown.body);

    // The login host is no tenant: no tenant pages, no tenant API.
    assert_eq!(b.get(LOGIN_HOST, "/login").await.status, 404);
    server
        .get(LOGIN_HOST, "/api/v1/me", None)
        .await
        .assert_problem(404, "not_found");
    drop(server);
    env.cleanup().await;
}
