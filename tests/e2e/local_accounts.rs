//! Local accounts: invitations, argon2id passwords, TOTP enrolment and sign-in, lockout with
//! backoff, CSRF on every form, deactivation, idle and absolute session timeouts.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::idp::Browser;
use crate::sso_oidc::assert_refused;
use crate::support::{Backend, Server, TestEnv, host_of};

const PASSWORD: &str = "correct horse battery staple";

/// Invites `email` by CLI and returns the printed link's path.
fn invite(env: &TestEnv, slug: &str, email: &str, role: &str) -> String {
    let out = env.ok(&["tenant", "user", "invite", slug, email, "--role", role]);
    let link = out.lines().last().expect("link").trim().to_owned();
    let prefix = format!("https://{}/invite/", host_of(slug));
    assert!(link.starts_with(&prefix), "{out}");
    link.trim_start_matches(&format!("https://{}", host_of(slug)))
        .to_owned()
}

/// Accepts an invitation in `b`; returns the response to the form.
async fn accept(b: &mut Browser<'_>, slug: &str, path: &str, password: &str) -> crate::idp::Page {
    let host = host_of(slug);
    let page = b.get(&host, path).await;
    assert_eq!(page.status, 200, "{page:?}");
    let csrf = page.field("csrf").expect("csrf");
    b.post(&host, path, &[("csrf", &csrf), ("password", password)])
        .await
}

pub(crate) async fn password_login(
    b: &mut Browser<'_>,
    slug: &str,
    email: &str,
    password: &str,
) -> crate::idp::Page {
    let host = host_of(slug);
    let page = b.get(&host, "/login").await;
    let csrf = page.field("csrf").expect("login form");
    b.post(
        &host,
        "/login",
        &[("csrf", &csrf), ("email", email), ("password", password)],
    )
    .await
}

/// The code of the current 30-second step (the server accepts the previous and the next step
/// too, so a step boundary between computing and posting it does not matter).
fn totp_code(secret_b32: &str, offset_steps: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    totp_code_at_step(secret_b32, now.div_euclid(30) + offset_steps)
}

/// The code of one given 30-second step.
fn totp_code_at_step(secret_b32: &str, step: i64) -> String {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .expect("base32");
    let t = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        None,
        String::new(),
    );
    t.generate((step * 30) as u64)
}

/// The TOTP step the server last accepted for `email` (what a replay must reuse), read from the
/// tenant's database, so tests never depend on where a wall-clock step boundary falls.
async fn recorded_step(env: &TestEnv, slug: &str, email: &str) -> i64 {
    let db = env.tenant_db(slug).await;
    db.query_one(
        "select c.totp_last_step from local_credentials c join users u on u.id = c.user_id
          where u.email = $1",
        &[&email],
    )
    .await
    .expect("step")
    .get::<_, Option<i64>>(0)
    .expect("a step was recorded")
}

fn secret_on(page: &crate::idp::Page) -> String {
    let start = page
        .body
        .find("<code id=\"totp-secret\">")
        .expect("secret shown")
        + 23;
    let end = page.body[start..].find('<').expect("end") + start;
    page.body[start..end].to_owned()
}

/// Starts a TOTP enrolment (POST with CSRF) and reads the new secret from the MFA page.
async fn start_enrolment(b: &mut Browser<'_>, host: &str) -> (String, String) {
    let page = b.get(host, "/account/mfa").await;
    assert_eq!(page.status, 200, "{page:?}");
    let csrf = page.field("csrf").expect("csrf");
    let started = b.post(host, "/account/mfa/start", &[("csrf", &csrf)]).await;
    assert_eq!(
        started.location.as_deref(),
        Some("/account/mfa"),
        "{started:?}"
    );
    let mfa = b.get(host, "/account/mfa").await;
    (secret_on(&mfa), csrf)
}

/// Confirms a pending enrolment with the current code of `secret`.
async fn confirm_enrolment(
    b: &mut Browser<'_>,
    host: &str,
    csrf: &str,
    secret: &str,
) -> crate::idp::Page {
    let code = totp_code(secret, 0);
    b.post(host, "/account/mfa", &[("csrf", csrf), ("code", &code)])
        .await
}

async fn setup() -> (TestEnv, Server) {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let server = env.serve(&[]);
    (env, server)
}

#[tokio::test]
async fn invitation_password_and_totp() {
    let (env, server) = setup().await;
    let acme = host_of("acme");
    let path = invite(&env, "acme", "ann@acme.example", "admin");

    // The invitation is for acme only.
    let mut other = Browser::new(&server);
    assert_eq!(other.get(&host_of("globex"), &path).await.status, 404);

    let mut b = Browser::new(&server);
    // CSRF: a post without the form's token changes nothing.
    let no_csrf = b
        .post(&acme, &path, &[("csrf", "x"), ("password", PASSWORD)])
        .await;
    assert_eq!(no_csrf.status, 403, "{no_csrf:?}");
    // Password policy.
    let short = accept(&mut b, "acme", &path, "short").await;
    assert_eq!(short.status, 422, "{short:?}");
    assert!(short.body.contains("at least 12"), "{short:?}");
    let done = accept(&mut b, "acme", &path, PASSWORD).await;
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(done.location.as_deref(), Some("/account/mfa"));
    let me = b.whoami(&acme).await.expect("signed in");
    assert_eq!(me["caller"]["email"], "ann@acme.example");
    assert_eq!(me["caller"]["role"], "admin");
    // Single use.
    let mut again = Browser::new(&server);
    assert_eq!(again.get(&acme, &path).await.status, 404);

    // TOTP enrolment: started by a POST, the secret is shown, a wrong code is refused, the
    // right one enables it.
    let (secret, csrf) = start_enrolment(&mut b, &acme).await;
    let wrong = b
        .post(
            &acme,
            "/account/mfa",
            &[("csrf", &csrf), ("code", "000000")],
        )
        .await;
    assert_eq!(wrong.status, 422, "{wrong:?}");
    assert_eq!(
        secret_on(&wrong),
        secret,
        "the same secret is offered again"
    );
    let ok = confirm_enrolment(&mut b, &acme, &csrf, &secret).await;
    assert_eq!(ok.status, 303, "{ok:?}");

    // Sign in again: the password alone gives a session that authorises nothing yet.
    let mut c = Browser::new(&server);
    let step1 = password_login(&mut c, "acme", "ann@acme.example", PASSWORD).await;
    assert_eq!(step1.location.as_deref(), Some("/login/totp"), "{step1:?}");
    assert!(
        c.whoami(&acme).await.is_none(),
        "no access before the second factor"
    );
    let pending = c
        .cookie(&acme, "__Host-portico_session")
        .expect("pending session");
    // Neither the pending nor (below) the full session means anything on globex's host.
    let mut elsewhere = Browser::new(&server);
    elsewhere.plant(&host_of("globex"), "__Host-portico_session", &pending);
    let p = elsewhere.get(&host_of("globex"), "/login/totp").await;
    assert_eq!(p.location.as_deref(), Some("/login"), "{p:?}");
    let form = c.get(&acme, "/login/totp").await;
    let csrf = form.field("csrf").expect("csrf");
    let bad = c
        .post(&acme, "/login/totp", &[("csrf", &csrf), ("code", "123456")])
        .await;
    assert_refused(&env, "acme", &bad, "bad_totp");
    // The code used at enrolment is spent; the next step's code works once. Both are computed
    // from the step the server recorded, not from the clock: enrolment and this sign-in may
    // fall into different 30 s steps.
    let spent = recorded_step(&env, "acme", "ann@acme.example").await;
    let replay = c
        .post(
            &acme,
            "/login/totp",
            &[
                ("csrf", &csrf),
                ("code", &totp_code_at_step(&secret, spent)),
            ],
        )
        .await;
    assert_refused(&env, "acme", &replay, "totp_replayed");
    let next = totp_code_at_step(&secret, spent + 1);
    let good = c
        .post(&acme, "/login/totp", &[("csrf", &csrf), ("code", &next)])
        .await;
    assert_eq!(good.status, 303, "{good:?}");
    let full = c.cookie(&acme, "__Host-portico_session").expect("session");
    assert_ne!(full, pending, "rotated after the second factor");
    assert!(c.whoami(&acme).await.is_some());
    elsewhere.plant(&host_of("globex"), "__Host-portico_session", &full);
    for path in ["/account/mfa", "/"] {
        let p = elsewhere.get(&host_of("globex"), path).await;
        assert_eq!(p.location.as_deref(), Some("/login"), "{path}: {p:?}");
    }

    // Guessing codes: the password does not reset the lock that guards the second factor.
    let mut g = Browser::new(&server);
    assert_eq!(
        password_login(&mut g, "acme", "ann@acme.example", PASSWORD)
            .await
            .status,
        303
    );
    let csrf = g
        .get(&acme, "/login/totp")
        .await
        .field("csrf")
        .expect("csrf");
    for _ in 0..4 {
        let p = g
            .post(&acme, "/login/totp", &[("csrf", &csrf), ("code", "000000")])
            .await;
        assert!(p.failure_reference().is_some(), "{p:?}");
    }
    let mut h = Browser::new(&server);
    assert_eq!(
        password_login(&mut h, "acme", "ann@acme.example", PASSWORD)
            .await
            .status,
        303
    );
    let csrf = h
        .get(&acme, "/login/totp")
        .await
        .field("csrf")
        .expect("csrf");
    let fifth = h
        .post(&acme, "/login/totp", &[("csrf", &csrf), ("code", "000000")])
        .await;
    assert!(fifth.failure_reference().is_some(), "{fifth:?}");
    // Locked now: the password is refused before any code is looked at.
    let mut i = Browser::new(&server);
    let locked = password_login(&mut i, "acme", "ann@acme.example", PASSWORD).await;
    assert_refused(&env, "acme", &locked, "locked");
    env.cleanup().await;
}

#[tokio::test]
async fn lockout_csrf_and_generic_failures() {
    let (env, server) = setup().await;
    let acme = host_of("acme");
    let path = invite(&env, "acme", "bo@acme.example", "member");
    let mut b = Browser::new(&server);
    assert_eq!(accept(&mut b, "acme", &path, PASSWORD).await.status, 303);

    // Unknown e-mail and wrong password look the same to the browser.
    let mut x = Browser::new(&server);
    let unknown = password_login(&mut x, "acme", "nobody@acme.example", PASSWORD).await;
    assert_refused(&env, "acme", &unknown, "unknown_user");
    let wrong = password_login(&mut x, "acme", "bo@acme.example", "not the password").await;
    assert_refused(&env, "acme", &wrong, "bad_password");
    assert_eq!(
        unknown
            .body
            .replace(&unknown.failure_reference().unwrap_or_default(), ""),
        wrong
            .body
            .replace(&wrong.failure_reference().unwrap_or_default(), "")
    );
    // A login form post without the flow's CSRF token.
    let mut y = Browser::new(&server);
    let _ = y.get(&acme, "/login").await;
    let forged = y
        .post(
            &acme,
            "/login",
            &[
                ("csrf", "forged"),
                ("email", "bo@acme.example"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_refused(&env, "acme", &forged, "csrf");
    // The same account on another tenant's host does not exist.
    let mut z = Browser::new(&server);
    let elsewhere = password_login(&mut z, "globex", "bo@acme.example", PASSWORD).await;
    assert_refused(&env, "globex", &elsewhere, "unknown_user");

    // Five failures lock the account; then even the right password is refused.
    for _ in 0..4 {
        let p = password_login(&mut x, "acme", "bo@acme.example", "not the password").await;
        assert!(p.failure_reference().is_some());
    }
    let locked = password_login(&mut x, "acme", "bo@acme.example", PASSWORD).await;
    assert_refused(&env, "acme", &locked, "locked");
    env.cleanup().await;
}

#[tokio::test]
async fn deactivation_and_session_timeouts() {
    let (env, server) = setup().await;
    let acme = host_of("acme");
    for (email, _) in [
        ("cy@acme.example", 0),
        ("di@acme.example", 1),
        ("ed@acme.example", 2),
    ] {
        let path = invite(&env, "acme", email, "member");
        let mut b = Browser::new(&server);
        assert_eq!(accept(&mut b, "acme", &path, PASSWORD).await.status, 303);
    }
    let mut cy = Browser::new(&server);
    assert_eq!(
        password_login(&mut cy, "acme", "cy@acme.example", PASSWORD)
            .await
            .status,
        303
    );
    let mut di = Browser::new(&server);
    assert_eq!(
        password_login(&mut di, "acme", "di@acme.example", PASSWORD)
            .await
            .status,
        303
    );
    let mut ed = Browser::new(&server);
    assert_eq!(
        password_login(&mut ed, "acme", "ed@acme.example", PASSWORD)
            .await
            .status,
        303
    );

    // Deactivation ends sessions at once and refuses sign-in.
    env.ok(&["tenant", "user", "deactivate", "acme", "cy@acme.example"]);
    assert!(cy.whoami(&acme).await.is_none());
    let refused = password_login(&mut cy, "acme", "cy@acme.example", PASSWORD).await;
    assert_refused(&env, "acme", &refused, "user_deactivated");

    // Time passing, simulated in the tenant database: idle for longer than the idle timeout,
    // and past the absolute end.
    let p = env.platform().await;
    let db = p.connect_as_tenant("acme").await.expect("tenant db");
    assert!(di.whoami(&acme).await.is_some());
    db.execute(
        "update sessions s set last_seen_at = now() - interval '31 minutes'
           from users u where u.id = s.user_id and u.email = 'di@acme.example'",
        &[],
    )
    .await
    .expect("age");
    assert!(di.whoami(&acme).await.is_none(), "idle timeout");
    assert!(ed.whoami(&acme).await.is_some());
    db.execute(
        "update sessions s set expires_at = now() - interval '1 second'
           from users u where u.id = s.user_id and u.email = 'ed@acme.example'",
        &[],
    )
    .await
    .expect("expire");
    assert!(ed.whoami(&acme).await.is_none(), "absolute timeout");
    // Cookies never authorise a state change on the API.
    let mut again = Browser::new(&server);
    assert_eq!(
        password_login(&mut again, "acme", "ed@acme.example", PASSWORD)
            .await
            .status,
        303
    );
    let post = again
        .post(&acme, "/api/v1/sso/connections", &[("kind", "oidc")])
        .await;
    assert_eq!(post.status, 401, "{post:?}");
    drop(server);
    env.cleanup().await;
}

/// A GET changes nothing (the Lax session cookie rides cross-site navigations): it neither
/// replaces nor disables an active second factor. Replacing or removing it takes a POST with
/// CSRF and the current code or the password; until a new secret is confirmed, the old one
/// stays in force. Every change is audited.
#[tokio::test]
async fn an_active_second_factor_changes_only_with_reauthentication() {
    let (env, server) = setup().await;
    let acme = host_of("acme");
    let path = invite(&env, "acme", "fay@acme.example", "member");
    let mut b = Browser::new(&server);
    assert_eq!(accept(&mut b, "acme", &path, PASSWORD).await.status, 303);
    let (secret, csrf) = start_enrolment(&mut b, &acme).await;
    let ok = confirm_enrolment(&mut b, &acme, &csrf, &secret).await;
    assert_eq!(ok.status, 303, "{ok:?}");
    let db = env.tenant_db("acme").await;
    let state = || async {
        let r = db
            .query_one(
                "select c.totp_enabled, c.totp_secret_ciphertext, c.totp_pending_ciphertext is not null
                   from local_credentials c join users u on u.id = c.user_id
                  where u.email = 'fay@acme.example'",
                &[],
            )
            .await
            .expect("state");
        (
            r.get::<_, bool>(0),
            r.get::<_, Option<Vec<u8>>>(1),
            r.get::<_, bool>(2),
        )
    };
    let before = state().await;
    assert!(before.0 && before.1.is_some() && !before.2, "{before:?}");

    // The session means nothing on another tenant's host: the MFA forms there send it to sign in.
    let session = b.cookie(&acme, "__Host-portico_session").expect("session");
    let mut elsewhere = Browser::new(&server);
    elsewhere.plant(&host_of("globex"), "__Host-portico_session", &session);
    for path in ["/account/mfa/start", "/account/mfa/remove", "/account/mfa"] {
        let p = elsewhere
            .post(
                &host_of("globex"),
                path,
                &[("csrf", &csrf), ("password", PASSWORD), ("code", "000000")],
            )
            .await;
        assert_eq!(p.location.as_deref(), Some("/login"), "{path}: {p:?}");
    }

    // Any number of GETs: nothing changes (before the fix, each one wrote a new secret and
    // switched TOTP off).
    for _ in 0..3 {
        let page = b.get(&acme, "/account/mfa").await;
        assert_eq!(page.status, 200);
        assert!(
            page.body
                .contains("id=\"mfa-state\">Two-factor authentication is on"),
            "{page:?}"
        );
        assert!(!page.body.contains("totp-secret"), "no new secret on a GET");
    }
    assert_eq!(state().await, before);

    // Without the current code or password (or without CSRF): refused, nothing changes.
    let forged = b
        .post(&acme, "/account/mfa/start", &[("csrf", "forged")])
        .await;
    assert_eq!(forged.status, 403, "{forged:?}");
    let bare = b
        .post(&acme, "/account/mfa/start", &[("csrf", &csrf)])
        .await;
    assert_eq!(bare.status, 403, "{bare:?}");
    let wrong = b
        .post(
            &acme,
            "/account/mfa/remove",
            &[("csrf", &csrf), ("password", "not the password")],
        )
        .await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    assert_eq!(state().await, before);

    // With the password: a new secret waits beside the active one, which still signs in.
    let replace = b
        .post(
            &acme,
            "/account/mfa/start",
            &[("csrf", &csrf), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        replace.location.as_deref(),
        Some("/account/mfa"),
        "{replace:?}"
    );
    let pending = state().await;
    assert!(
        pending.0 && pending.1 == before.1 && pending.2,
        "{pending:?}"
    );
    let new_secret = secret_on(&b.get(&acme, "/account/mfa").await);
    assert_ne!(new_secret, secret);
    let mut c = Browser::new(&server);
    let step1 = password_login(&mut c, "acme", "fay@acme.example", PASSWORD).await;
    assert_eq!(step1.location.as_deref(), Some("/login/totp"), "{step1:?}");
    let spent = recorded_step(&env, "acme", "fay@acme.example").await;
    let form = c.get(&acme, "/login/totp").await;
    let totp_csrf = form.field("csrf").expect("csrf");
    let good = c
        .post(
            &acme,
            "/login/totp",
            &[
                ("csrf", &totp_csrf),
                ("code", &totp_code_at_step(&secret, spent + 1)),
            ],
        )
        .await;
    assert_eq!(
        good.status, 303,
        "the old factor is in force until the new one is confirmed: {good:?}"
    );
    // Confirmed: the new secret is the factor.
    let confirm = confirm_enrolment(&mut b, &acme, &csrf, &new_secret).await;
    assert_eq!(confirm.status, 303, "{confirm:?}");
    let after = state().await;
    assert!(after.0 && after.1 != before.1 && !after.2, "{after:?}");

    // Removal with the current code (of the new secret), once.
    let spent = recorded_step(&env, "acme", "fay@acme.example").await;
    let code = totp_code_at_step(&new_secret, spent + 1);
    let removed = b
        .post(
            &acme,
            "/account/mfa/remove",
            &[("csrf", &csrf), ("current_code", &code)],
        )
        .await;
    assert_eq!(
        removed.location.as_deref(),
        Some("/account/mfa"),
        "{removed:?}"
    );
    let off = state().await;
    assert!(!off.0 && off.1.is_none(), "{off:?}");

    let events = env.json(&[
        "tenant", "user", "events", "acme", "--json", "--limit", "100",
    ]);
    let mfa: Vec<(String, String)> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["event_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("mfa_"))
        })
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or("").to_owned(),
                e["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("mfa_enrolment_started", "failure"),
        ("mfa_enrolment_started", "success"),
        ("mfa_enrolled", "success"),
        ("mfa_removed", "failure"),
        ("mfa_removed", "success"),
    ] {
        assert!(
            mfa.iter()
                .any(|(t, o)| (t.as_str(), o.as_str()) == expected),
            "{expected:?} missing from {mfa:?}"
        );
    }
    env.cleanup().await;
}
