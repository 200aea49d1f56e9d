//! SAML 2.0 sign-in against a real IdP (`samlify`): SP- and IdP-initiated flows, and every way
//! a response must be refused — wrong key, tampering, missing or weak signatures, wrong
//! audience/destination/recipient, expiry, replay, unsolicited responses, signature wrapping,
//! and another tenant's IdP.

use serde_json::json;

use crate::idp::{Browser, Page, SamlIdp, decode, encode};
use crate::sso_oidc::{LOOPBACK, assert_refused};
use crate::support::{Backend, Server, TestEnv, host_of};

struct Setup {
    env: TestEnv,
    idp: SamlIdp,
    other_idp: SamlIdp,
    server: Server,
}

fn sp_entity(slug: &str, conn: &str) -> String {
    format!("https://{}/sso/saml/{conn}/metadata", host_of(slug))
}

async fn register(server: &Server, idp: &SamlIdp, slug: &str, conn: &str) -> String {
    let mut b = Browser::new(server);
    let md = b
        .get(&host_of(slug), &format!("/sso/saml/{conn}/metadata"))
        .await;
    assert_eq!(md.status, 200, "{md:?}");
    idp.register_sp(&md.body).await;
    md.body
}

/// acme: `corp` (SP-initiated only, groups mapped) and `direct` (IdP-initiated allowed), both
/// trusting `idp`; globex: `corp` trusting `other_idp`.
async fn setup() -> Setup {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let idp = SamlIdp::start();
    let other_idp = SamlIdp::start();
    let md = idp.metadata_url();
    env.ok_with(
        &[
            "tenant",
            "sso",
            "add-saml",
            "--email-authoritative",
            "acme",
            "--name",
            "corp",
            "--metadata-url",
            &md,
            "--map-group",
            "admins=admin",
        ],
        &[LOOPBACK],
    );
    env.ok_with(
        &[
            "tenant",
            "sso",
            "add-saml",
            "--email-authoritative",
            "acme",
            "--name",
            "direct",
            "--metadata-url",
            &md,
            "--allow-idp-initiated",
        ],
        &[LOOPBACK],
    );
    let other_md = other_idp.metadata_url();
    env.ok_with(
        &[
            "tenant",
            "sso",
            "add-saml",
            "--email-authoritative",
            "globex",
            "--name",
            "corp",
            "--metadata-url",
            &other_md,
        ],
        &[LOOPBACK],
    );
    let server = env.serve(&[LOOPBACK]);
    register(&server, &idp, "acme", "corp").await;
    register(&server, &idp, "acme", "direct").await;
    register(&server, &other_idp, "globex", "corp").await;
    Setup {
        env,
        idp,
        other_idp,
        server,
    }
}

/// Starts an SP-initiated sign-in at `slug`/`conn`; returns the IdP redirect URL.
async fn start(b: &mut Browser<'_>, slug: &str, conn: &str) -> String {
    let p = b.get(&host_of(slug), &format!("/sso/{conn}/start")).await;
    assert_eq!(p.status, 303, "{p:?}");
    p.location.expect("IdP URL")
}

async fn post_acs(b: &mut Browser<'_>, slug: &str, conn: &str, response: &str) -> Page {
    b.post(
        &host_of(slug),
        &format!("/sso/saml/{conn}/acs"),
        &[("SAMLResponse", response), ("RelayState", "")],
    )
    .await
}

/// One SP-initiated attempt at acme/corp with IdP overrides and a tampering step.
async fn attempt<'s>(
    s: &'s Setup,
    overrides: &[(&str, &str)],
    tamper: impl Fn(String) -> String,
) -> (Browser<'s>, Page) {
    let mut b = Browser::new(&s.server);
    let url = start(&mut b, "acme", "corp").await;
    let (acs, response, _) = s.idp.answer(&url, "alice", overrides).await;
    assert_eq!(
        acs,
        format!("https://{}/sso/saml/corp/acs", host_of("acme"))
    );
    let response = encode(&tamper(decode(&response)));
    let page = post_acs(&mut b, "acme", "corp", &response).await;
    (b, page)
}

fn assertion_of(xml: &str) -> (usize, usize) {
    let start = xml.find("<saml:Assertion").expect("assertion");
    let end = xml.find("</saml:Assertion>").expect("assertion end") + "</saml:Assertion>".len();
    (start, end)
}

fn without_signatures(xml: &str) -> String {
    let mut out = xml.to_owned();
    while let (Some(a), Some(b)) = (out.find("<ds:Signature"), out.find("</ds:Signature>")) {
        out.replace_range(a..b + "</ds:Signature>".len(), "");
    }
    out
}

/// An unsigned copy of the signed assertion, for mallory, with a new ID.
fn evil_assertion(signed: &str) -> String {
    let id_start = signed.find("ID=\"").expect("ID") + 4;
    let id_end = signed[id_start..].find('"').expect("ID end") + id_start;
    let mut evil = without_signatures(signed);
    evil = evil.replacen(&signed[id_start..id_end], "_evil-assertion", 1);
    evil.replace("alice@example.test", "mallory@example.test")
}

fn nobody_named_mallory(env: &TestEnv) {
    let users = env.json(&["tenant", "user", "list", "acme", "--json"]);
    assert!(!users.to_string().contains("mallory"), "{users}");
}

#[tokio::test]
async fn saml_sp_and_idp_initiated_sign_in() {
    let s = setup().await;
    let acme = host_of("acme");

    // SP metadata names this tenant's host and this connection.
    let mut b = Browser::new(&s.server);
    let md = b.get(&acme, "/sso/saml/corp/metadata").await;
    assert!(
        md.body
            .contains(&format!("entityID=\"{}\"", sp_entity("acme", "corp"))),
        "{}",
        md.body
    );
    assert!(
        md.body
            .contains(&format!("https://{acme}/sso/saml/corp/acs")),
        "{}",
        md.body
    );

    // globex's metadata names globex; acme's IdP-initiated connection does not exist there.
    let theirs = b.get(&host_of("globex"), "/sso/saml/corp/metadata").await;
    assert!(
        theirs
            .body
            .contains(&format!("entityID=\"{}\"", sp_entity("globex", "corp")))
    );
    assert_eq!(
        b.get(&host_of("globex"), "/sso/saml/direct/metadata")
            .await
            .status,
        404
    );

    // SP-initiated, with a group mapped to admin.
    let url = start(&mut b, "acme", "corp").await;
    assert!(url.starts_with(&s.idp.base), "{url}");
    let (_, response, _) = s.idp.answer(&url, "alice", &[("groups", "admins")]).await;
    let done = post_acs(&mut b, "acme", "corp", &response).await;
    assert_eq!(done.status, 303, "{done:?}");
    let me = b.whoami(&acme).await.expect("signed in");
    assert_eq!(me["caller"]["email"], "alice@example.test");
    assert_eq!(me["caller"]["role"], "admin");
    // The session is host-only: not on globex.
    let v = b.cookie(&acme, "__Host-portico_session").expect("cookie");
    let mut other = Browser::new(&s.server);
    other.plant(&host_of("globex"), "__Host-portico_session", &v);
    assert!(other.whoami(&host_of("globex")).await.is_none());

    // The same response again: its request is used up and its assertion id is spent.
    let again = post_acs(&mut b, "acme", "corp", &response).await;
    assert!(again.failure_reference().is_some(), "{again:?}");

    // IdP-initiated on the connection that allows it.
    let unsolicited = s
        .idp
        .issue(json!({"sp_entity_id": sp_entity("acme", "direct"), "login": "dora"}))
        .await;
    let mut d = Browser::new(&s.server);
    let done = post_acs(&mut d, "acme", "direct", &unsolicited).await;
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(
        d.whoami(&acme).await.expect("signed in")["caller"]["email"],
        "dora@example.test"
    );
    // Replayed (another browser, another instance would see the same shared cache).
    let mut r = Browser::new(&s.server);
    let page = post_acs(&mut r, "acme", "direct", &unsolicited).await;
    assert_refused(&s.env, "acme", &page, "saml_replay");
    s.env.cleanup().await;
}

#[tokio::test]
async fn unsolicited_and_unknown_responses_are_refused() {
    let s = setup().await;
    // IdP-initiated is off for `corp`.
    let unsolicited = s
        .idp
        .issue(json!({"sp_entity_id": sp_entity("acme", "corp")}))
        .await;
    let mut b = Browser::new(&s.server);
    let page = post_acs(&mut b, "acme", "corp", &unsolicited).await;
    assert_refused(&s.env, "acme", &page, "saml_unsolicited");
    // Still off when the browser has a flow with a pending request of its own.
    let _ = start(&mut b, "acme", "corp").await;
    let page = post_acs(&mut b, "acme", "corp", &unsolicited).await;
    assert!(page.failure_reference().is_some(), "{page:?}");
    // On `direct`, a response that names a request must name one of this browser's.
    let named = s
        .idp
        .issue(json!({"sp_entity_id": sp_entity("acme", "direct"), "in_response_to": "_not-a-request-of-ours"}))
        .await;
    let mut b = Browser::new(&s.server);
    let _ = start(&mut b, "acme", "direct").await;
    let page = post_acs(&mut b, "acme", "direct", &named).await;
    assert_refused(&s.env, "acme", &page, "saml_unknown_request");
    // A request started by another browser does not count.
    let mut victim = Browser::new(&s.server);
    let url = start(&mut victim, "acme", "corp").await;
    let (_, response, _) = s.idp.answer(&url, "mallory", &[]).await;
    let mut attacker = Browser::new(&s.server);
    let _ = start(&mut attacker, "acme", "corp").await;
    let page = post_acs(&mut attacker, "acme", "corp", &response).await;
    assert_refused(&s.env, "acme", &page, "saml_unknown_request");
    nobody_named_mallory(&s.env);
    s.env.cleanup().await;
}

#[tokio::test]
async fn wrong_keys_tampering_and_weak_signatures_are_refused() {
    let s = setup().await;
    let same = |x: String| x;

    // Signed by a key that is not the connection's certificate.
    let (_, page) = attempt(&s, &[("key", "rogue")], same).await;
    assert_refused(&s.env, "acme", &page, "saml_rejected");
    // Signed response and assertion by the rogue key.
    let (_, page) = attempt(&s, &[("key", "rogue"), ("sign", "both")], same).await;
    assert_refused(&s.env, "acme", &page, "saml_rejected");

    // Altered after signing.
    let (_, page) = attempt(&s, &[], |x| {
        x.replace("alice@example.test", "mallory@example.test")
    })
    .await;
    assert_refused(&s.env, "acme", &page, "saml_rejected");
    // Signature removed.
    let (_, page) = attempt(&s, &[], |x| without_signatures(&x)).await;
    assert_refused(&s.env, "acme", &page, "saml_unsigned");
    // SHA-1 (RSA-SHA1 signature, SHA-1 digest), correctly signed by the right key.
    let (_, page) = attempt(&s, &[("alg", "sha1")], same).await;
    assert_refused(&s.env, "acme", &page, "saml_weak_algorithm");
    // A DOCTYPE (entity expansion) never reaches the parser.
    let (_, page) = attempt(&s, &[], |x| format!("<!DOCTYPE r [<!ENTITY e \"x\">]>{x}")).await;
    assert_refused(&s.env, "acme", &page, "saml_doctype");
    // Oversized input is refused before decoding.
    let mut b = Browser::new(&s.server);
    let _ = start(&mut b, "acme", "corp").await;
    let page = post_acs(&mut b, "acme", "corp", &"A".repeat(300 * 1024)).await;
    assert_refused(&s.env, "acme", &page, "saml_too_large");
    nobody_named_mallory(&s.env);

    // The controls: the same IdP with its own key and SHA-256 signs alice in, whether it signs
    // the response only, or the response and the assertion.
    let (mut r, page) = attempt(&s, &[("sign", "response")], same).await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(r.whoami(&host_of("acme")).await.is_some());
    let (mut b, page) = attempt(&s, &[("sign", "both")], same).await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(b.whoami(&host_of("acme")).await.is_some());
    s.env.cleanup().await;
}

#[tokio::test]
async fn audience_destination_recipient_and_validity_are_enforced() {
    let s = setup().await;
    let same = |x: String| x;
    let other_acs = format!("https://{}/sso/saml/corp/acs", host_of("globex"));
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("audience", "https://evil.example/sp")], "wrong audience"),
        (
            &[("audience", &sp_entity("globex", "corp"))],
            "another tenant's audience",
        ),
        (&[("destination", &other_acs)], "wrong destination"),
        (&[("recipient", &other_acs)], "wrong recipient"),
        (
            &[
                ("not_on_or_after_s", "-120"),
                ("issue_instant_s", "-400"),
                ("not_before_s", "-400"),
            ],
            "expired",
        ),
        (&[("not_before_s", "300")], "not yet valid"),
        (
            &[("issuer", "https://impostor.example/idp")],
            "wrong issuer",
        ),
    ];
    for (overrides, what) in cases {
        let (_, page) = attempt(&s, overrides, same).await;
        assert!(page.failure_reference().is_some(), "{what}: {page:?}");
        assert_refused(&s.env, "acme", &page, "saml_rejected");
    }
    // 60 s of clock skew are tolerated, not more.
    let (_, page) = attempt(&s, &[("not_before_s", "45")], same).await;
    assert_eq!(page.status, 303, "within skew: {page:?}");
    s.env.cleanup().await;
}

#[tokio::test]
async fn signature_wrapping_and_another_tenants_idp_are_refused() {
    let s = setup().await;

    // Unsigned assertion inserted before the signed one.
    let (_, page) = attempt(&s, &[], |x| {
        let (a, b) = assertion_of(&x);
        let evil = evil_assertion(&x[a..b]);
        format!("{}{evil}{}", &x[..a], &x[a..])
    })
    .await;
    assert_refused(&s.env, "acme", &page, "saml_structure");
    // Signed assertion moved inside the attacker's assertion, which takes its place.
    let (_, page) = attempt(&s, &[], |x| {
        let (a, b) = assertion_of(&x);
        let signed = &x[a..b];
        let evil = evil_assertion(signed);
        let issuer_end = evil.find("</saml:Issuer>").expect("issuer") + "</saml:Issuer>".len();
        let wrapped = format!("{}{signed}{}", &evil[..issuer_end], &evil[issuer_end..]);
        format!("{}{wrapped}{}", &x[..a], &x[b..])
    })
    .await;
    assert_refused(&s.env, "acme", &page, "saml_structure");
    // Signed response (not assertion): the attacker swaps the assertion inside it.
    let (_, page) = attempt(&s, &[("sign", "response")], |x| {
        let (a, b) = assertion_of(&x);
        let evil = evil_assertion(&x[a..b]);
        format!("{}{evil}{}", &x[..a], &x[b..])
    })
    .await;
    assert!(page.failure_reference().is_some(), "swapped: {page:?}");
    nobody_named_mallory(&s.env);

    // Tenant globex's admin controls `other_idp`. It is told about acme's SP and signs a
    // perfect-looking answer to acme's own pending request: acme trusts only its IdP's
    // certificate and entity id.
    register(&s.server, &s.other_idp, "acme", "corp").await;
    let mut b = Browser::new(&s.server);
    let url = start(&mut b, "acme", "corp").await;
    let foreign_url = url.replacen(&s.idp.base, &s.other_idp.base, 1);
    let (acs, response, _) = s.other_idp.answer(&foreign_url, "mallory", &[]).await;
    assert_eq!(
        acs,
        format!("https://{}/sso/saml/corp/acs", host_of("acme"))
    );
    let page = post_acs(&mut b, "acme", "corp", &response).await;
    assert_refused(&s.env, "acme", &page, "saml_rejected");
    // And globex's genuine response posted to acme's ACS.
    let mut g = Browser::new(&s.server);
    let url = start(&mut g, "globex", "corp").await;
    let (_, response, _) = s.other_idp.answer(&url, "mallory", &[]).await;
    let _ = start(&mut g, "acme", "corp").await;
    let page = post_acs(&mut g, "acme", "corp", &response).await;
    assert!(page.failure_reference().is_some(), "{page:?}");
    nobody_named_mallory(&s.env);
    // While globex's own ACS takes it.
    let page = post_acs(&mut g, "globex", "corp", &response).await;
    assert_eq!(page.status, 303, "{page:?}");
    s.env.cleanup().await;
}

#[tokio::test]
async fn saml_metadata_is_validated_when_a_connection_is_saved() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let idp = SamlIdp::start();
    // No signing certificate: samael would skip signature checks entirely.
    let r = env.run_with(
        &[
            "tenant",
            "sso",
            "add-saml",
            "acme",
            "--name",
            "nosig",
            "--metadata-url",
            &format!("{}?nosigning=1", idp.metadata_url()),
        ],
        &[LOOPBACK],
    );
    r.assert_error("no signing certificate");
    // The same from a file.
    let md = reqwest::get(format!("{}?nosigning=1", idp.metadata_url()))
        .await
        .expect("md")
        .text()
        .await
        .expect("md");
    let file = env.dir.path().join("md.xml");
    std::fs::write(&file, md).expect("file");
    env.run(&[
        "tenant",
        "sso",
        "add-saml",
        "acme",
        "--name",
        "nosig",
        "--metadata-file",
        file.to_str().expect("p"),
    ])
    .assert_error("no signing certificate");
    // Private, link-local and plain-HTTP addresses are not fetched.
    for url in [
        "https://10.1.2.3/md",
        "https://169.254.169.254/latest",
        &idp.metadata_url(),
    ] {
        env.run(&[
            "tenant",
            "sso",
            "add-saml",
            "acme",
            "--name",
            "x",
            "--metadata-url",
            url,
        ])
        .assert_error("not an allowed URL");
    }
    // Entities and DOCTYPEs in metadata.
    std::fs::write(&file, "<!DOCTYPE x [<!ENTITY a \"b\">]><EntityDescriptor/>").expect("file");
    env.run(&[
        "tenant",
        "sso",
        "add-saml",
        "acme",
        "--name",
        "x",
        "--metadata-file",
        file.to_str().expect("p"),
    ])
    .assert_error("DOCTYPE");
    let listed = env.json(&["tenant", "sso", "list", "acme", "--json"]);
    assert_eq!(listed, json!([]), "nothing was saved");
    env.cleanup().await;
}

/// Reproduces the samael 0.0.22 pitfall the connection rules exist for: with IdP metadata that
/// has no signing certificate, samael's own parsing verifies nothing and accepts a forged,
/// unsigned response. Our validation refuses the same response.
#[tokio::test]
async fn samael_alone_accepts_unsigned_responses_when_metadata_has_no_key() {
    use portico_tenant_runtime::identity::saml::{self, SpUrls};
    use portico_tenant_runtime::store::connections::SamlConfig;
    let idp = SamlIdp::start();
    let http = reqwest::Client::new();
    let fetch = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("md")
                .text()
                .await
                .expect("md")
        }
    };
    let with_key = fetch(idp.metadata_url()).await;
    let without_key = fetch(format!("{}?nosigning=1", idp.metadata_url())).await;
    let info = saml::parse_idp_metadata(&with_key).expect("good metadata");
    assert!(saml::parse_idp_metadata(&without_key).is_err());

    let urls = SpUrls::new("https://acme.portal.test", "corp");
    let cfg = SamlConfig {
        idp_entity_id: info.entity_id.clone(),
        metadata_xml: with_key,
        sso_url: info.sso_url,
        allow_idp_initiated: true,
        group_attribute: "groups".into(),
        metadata_url: None,
        email_authoritative: true,
    };
    idp.register_sp(&saml::sp_metadata(&cfg, &urls).expect("SP metadata"))
        .await;
    let genuine = decode(
        &idp.issue(json!({"sp_entity_id": urls.entity_id, "login": "alice"}))
            .await,
    );
    let forged = without_signatures(&genuine).replace("alice@example.test", "mallory@example.test");

    let naive = samael::service_provider::ServiceProvider {
        entity_id: Some(urls.entity_id.clone()),
        acs_url: Some(urls.acs_url.clone()),
        idp_metadata: without_key.parse().expect("metadata"),
        allow_idp_initiated: true,
        ..Default::default()
    };
    let accepted = naive
        .parse_xml_response(&forged, None)
        .expect("samael accepts it");
    assert_eq!(
        accepted
            .subject
            .and_then(|s| s.name_id)
            .map(|n| n.value)
            .as_deref(),
        Some("mallory@example.test")
    );

    // Ours: refused with the key-less metadata, and with the real one.
    let keyless = SamlConfig {
        metadata_xml: without_key,
        ..cfg.clone()
    };
    assert!(saml::validate_response(&keyless, &urls, &encode(&forged), &[]).is_err());
    let e = saml::validate_response(&cfg, &urls, &encode(&forged), &[]).expect_err("forged");
    assert_eq!(e.reason(), "saml_unsigned");
    let ok = saml::validate_response(&cfg, &urls, &encode(&genuine), &[]).expect("genuine");
    assert_eq!(ok.subject, "alice@example.test");
}

/// Open redirects: `return_to` (SP-initiated) and `RelayState` (IdP-initiated) are followed
/// only to a path of the tenant's own origin, as a browser would resolve them.
#[tokio::test]
async fn return_to_and_relay_state_never_leave_the_tenant_origin() {
    let s = setup().await;
    let acme = host_of("acme");
    // A browser drops tab and newline and reads `\` as `/`: each of these would be `//example.org`.
    let hostile = [
        "/\t/example.org",
        "/\n/example.org",
        "/\\example.org",
        "\\\\example.org",
        "//example.org",
        "https://example.org/",
    ];
    let cases: Vec<(&str, &str)> = hostile
        .iter()
        .map(|h| (*h, "/"))
        .chain([
            ("/%2F/example.org", "/%2F/example.org"),
            ("/%40example.org", "/%40example.org"),
            ("/documents?site=berlin", "/documents?site=berlin"),
        ])
        .collect();
    for (raw, expected) in &cases {
        // SP-initiated: the value rides the start request.
        let mut b = Browser::new(&s.server);
        let idp_url = b.start_sso(&acme, "corp", raw).await;
        let (_, response, _) = s.idp.answer(&idp_url, "alice", &[]).await;
        let done = post_acs(&mut b, "acme", "corp", &response).await;
        assert_eq!(done.status, 303, "{raw:?}: {done:?}");
        assert_eq!(done.location.as_deref(), Some(*expected), "{raw:?}");

        // IdP-initiated: the value is the RelayState.
        let unsolicited = s
            .idp
            .issue(json!({"sp_entity_id": sp_entity("acme", "direct"), "login": "dora"}))
            .await;
        let mut d = Browser::new(&s.server);
        let done = d
            .post(
                &acme,
                "/sso/saml/direct/acs",
                &[("SAMLResponse", &unsolicited), ("RelayState", raw)],
            )
            .await;
        assert_eq!(done.status, 303, "{raw:?}: {done:?}");
        assert_eq!(done.location.as_deref(), Some(*expected), "{raw:?}");
    }
    s.env.cleanup().await;
}

/// The IdP's e-mail is an identity claim only when the IdP vouches for it (SAML: the connection
/// is marked `--email-authoritative`; OIDC: `email_verified`), and a sign-in never takes over
/// an address another user holds. The user stays identified by (connection, subject).
#[tokio::test]
async fn asserted_emails_count_only_when_vouched_for_and_never_take_anothers() {
    let s = setup().await;
    // A connection whose IdP e-mail is not authoritative.
    s.env.ok_with(
        &[
            "tenant",
            "sso",
            "add-saml",
            "acme",
            "--name",
            "plain",
            "--metadata-url",
            &s.idp.metadata_url(),
            "--allow-idp-initiated",
        ],
        &[LOOPBACK],
    );
    register(&s.server, &s.idp, "acme", "plain").await;
    let (_, _) = crate::portal::user(&s.env, "acme", "boss@acme.example", "admin").await;
    let sign_in = |conn: &'static str, login: &'static str, email: Option<&'static str>| {
        let s = &s;
        async move {
            let mut params = json!({"sp_entity_id": sp_entity("acme", conn), "login": login});
            if let Some(e) = email {
                params["email"] = e.into();
            }
            let response = s.idp.issue(params).await;
            let mut b = Browser::new(&s.server);
            let done = post_acs(&mut b, "acme", conn, &response).await;
            assert_eq!(done.status, 303, "{done:?}");
            b.whoami(&host_of("acme")).await.expect("signed in")["caller"].clone()
        }
    };
    // Not authoritative: no e-mail; the user acts as user:<id>, the audit names the identity.
    let caller = sign_in("plain", "nina", Some("boss@acme.example")).await;
    assert_eq!(caller["email"], serde_json::Value::Null, "{caller}");
    assert!(
        caller["name"].as_str().unwrap_or("").starts_with("user:"),
        "{caller}"
    );
    // Authoritative, but the address is another user's: not taken.
    let caller = sign_in("direct", "dora", Some("boss@acme.example")).await;
    assert_eq!(caller["email"], serde_json::Value::Null, "{caller}");
    // Her own address: taken; then another user's again: kept as it was.
    let caller = sign_in("direct", "dora", None).await;
    assert_eq!(caller["email"], "dora@example.test");
    let caller = sign_in("direct", "dora", Some("boss@acme.example")).await;
    assert_eq!(
        caller["email"], "dora@example.test",
        "never overwritten with another's"
    );
    let users = s.env.json(&["tenant", "user", "list", "acme", "--json"]);
    let bosses = users
        .as_array()
        .expect("users")
        .iter()
        .filter(|u| u["email"] == "boss@acme.example")
        .count();
    assert_eq!(bosses, 1, "{users}");
    let events = s.env.json(&["tenant", "user", "events", "acme", "--json"]);
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["event_type"] == "login_success"
                && e["actor"] == "plain:nina@example.test"
                && e["details"]["email_verified"] == false),
        "{events}"
    );
    s.env.cleanup().await;
}
