//! SAML 2.0 service provider, one per (tenant host, connection), on top of samael.
//!
//! samael 0.0.22 is used through its response-parsing path (`parse_xml_response`), which
//! verifies signatures with xmlsec and then parses only what the verified signature covered.
//! Its defaults are not trusted; this module adds what it leaves out:
//!
//! - **No signing certificate, no login.** samael skips signature verification entirely when
//!   the IdP metadata has no signing key; such metadata is refused at save time
//!   ([`parse_idp_metadata`]) and again before every parse.
//! - **Algorithm allow-list.** RSA/ECDSA with SHA-256 or stronger, given to samael *and*
//!   checked on the raw document first, so a SHA-1 signature is named as such.
//! - **Audience required.** samael accepts an assertion without `AudienceRestriction`.
//! - **Clock skew** 60 s (samael's default is 180 s).
//! - **IdP-initiated only when unsolicited.** samael's `allow_idp_initiated` skips the
//!   `InResponseTo` check altogether; here a response that names a request must name a pending
//!   request of this browser even on connections that accept unsolicited responses.
//! - **Input hygiene.** Oversized input and any DOCTYPE/ENTITY declaration are refused before
//!   any XML parser sees the document.
//! - **Replay.** The caller records the assertion id in the shared replay table
//!   ([`ValidAssertion::replay_until`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samael::crypto::AllowedSignatureAlgorithm;
use samael::metadata::EntityDescriptor;
use samael::service_provider::{ServiceProvider, ServiceProviderBuilder};
use samael::traits::ToXml;
use time::OffsetDateTime;

use crate::store::connections::SamlConfig;

/// Largest `SAMLResponse` accepted (base64 characters).
pub const MAX_RESPONSE_B64: usize = 256 * 1024;
/// Largest IdP metadata document accepted.
pub const MAX_METADATA_BYTES: usize = 512 * 1024;
/// Tolerated clock difference with the IdP.
pub const CLOCK_SKEW_S: i64 = 60;

const HTTP_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";

/// Why a SAML response (or metadata) was refused. The reason goes to the audit log; the browser
/// only ever sees a generic page.
#[derive(Debug, thiserror::Error)]
pub enum SamlError {
    #[error("input too large")]
    TooLarge,
    #[error("DOCTYPE or entity declarations are not allowed")]
    Doctype,
    #[error("not base64 or not UTF-8")]
    Encoding,
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("IdP metadata has no signing certificate")]
    NoSigningCertificate,
    #[error("IdP metadata has no HTTP-Redirect single sign-on service")]
    NoSsoService,
    #[error("IdP metadata has no entity id")]
    NoEntityId,
    #[error("signature algorithm not allowed: {0}")]
    WeakAlgorithm(String),
    #[error("response is not signed")]
    Unsigned,
    #[error("unsolicited response, and IdP-initiated login is off for this connection")]
    Unsolicited,
    #[error("InResponseTo names no pending request of this browser")]
    UnknownRequest,
    #[error("not exactly one assertion, or an assertion out of place (signature wrapping)")]
    Structure,
    #[error("assertion has no audience restriction")]
    NoAudience,
    #[error("assertion has no subject")]
    NoSubject,
    #[error("rejected by validation: {0}")]
    Rejected(String),
}

impl SamlError {
    /// A short stable reason for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "saml_too_large",
            Self::Doctype => "saml_doctype",
            Self::Encoding => "saml_encoding",
            Self::Malformed(_) => "saml_malformed",
            Self::NoSigningCertificate => "saml_no_signing_certificate",
            Self::NoSsoService => "saml_no_sso_service",
            Self::NoEntityId => "saml_no_entity_id",
            Self::WeakAlgorithm(_) => "saml_weak_algorithm",
            Self::Unsigned => "saml_unsigned",
            Self::Unsolicited => "saml_unsolicited",
            Self::UnknownRequest => "saml_unknown_request",
            Self::Structure => "saml_structure",
            Self::NoAudience => "saml_no_audience",
            Self::NoSubject => "saml_no_subject",
            Self::Rejected(_) => "saml_rejected",
        }
    }
}

/// The SP's identifiers for one connection on one tenant host. They put the tenant and the
/// connection into every response's Audience, Destination and Recipient.
#[derive(Debug, Clone)]
pub struct SpUrls {
    pub entity_id: String,
    pub acs_url: String,
}

impl SpUrls {
    pub fn new(origin: &str, connection: &str) -> Self {
        Self {
            entity_id: format!("{origin}/sso/saml/{connection}/metadata"),
            acs_url: format!("{origin}/sso/saml/{connection}/acs"),
        }
    }
}

fn allowed_algorithms() -> Vec<AllowedSignatureAlgorithm> {
    use AllowedSignatureAlgorithm::*;
    vec![
        RsaSha256,
        RsaSha384,
        RsaSha512,
        EcdsaSha256,
        EcdsaSha384,
        EcdsaSha512,
    ]
}

/// Refuses DOCTYPE/ENTITY declarations (and any other `<!` construct but comments and CDATA)
/// before a parser sees the document: no entity expansion, no external fetches.
fn check_no_doctype(xml: &str) -> Result<(), SamlError> {
    let mut rest = xml;
    while let Some(i) = rest.find("<!") {
        let after = &rest[i + 2..];
        if !(after.starts_with("--") || after.starts_with("[CDATA[")) {
            return Err(SamlError::Doctype);
        }
        rest = after;
    }
    Ok(())
}

/// Refuses an XML declaration (`<?xml … encoding="…"?>`) naming any encoding but UTF-8,
/// before libxml2 sees the document. We decoded it as UTF-8; a parser told otherwise would
/// read other characters than every check before it (UTF-7 and UTF-16 tricks hide markup).
///
/// Entity loading and network access need no parser flag here: every `<!DOCTYPE`/`<!ENTITY`
/// is refused before parsing ([`check_no_doctype`]), so no external entity, DTD or
/// parameter entity can be named, and libxml2 never processes XInclude unless asked to.
fn check_utf8_declaration(xml: &str) -> Result<(), SamlError> {
    let lower = xml.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("<?xml") {
        let decl = &rest[i + 5..];
        let end = decl.find("?>").ok_or(SamlError::Encoding)?;
        let decl = &decl[..end];
        if let Some(at) = decl.find("encoding") {
            let value = decl[at + 8..]
                .trim_start()
                .strip_prefix('=')
                .map(str::trim_start)
                .and_then(|v| {
                    let quote = v.chars().next().filter(|q| *q == '"' || *q == '\'')?;
                    v[1..].split(quote).next()
                })
                .ok_or(SamlError::Encoding)?;
            if value != "utf-8" {
                return Err(SamlError::Encoding);
            }
        }
        rest = &rest[i + 5 + end..];
    }
    Ok(())
}

/// What the raw document looks like before anything is verified.
struct Shape {
    /// The root's `InResponseTo`, only used to pick the stricter path (a response that names
    /// a request is always checked against this browser's pending requests).
    in_response_to: Option<String>,
}

/// One pass over the raw document, before samael verifies anything:
///
/// - a `Response` root whose `Destination`, when present, is this ACS (samael drops the
///   unsigned envelope when only the assertion is signed, and with it this check);
/// - exactly one `Assertion` element, directly under the root. A second assertion anywhere is
///   how signature-wrapping attacks look; the verified one would be used, but such a response
///   is malformed and refused outright;
/// - at least one signature, and every `SignatureMethod`/`DigestMethod` on the allow-list (so
///   a SHA-1 signature is named as such rather than as a failed verification).
fn inspect(xml: &str, acs_url: &str) -> Result<Shape, SamlError> {
    use quick_xml::events::Event;
    let allowed = allowed_algorithms();
    let mut signatures = 0usize;
    let attr = |e: &quick_xml::events::BytesStart<'_>, name: &str| {
        e.try_get_attribute(name)
            .ok()
            .flatten()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
    };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut assertions = 0usize;
    let mut shape = None;
    loop {
        let (e, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::End(_)) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            Ok(Event::Eof) => break,
            Ok(_) => continue,
            Err(e) => return Err(SamlError::Malformed(e.to_string())),
        };
        let name = e.local_name();
        let local = name.as_ref();
        if depth == 0 {
            if shape.is_some() {
                return Err(SamlError::Malformed("more than one root element".into()));
            }
            if local != b"Response" {
                return Err(SamlError::Malformed(
                    "the root element is not a Response".into(),
                ));
            }
            if let Some(d) = attr(&e, "Destination")
                && d != acs_url
            {
                return Err(SamlError::Rejected(format!(
                    "destination '{d}' is not this ACS"
                )));
            }
            shape = Some(Shape {
                in_response_to: attr(&e, "InResponseTo"),
            });
        } else if local == b"Assertion" || local == b"EncryptedAssertion" {
            assertions += 1;
            if depth != 1 || local == b"EncryptedAssertion" {
                return Err(SamlError::Structure);
            }
        } else if local == b"Signature" {
            signatures += 1;
        } else if local == b"SignatureMethod" || local == b"DigestMethod" {
            let alg = attr(&e, "Algorithm").unwrap_or_default();
            let ok = if local == b"SignatureMethod" {
                allowed.iter().any(|a| a.signature_uri() == alg)
            } else {
                allowed.iter().any(|a| a.digest_uri() == alg)
            };
            if !ok {
                return Err(SamlError::WeakAlgorithm(alg));
            }
        }
        if !empty {
            depth += 1;
        }
    }
    if assertions != 1 {
        return Err(SamlError::Structure);
    }
    if signatures == 0 {
        return Err(SamlError::Unsigned);
    }
    shape.ok_or_else(|| SamlError::Malformed("empty document".into()))
}

/// What a connection needs from IdP metadata.
#[derive(Debug, Clone)]
pub struct IdpInfo {
    pub entity_id: String,
    pub sso_url: String,
}

/// Validates IdP metadata at save time: size, no DOCTYPE, parseable, an entity id, an
/// HTTP-Redirect SSO endpoint, and at least one signing certificate.
pub fn parse_idp_metadata(xml: &str) -> Result<IdpInfo, SamlError> {
    if xml.len() > MAX_METADATA_BYTES {
        return Err(SamlError::TooLarge);
    }
    check_no_doctype(xml)?;
    check_utf8_declaration(xml)?;
    let descriptor = xml
        .parse::<EntityDescriptor>()
        .map_err(|e| SamlError::Malformed(e.to_string()))?;
    let entity_id = descriptor
        .entity_id
        .clone()
        .filter(|e| !e.is_empty())
        .ok_or(SamlError::NoEntityId)?;
    let sp = ServiceProvider {
        idp_metadata: descriptor.clone(),
        ..ServiceProvider::default()
    };
    match sp.idp_signing_certs() {
        Ok(Some(certs)) if !certs.is_empty() => {}
        Ok(_) => return Err(SamlError::NoSigningCertificate),
        Err(e) => return Err(SamlError::Malformed(e.to_string())),
    }
    let sso_url = sp
        .sso_binding_location(HTTP_REDIRECT)
        .ok_or(SamlError::NoSsoService)?;
    Ok(IdpInfo { entity_id, sso_url })
}

fn service_provider(
    cfg: &SamlConfig,
    urls: &SpUrls,
    allow_idp_initiated: bool,
) -> Result<ServiceProvider, SamlError> {
    check_no_doctype(&cfg.metadata_xml)?;
    let idp_metadata = cfg
        .metadata_xml
        .parse::<EntityDescriptor>()
        .map_err(|e| SamlError::Malformed(e.to_string()))?;
    ServiceProviderBuilder::default()
        .entity_id(urls.entity_id.clone())
        .acs_url(urls.acs_url.clone())
        .metadata_url(urls.entity_id.clone())
        .slo_url(None::<String>)
        .idp_metadata(idp_metadata)
        .allow_idp_initiated(allow_idp_initiated)
        .max_clock_skew(chrono_seconds(CLOCK_SKEW_S))
        .allowed_signature_algorithms(Some(allowed_algorithms()))
        .build()
        .map_err(|e| SamlError::Malformed(e.to_string()))
}

fn chrono_seconds(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

/// The SP metadata document for a connection.
pub fn sp_metadata(cfg: &SamlConfig, urls: &SpUrls) -> Result<String, SamlError> {
    let mut sp = service_provider(cfg, urls, cfg.allow_idp_initiated)?;
    // samael insists on a logout endpoint; we offer none, so it is removed again below.
    sp.slo_url = Some(urls.acs_url.clone());
    let mut md = sp
        .metadata()
        .map_err(|e| SamlError::Malformed(e.to_string()))?;
    for d in md.sp_sso_descriptors.iter_mut().flatten() {
        d.single_logout_services = None;
    }
    md.to_string()
        .map_err(|e| SamlError::Malformed(e.to_string()))
}

/// A new AuthnRequest: its id (to record as pending) and the IdP URL to redirect to.
pub fn authn_request(
    cfg: &SamlConfig,
    urls: &SpUrls,
    relay_state: &str,
) -> Result<(String, String), SamlError> {
    let sp = service_provider(cfg, urls, false)?;
    let mut request = sp
        .make_authentication_request(&cfg.sso_url)
        .map_err(|e| SamlError::Malformed(e.to_string()))?;
    // samael's request ids are 32-bit; ours are 128-bit random.
    request.id = format!("_{}", uuid::Uuid::new_v4().simple());
    let url = request
        .redirect(relay_state)
        .map_err(|e| SamlError::Malformed(e.to_string()))?
        .ok_or_else(|| SamlError::Malformed("no redirect URL".into()))?;
    Ok((request.id, url.to_string()))
}

/// A verified assertion, reduced to what sign-in needs.
#[derive(Debug, Clone)]
pub struct ValidAssertion {
    pub assertion_id: String,
    pub subject: String,
    pub email: Option<String>,
    pub attributes: Vec<(String, Vec<String>)>,
    /// The request this answers (`None` for IdP-initiated).
    pub in_response_to: Option<String>,
    /// Keep the id in the replay cache until then.
    pub replay_until: OffsetDateTime,
}

/// Validates a `SAMLResponse` (HTTP-POST binding) for this connection and tenant host.
/// `pending` are the request ids this browser has open on this connection.
pub fn validate_response(
    cfg: &SamlConfig,
    urls: &SpUrls,
    saml_response: &str,
    pending: &[String],
) -> Result<ValidAssertion, SamlError> {
    if saml_response.len() > MAX_RESPONSE_B64 {
        return Err(SamlError::TooLarge);
    }
    let cleaned: String = saml_response
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = STANDARD.decode(cleaned).map_err(|_| SamlError::Encoding)?;
    let xml = String::from_utf8(bytes).map_err(|_| SamlError::Encoding)?;
    check_no_doctype(&xml)?;
    check_utf8_declaration(&xml)?;
    let shape = inspect(&xml, &urls.acs_url)?;
    let solicited = shape.in_response_to.is_some() || !cfg.allow_idp_initiated;
    if solicited && pending.is_empty() {
        return Err(if cfg.allow_idp_initiated {
            SamlError::UnknownRequest
        } else {
            SamlError::Unsolicited
        });
    }
    let sp = service_provider(cfg, urls, !solicited)?;
    match sp.idp_signing_certs() {
        Ok(Some(certs)) if !certs.is_empty() => {}
        _ => return Err(SamlError::NoSigningCertificate),
    }
    let ids: Vec<&str> = pending.iter().map(String::as_str).collect();
    let assertion = sp
        .parse_xml_response(&xml, solicited.then_some(ids.as_slice()))
        .map_err(|e| match e {
            samael::service_provider::Error::ResponseInResponseToInvalid { .. }
            | samael::service_provider::Error::AssertionInResponseToInvalid { .. }
                if !cfg.allow_idp_initiated && pending.is_empty() =>
            {
                SamlError::Unsolicited
            }
            samael::service_provider::Error::ResponseInResponseToInvalid { .. }
            | samael::service_provider::Error::AssertionInResponseToInvalid { .. } => {
                SamlError::UnknownRequest
            }
            other => SamlError::Rejected(other.to_string()),
        })?;

    // Audience is required (samael only checks it when present).
    let audiences: Vec<&String> = assertion
        .conditions
        .iter()
        .flat_map(|c| c.audience_restrictions.iter().flatten())
        .flat_map(|r| r.audience.iter())
        .collect();
    if audiences.is_empty() {
        return Err(SamlError::NoAudience);
    }
    if !audiences.iter().all(|a| **a == urls.entity_id) {
        return Err(SamlError::Rejected("audience mismatch".into()));
    }

    let confirmation = assertion
        .subject
        .as_ref()
        .and_then(|s| s.subject_confirmations.as_ref())
        .and_then(|c| c.iter().find_map(|c| c.subject_confirmation_data.as_ref()));
    let in_response_to = confirmation.and_then(|d| d.in_response_to.clone());
    // On an IdP-initiated connection, a signed assertion that names a request must name one of
    // this browser's (samael skipped the check).
    if let Some(id) = &in_response_to
        && !pending.iter().any(|p| p == id)
    {
        return Err(SamlError::UnknownRequest);
    }
    let not_after = [
        confirmation.and_then(|d| d.not_on_or_after),
        assertion
            .conditions
            .as_ref()
            .and_then(|c| c.not_on_or_after),
    ]
    .into_iter()
    .flatten()
    .map(|t| t.timestamp())
    .min()
    .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp() + 3600);
    let replay_until = OffsetDateTime::from_unix_timestamp(not_after + CLOCK_SKEW_S)
        .map_err(|_| SamlError::Rejected("timestamp out of range".into()))?;

    let name_id = assertion
        .subject
        .as_ref()
        .and_then(|s| s.name_id.as_ref())
        .ok_or(SamlError::NoSubject)?;
    let subject = name_id.value.trim().to_owned();
    if subject.is_empty() {
        return Err(SamlError::NoSubject);
    }
    let attributes: Vec<(String, Vec<String>)> = assertion
        .attribute_statements
        .iter()
        .flatten()
        .flat_map(|s| s.attributes.iter())
        .filter_map(|a| {
            let name = a.name.clone().or_else(|| a.friendly_name.clone())?;
            let values = a.values.iter().filter_map(|v| v.value.clone()).collect();
            Some((name, values))
        })
        .collect();
    let email = attributes
        .iter()
        .find(|(n, _)| {
            matches!(
                n.as_str(),
                "email" | "mail" | "urn:oid:0.9.2342.19200300.100.1.3"
            )
        })
        .and_then(|(_, v)| v.first().cloned())
        .or_else(|| subject.contains('@').then(|| subject.clone()));
    Ok(ValidAssertion {
        assertion_id: assertion.id.clone(),
        subject,
        email,
        attributes,
        in_response_to,
        replay_until,
    })
}

/// A connection's SAML settings from its IdP metadata.
pub fn config_from_metadata(
    metadata_xml: String,
    metadata_url: Option<String>,
    allow_idp_initiated: bool,
    group_attribute: String,
    email_authoritative: bool,
) -> Result<SamlConfig, SamlError> {
    let info = parse_idp_metadata(&metadata_xml)?;
    Ok(SamlConfig {
        idp_entity_id: info.entity_id,
        metadata_xml,
        sso_url: info.sso_url,
        allow_idp_initiated,
        group_attribute,
        metadata_url,
        email_authoritative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctype_and_entities_are_refused_comments_are_not() {
        assert!(check_no_doctype("<a><!-- c --><![CDATA[x]]></a>").is_ok());
        assert!(matches!(
            check_no_doctype("<!DOCTYPE a [<!ENTITY x 'y'>]><a/>"),
            Err(SamlError::Doctype)
        ));
    }

    #[test]
    fn only_utf8_declarations_reach_the_parser() {
        for ok in [
            "<a/>",
            "<?xml version=\"1.0\"?><a/>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>",
            "<?xml version='1.0' encoding = 'utf-8' ?><a/>",
        ] {
            assert!(check_utf8_declaration(ok).is_ok(), "{ok}");
        }
        for bad in [
            "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a/>",
            "<?xml version=\"1.0\" encoding=\"UTF-7\"?><a/>",
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>",
            "<?xml version=\"1.0\" encoding=\"utf8\"?><a/>",
            "<?XML version=\"1.0\" ENCODING=\"us-ascii\"?><a/>",
            "<?xml version=\"1.0\" encoding=UTF-16?><a/>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"",
            "<a/><?xml version=\"1.0\" encoding=\"UTF-16\"?>",
        ] {
            assert!(
                matches!(check_utf8_declaration(bad), Err(SamlError::Encoding)),
                "{bad}"
            );
        }
        // And through the whole validation path, before any signature is looked at.
        let cfg = SamlConfig {
            idp_entity_id: "https://idp.example".into(),
            metadata_xml: String::new(),
            sso_url: "https://idp.example/sso".into(),
            allow_idp_initiated: true,
            group_attribute: "groups".into(),
            metadata_url: None,
            email_authoritative: false,
        };
        let urls = SpUrls::new("https://acme.example", "corp");
        let utf7 = STANDARD.encode("<?xml version=\"1.0\" encoding=\"UTF-7\"?><samlp:Response/>");
        assert!(matches!(
            validate_response(&cfg, &urls, &utf7, &[]),
            Err(SamlError::Encoding)
        ));
    }

    const SIG: &str = r#"<Signature><SignedInfo><SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><Reference><DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/></Reference></SignedInfo></Signature>"#;

    #[test]
    fn one_assertion_directly_under_the_response() {
        let acs = "https://a.example/acs";
        let one = format!(
            r#"<p:Response xmlns:p="p" Destination="https://a.example/acs"><a:Assertion xmlns:a="a">{SIG}<a:Subject/></a:Assertion></p:Response>"#
        );
        assert!(inspect(&one, acs).is_ok());
        let two = format!("<Response><Assertion>{SIG}</Assertion><Assertion/></Response>");
        assert!(matches!(inspect(&two, acs), Err(SamlError::Structure)));
        let nested = format!(
            "<Response><Assertion>{SIG}<Subject><Assertion/></Subject></Assertion></Response>"
        );
        assert!(matches!(inspect(&nested, acs), Err(SamlError::Structure)));
        let elsewhere = format!(
            r#"<Response Destination="https://b.example/acs"><Assertion>{SIG}</Assertion></Response>"#
        );
        assert!(matches!(
            inspect(&elsewhere, acs),
            Err(SamlError::Rejected(_))
        ));
        assert!(inspect(&format!("<Assertion>{SIG}</Assertion>"), acs).is_err());
    }

    #[test]
    fn unsigned_and_sha1_are_refused() {
        let acs = "https://a.example/acs";
        let sha1 = SIG.replace(
            "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        );
        let xml = format!("<Response><Assertion>{sha1}</Assertion></Response>");
        assert!(matches!(
            inspect(&xml, acs),
            Err(SamlError::WeakAlgorithm(_))
        ));
        assert!(matches!(
            inspect("<Response><Assertion/></Response>", acs),
            Err(SamlError::Unsigned)
        ));
    }
}
