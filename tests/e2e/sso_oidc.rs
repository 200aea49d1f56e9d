//! OpenID Connect sign-in against a real `oidc-provider`: the browser flow, just-in-time users
//! and role mapping, and every way a callback or an ID token must be refused.

use std::str::FromStr;

use portico_tenant_runtime::identity::fetch::Fetcher;
use portico_tenant_runtime::identity::oidc;
use portico_tenant_runtime::store::connections::OidcConfig;
use secrecy::SecretString;
use serde_json::Value;

use crate::idp::{Browser, OidcClient, OidcIdp};
use crate::support::{Backend, Server, TestEnv, host_of};

pub const LOOPBACK: (&str, &str) = ("PORTICO_SSO_ALLOW_LOOPBACK", "true");
const SECRET: &str = "client-secret-of-acme-0123456789abcdef";

pub fn redirect_uri(slug: &str, conn: &str) -> String {
    format!("https://{}/sso/oidc/{conn}/callback", host_of(slug))
}

/// Adds an OIDC connection through the CLI.
pub fn add_oidc(
    env: &TestEnv,
    slug: &str,
    conn: &str,
    idp: &OidcIdp,
    client_id: &str,
    secret: &str,
    extra: &[&str],
) {
    let file = env.dir.path().join(format!("{slug}-{conn}-secret"));
    std::fs::write(&file, secret).expect("secret file");
    let mut args = vec![
        "tenant",
        "sso",
        "add-oidc",
        slug,
        "--name",
        conn,
        "--issuer",
        &idp.issuer,
        "--client-id",
        client_id,
        "--client-secret-file",
        file.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    env.ok_with(&args, &[LOOPBACK]);
}

/// Runs the browser flow up to the IdP's answer; returns the callback URL it sent back.
pub async fn start(browser: &mut Browser<'_>, slug: &str, conn: &str) -> String {
    let start = browser
        .get(&host_of(slug), &format!("/sso/{conn}/start"))
        .await;
    assert_eq!(start.status, 303, "{start:?}");
    start.location.expect("authorization URL")
}

pub async fn sign_in(
    browser: &mut Browser<'_>,
    idp: &OidcIdp,
    slug: &str,
    conn: &str,
    login: &str,
) -> crate::idp::Page {
    let auth = start(browser, slug, conn).await;
    let back = idp.sign_in(&auth, login).await;
    browser.follow(&back).await
}

struct Setup {
    env: TestEnv,
    idp: OidcIdp,
    server: Server,
}

async fn setup() -> Setup {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let idp = OidcIdp::start(&[
        OidcClient {
            id: "acme-portal",
            secret: SECRET,
            redirect_uri: redirect_uri("acme", "corp"),
        },
        OidcClient {
            id: "acme-second",
            secret: SECRET,
            redirect_uri: redirect_uri("acme", "second"),
        },
    ]);
    add_oidc(
        &env,
        "acme",
        "corp",
        &idp,
        "acme-portal",
        SECRET,
        &["--map-claim", "groups:admins=admin"],
    );
    add_oidc(&env, "acme", "second", &idp, "acme-second", SECRET, &[]);
    let server = env.serve(&[LOOPBACK]);
    Setup { env, idp, server }
}

fn last_failure(env: &TestEnv, slug: &str) -> Value {
    let events = env.json(&["tenant", "user", "events", slug, "--json"]);
    events
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .find(|e| e["event_type"] == "login_failure")
        .cloned()
        .unwrap_or_else(|| panic!("no login_failure event: {events}"))
}

/// Asserts the generic failure page and that the audit log has the failure with `reason` and
/// the page's request id.
pub fn assert_refused(env: &TestEnv, slug: &str, page: &crate::idp::Page, reason: &str) {
    let reference = page
        .failure_reference()
        .unwrap_or_else(|| panic!("expected the sign-in failure page, got {page:?}"));
    assert!(
        !page
            .set_cookies
            .iter()
            .any(|c| c.starts_with("__Host-portico_session=") && !c.contains("Max-Age=0")),
        "{page:?}"
    );
    let e = last_failure(env, slug);
    assert_eq!(e["reason"], reason, "{e}");
    assert_eq!(e["request_id"], reference, "{e}");
}

#[tokio::test]
async fn oidc_sign_in_creates_the_user_maps_roles_and_the_session_stays_on_its_host() {
    let s = setup().await;
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let mut b = Browser::new(&s.server);

    // The authorization request: code flow, PKCE S256, state, nonce, our redirect URI.
    let auth = start(&mut b, "acme", "corp").await;
    let u = url::Url::parse(&auth).expect("url");
    let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
    assert!(auth.starts_with(&s.idp.issuer), "{auth}");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], redirect_uri("acme", "corp"));
    assert!(q["state"].len() >= 16 && q["nonce"].len() >= 16, "{q:?}");
    let flow = b
        .set_cookie_line(&acme, "__Host-portico_flow")
        .expect("flow cookie");
    assert!(
        flow.contains("Secure") && flow.contains("HttpOnly") && flow.contains("Path=/"),
        "{flow}"
    );
    assert!(!flow.to_ascii_lowercase().contains("domain="), "{flow}");

    s.idp.set_groups("alice", &["admins"]).await;
    let back = s.idp.sign_in(&auth, "alice").await;
    let done = b.follow(&back).await;
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(done.location.as_deref(), Some("/"));
    let cookie = b
        .set_cookie_line(&acme, "__Host-portico_session")
        .expect("session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    let me = b.whoami(&acme).await.expect("signed in");
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["caller"]["kind"], "user");
    assert_eq!(me["caller"]["email"], "alice@example.test");
    assert_eq!(
        me["caller"]["role"], "admin",
        "mapped from the groups claim"
    );
    let home = b.get(&acme, "/").await;
    assert!(home.body.contains("alice@example.test"), "{home:?}");

    // The same session cookie is worth nothing on another tenant's host.
    let value = b.cookie(&acme, "__Host-portico_session").expect("value");
    b.plant(&globex, "__Host-portico_session", &value);
    assert!(b.whoami(&globex).await.is_none());
    assert_eq!(
        b.get(&globex, "/").await.location.as_deref(),
        Some("/login")
    );
    // Nor can it end the session from there: globex's logout does not know it.
    let csrf = b.get(&acme, "/").await.field("csrf").expect("csrf");
    let _ = b.post(&globex, "/logout", &[("csrf", &csrf)]).await;
    assert!(
        b.whoami(&acme).await.is_some(),
        "acme's session survived globex's logout"
    );

    // A second sign-in maps roles again (no admins group now) and rotates the session id.
    s.idp.set_groups("alice", &[]).await;
    let again = sign_in(&mut b, &s.idp, "acme", "corp", "alice").await;
    assert_eq!(again.status, 303, "{again:?}");
    let rotated = b
        .cookie(&acme, "__Host-portico_session")
        .expect("new session");
    assert_ne!(rotated, value);
    let me = b.whoami(&acme).await.expect("signed in");
    assert_eq!(me["caller"]["role"], "member");
    let users = s.env.json(&["tenant", "user", "list", "acme", "--json"]);
    assert_eq!(
        users.as_array().map(Vec::len),
        Some(1),
        "same (connection, subject): same user"
    );
    // The old session id no longer works.
    let mut old = Browser::new(&s.server);
    old.plant(&acme, "__Host-portico_session", &value);
    assert!(old.whoami(&acme).await.is_none());

    // Logout needs the session's CSRF token, then ends the session.
    let home = b.get(&acme, "/").await;
    let csrf = home.field("csrf").expect("csrf");
    let refused = b.post(&acme, "/logout", &[("csrf", "wrong")]).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(b.whoami(&acme).await.is_some());
    let out = b.post(&acme, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303, "{out:?}");
    let mut replay = Browser::new(&s.server);
    replay.plant(&acme, "__Host-portico_session", &rotated);
    assert!(replay.whoami(&acme).await.is_none());

    // The same e-mail through another connection is another user: identities are
    // (connection, subject), never e-mail. The address stays the first user's: a sign-in never
    // takes over an e-mail another user holds.
    let mut b2 = Browser::new(&s.server);
    assert_eq!(
        sign_in(&mut b2, &s.idp, "acme", "second", "alice")
            .await
            .status,
        303
    );
    let first = me["caller"]["user_id"].clone();
    let other = b2.whoami(&acme).await.expect("signed in");
    assert_eq!(other["caller"]["email"], serde_json::Value::Null);
    assert_ne!(other["caller"]["user_id"], first);
    let users = s.env.json(&["tenant", "user", "list", "acme", "--json"]);
    assert_eq!(users.as_array().map(Vec::len), Some(2));

    // Deactivation (by id, as this user has no e-mail) ends the session and refuses the next
    // sign-in.
    let other_id = other["caller"]["user_id"].as_str().expect("id").to_owned();
    s.env
        .ok(&["tenant", "user", "deactivate", "acme", &other_id]);
    assert!(b2.whoami(&acme).await.is_none());
    let refused = sign_in(&mut b2, &s.idp, "acme", "second", "alice").await;
    assert_refused(&s.env, "acme", &refused, "user_deactivated");
    s.env.cleanup().await;
}

#[tokio::test]
async fn oidc_callbacks_that_must_fail() {
    let s = setup().await;
    let acme = host_of("acme");

    // Reused state: the same callback twice.
    let mut b = Browser::new(&s.server);
    let auth = start(&mut b, "acme", "corp").await;
    let back = s.idp.sign_in(&auth, "bob").await;
    assert_eq!(b.follow(&back).await.status, 303);
    let mut b2 = Browser::new(&s.server);
    let auth2 = start(&mut b2, "acme", "corp").await;
    let _ = auth2;
    let flow2 = b2.cookie(&acme, "__Host-portico_flow").expect("flow");
    // Replayed into the first browser (its flow is gone) and into a browser with a live flow.
    let page = b.follow(&back).await;
    assert_refused(&s.env, "acme", &page, "oidc_no_flow");
    b2.plant(&acme, "__Host-portico_flow", &flow2);
    let page = b2.follow(&back).await;
    assert_refused(&s.env, "acme", &page, "oidc_state");

    // State bound to the browser: another browser's callback.
    let mut victim = Browser::new(&s.server);
    let auth = start(&mut victim, "acme", "corp").await;
    let back = s.idp.sign_in(&auth, "mallory").await;
    let mut attacker = Browser::new(&s.server);
    let _ = start(&mut attacker, "acme", "corp").await;
    let page = attacker.follow(&back).await;
    assert_refused(&s.env, "acme", &page, "oidc_state");

    // Wrong nonce: the IdP is asked for a different nonce than the one we stored.
    let mut b = Browser::new(&s.server);
    let auth = start(&mut b, "acme", "corp").await;
    let tampered = replace_param(&auth, "nonce", "nonce-chosen-by-an-attacker-0000");
    let back = s.idp.sign_in(&tampered, "bob").await;
    let page = b.follow(&back).await;
    assert_refused(&s.env, "acme", &page, "oidc_id_token");

    // PKCE verifier mismatch: the IdP saw another challenge, so our verifier fails.
    let mut b = Browser::new(&s.server);
    let auth = start(&mut b, "acme", "corp").await;
    let tampered = replace_param(
        &auth,
        "code_challenge",
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    );
    let back = s.idp.sign_in(&tampered, "bob").await;
    let page = b.follow(&back).await;
    assert_refused(&s.env, "acme", &page, "oidc_token_request");

    // RFC 9207: an `iss` of another issuer in the authorization response.
    let mut b = Browser::new(&s.server);
    let auth = start(&mut b, "acme", "corp").await;
    let back = s.idp.sign_in(&auth, "bob").await;
    let page = b
        .follow(&replace_param(&back, "iss", "https://evil.example"))
        .await;
    assert_refused(&s.env, "acme", &page, "oidc_iss_parameter");
    // … and its absence, since this IdP announces it sends it.
    let mut b = Browser::new(&s.server);
    let auth = start(&mut b, "acme", "corp").await;
    let back = s.idp.sign_in(&auth, "bob").await;
    let page = b.follow(&remove_param(&back, "iss")).await;
    assert_refused(&s.env, "acme", &page, "oidc_iss_missing");

    // A callback of acme's flow replayed on globex's host: globex has no such connection.
    let mut b = Browser::new(&s.server);
    let auth = start(&mut b, "acme", "corp").await;
    let back = s.idp.sign_in(&auth, "bob").await;
    let on_globex = back.replace(&acme, &host_of("globex"));
    let page = b.follow(&on_globex).await;
    assert_refused(&s.env, "globex", &page, "unknown_connection");
    // Nobody was signed in by any of this.
    let users = s.env.json(&["tenant", "user", "list", "acme", "--json"]);
    let emails: Vec<&str> = users
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(
        emails,
        vec!["bob@example.test"],
        "only the first, valid sign-in created a user"
    );
    s.env.cleanup().await;
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn remove_param(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// ID tokens issued by real IdPs, checked by the relying party's verifier directly: another
/// client's token, another issuer's, an impostor key under the same `kid`.
#[tokio::test]
async fn id_tokens_of_another_client_issuer_or_key_are_refused() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ours = OidcClient {
        id: "portal",
        secret: SECRET,
        redirect_uri: "https://acme.portal.test/cb".into(),
    };
    let other = OidcClient {
        id: "other-app",
        secret: "other-secret-0123456789abcdef0123",
        redirect_uri: "https://other.example/cb".into(),
    };
    let idp = OidcIdp::start(&[ours.clone_ref(), other.clone_ref()]);
    // Same issuer string and same kid as `idp`, different key: an impostor.
    let impostor = OidcIdp::start_with(
        &[ours.clone_ref()],
        &[
            ("OIDC_IDP_ISSUER", idp.issuer.clone()),
            ("OIDC_IDP_KID", idp.kid.clone()),
        ],
    );
    let stranger = OidcIdp::start(&[ours.clone_ref()]);

    let providers = oidc::Providers::new(Fetcher::new(true));
    let provider = oidc::discover(providers.fetcher(), &idp.issuer)
        .await
        .expect("discovery");
    let cfg = OidcConfig {
        issuer: idp.issuer.clone(),
        client_id: "portal".into(),
    };
    let secret = SecretString::from(SECRET.to_owned());
    let verify = |token: String, nonce: &'static str| {
        let (providers, provider, cfg, secret) = (&providers, &provider, &cfg, &secret);
        async move {
            let t = openidconnect::core::CoreIdToken::from_str(&token).expect("a JWT");
            oidc::verify_id_token(providers, provider, cfg, secret, &t, nonce).await
        }
    };

    // The genuine article passes (so the refusals below are about what they change).
    let good = idp.id_token_for(&ours, "alice", "n-1").await;
    let id = verify(good.clone(), "n-1").await.expect("a valid token");
    assert_eq!(id.subject, "alice");
    assert!(
        matches!(verify(good, "n-2").await, Err(oidc::OidcError::IdToken(_))),
        "nonce"
    );

    let foreign = idp.id_token_for(&other, "alice", "n-1").await;
    let e = verify(foreign, "n-1")
        .await
        .expect_err("another client's token");
    assert!(
        e.to_string().contains("audience") || e.to_string().contains("Audience"),
        "{e}"
    );

    let stray = stranger.id_token_for(&ours, "alice", "n-1").await;
    let e = verify(stray, "n-1")
        .await
        .expect_err("another issuer's token");
    assert_eq!(e.reason(), "oidc_id_token", "{e}");

    // ES256 and PS256 IdPs are accepted; HS256 (keyed with the client secret, which the
    // confidential-client default of openidconnect would accept) is not.
    for alg in ["ES256", "PS256", "HS256"] {
        let idp_alg = OidcIdp::start_with(&[ours.clone_ref()], &[("OIDC_IDP_ALG", alg.to_owned())]);
        let p = oidc::discover(providers.fetcher(), &idp_alg.issuer)
            .await
            .expect("discovery");
        let c = OidcConfig {
            issuer: idp_alg.issuer.clone(),
            client_id: "portal".into(),
        };
        let token = idp_alg.id_token_for(&ours, "alice", "n-1").await;
        let header = token.split('.').next().expect("header");
        let header = String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .expect("b64"),
        )
        .expect("utf8");
        assert!(header.contains(alg), "{header}");
        let t = openidconnect::core::CoreIdToken::from_str(&token).expect("JWT");
        let r = oidc::verify_id_token(&providers, &p, &c, &secret, &t, "n-1").await;
        match alg {
            "HS256" => {
                let e = r.expect_err("HS256");
                assert!(format!("{e:?}").contains("Disallowed"), "{e:?}");
            }
            _ => assert_eq!(r.expect(alg).subject, "alice"),
        }
    }

    let forged = impostor.id_token_for(&ours, "alice", "n-1").await;
    let e = verify(forged, "n-1")
        .await
        .expect_err("an impostor key under the same kid");
    assert_eq!(e.reason(), "oidc_id_token", "{e}");
    assert!(e.to_string().to_lowercase().contains("signature"), "{e}");
}

impl OidcClient<'_> {
    fn clone_ref(&self) -> OidcClient<'_> {
        OidcClient {
            id: self.id,
            secret: self.secret,
            redirect_uri: self.redirect_uri.clone(),
        }
    }
}

#[tokio::test]
async fn idp_key_rotation_is_followed_and_discovery_must_match_the_issuer() {
    let s = setup().await;
    let mut b = Browser::new(&s.server);
    assert_eq!(
        sign_in(&mut b, &s.idp, "acme", "corp", "carol")
            .await
            .status,
        303
    );

    // The IdP restarts with a new key (new kid) at the same address: the relying party has
    // the old key set cached, sees an unknown kid, fetches the keys again and accepts.
    let port = s.idp.port;
    let issuer = s.idp.issuer.clone();
    let old_kid = s.idp.kid.clone();
    let Setup { env, idp, server } = s;
    idp.process.stop();
    let rotated = OidcIdp::start_with(
        &[OidcClient {
            id: "acme-portal",
            secret: SECRET,
            redirect_uri: redirect_uri("acme", "corp"),
        }],
        &[
            ("OIDC_IDP_PORT", port.to_string()),
            ("OIDC_IDP_ISSUER", issuer),
        ],
    );
    assert_ne!(rotated.kid, old_kid);
    let mut b = Browser::new(&server);
    let page = sign_in(&mut b, &rotated, "acme", "corp", "carol").await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(b.whoami(&host_of("acme")).await.is_some());

    // Discovery must answer with exactly the configured issuer (a trailing slash differs).
    let file = env.dir.path().join("s");
    std::fs::write(&file, SECRET).expect("file");
    let r = env.run_with(
        &[
            "tenant",
            "sso",
            "add-oidc",
            "globex",
            "--name",
            "x",
            "--issuer",
            &format!("{}/", rotated.issuer),
            "--client-id",
            "c",
            "--client-secret-file",
            file.to_str().expect("p"),
        ],
        &[LOOPBACK],
    );
    r.assert_error("issuer");
    // And plain-HTTP issuers are refused unless loopback is explicitly allowed.
    let r = env.run(&[
        "tenant",
        "sso",
        "add-oidc",
        "globex",
        "--name",
        "x",
        "--issuer",
        &rotated.issuer,
        "--client-id",
        "c",
        "--client-secret-file",
        file.to_str().expect("p"),
    ]);
    r.assert_error("not an allowed URL");
    drop(server);
    env.cleanup().await;
}

/// Unknown key ids make the relying party fetch the IdP's keys again, but at most once per
/// `JWKS_REFRESH_MIN`: a stream of tokens with made-up `kid`s cannot make it hammer the IdP.
#[tokio::test]
async fn jwks_refresh_on_unknown_kid_is_rate_limited() {
    let ours = OidcClient {
        id: "portal",
        secret: SECRET,
        redirect_uri: "https://acme.portal.test/cb".into(),
    };
    let idp = OidcIdp::start(&[ours.clone_ref()]);
    // A window no test run can outlast, so only the limit explains what follows.
    let providers = oidc::Providers::new(Fetcher::new(true))
        .with_refresh_min(std::time::Duration::from_secs(3600));
    let provider = oidc::discover(providers.fetcher(), &idp.issuer)
        .await
        .expect("discovery");
    let cfg = OidcConfig {
        issuer: idp.issuer.clone(),
        client_id: "portal".into(),
    };
    let secret = SecretString::from(SECRET.to_owned());
    let verify = |token: String| {
        let (providers, provider, cfg, secret) = (&providers, &provider, &cfg, &secret);
        async move {
            let t = openidconnect::core::CoreIdToken::from_str(&token).expect("a JWT");
            oidc::verify_id_token(providers, provider, cfg, secret, &t, "n").await
        }
    };
    // A token under a kid the IdP never published: one refresh, still unknown.
    let stranger = OidcIdp::start_with(
        &[ours.clone_ref()],
        &[("OIDC_IDP_ISSUER", idp.issuer.clone())],
    );
    let t = stranger.id_token_for(&ours, "eve", "n").await;
    assert!(matches!(verify(t).await, Err(oidc::OidcError::UnknownKey)));

    // The IdP now really rotates; within the window the new kid is not fetched yet…
    let (port, issuer) = (idp.port, idp.issuer.clone());
    idp.process.stop();
    let rotated = OidcIdp::start_with(
        &[ours.clone_ref()],
        &[
            ("OIDC_IDP_PORT", port.to_string()),
            ("OIDC_IDP_ISSUER", issuer.clone()),
        ],
    );
    let t = rotated.id_token_for(&ours, "alice", "n").await;
    assert!(matches!(
        verify(t.clone()).await,
        Err(oidc::OidcError::UnknownKey)
    ));
    // … while a relying party that has not refreshed lately takes the same token.
    let fresh = oidc::Providers::new(Fetcher::new(true));
    let p = oidc::discover(fresh.fetcher(), &issuer)
        .await
        .expect("discovery");
    let tok = openidconnect::core::CoreIdToken::from_str(&t).expect("JWT");
    let id = oidc::verify_id_token(&fresh, &p, &cfg, &secret, &tok, "n")
        .await
        .expect("valid");
    assert_eq!(id.subject, "alice");
}

/// Open redirects through OIDC: `return_to` is followed only to a path of the tenant's own
/// origin (the tab case was reproduced in Chromium: `/\t/example.org` went to example.org).
#[tokio::test]
async fn return_to_never_leaves_the_tenant_origin() {
    let s = setup().await;
    let acme = host_of("acme");
    for (raw, expected) in [
        ("/\t/example.org", "/"),
        ("/\r\n/example.org", "/"),
        ("/\\/example.org", "/"),
        ("\\\\example.org", "/"),
        ("/%2F/example.org", "/%2F/example.org"),
        ("/%40example.org", "/%40example.org"),
        ("/login", "/"),
        ("/documents#top", "/documents#top"),
    ] {
        let mut b = Browser::new(&s.server);
        let idp_url = b.start_sso(&acme, "corp", raw).await;
        let back = s.idp.sign_in(&idp_url, "alice").await;
        let done = b.follow(&back).await;
        assert_eq!(done.status, 303, "{raw:?}: {done:?}");
        assert_eq!(done.location.as_deref(), Some(expected), "{raw:?}");
    }
    s.env.cleanup().await;
}
