//! Where a browser goes after signing in (`return_to` of `/sso/{conn}/start`, SAML
//! `RelayState`): only a path of the tenant's own origin, checked the way a browser will read it.
//!
//! The value is resolved as a URL relative to the tenant origin (WHATWG rules, through the
//! `url` crate, as a browser would resolve a `Location` header) and accepted only if the result
//! keeps that origin. Control characters (a browser drops tab and newline, so `/\t/evil` becomes
//! `//evil`) and backslashes (read as `/`) are refused before that, and so is anything that
//! resolves to a protocol-relative path. What is returned is the *serialised* path, query and
//! fragment of the resolved URL, so the `Location` we send is the one we checked.

/// Paths that must not be a sign-in's destination (they would restart or end the flow).
const REFUSED_PREFIXES: &[&str] = &["/sso/", "/login", "/logout", "/invite/"];

/// The longest `return_to` accepted.
const MAX_LEN: usize = 1024;

/// The safe destination for `raw` on `origin` (`https://acme.example`), or `/`.
pub fn safe_return_to(origin: &str, raw: Option<&str>) -> String {
    raw.and_then(|r| checked(origin, r))
        .unwrap_or_else(|| "/".to_owned())
}

fn checked(origin: &str, raw: &str) -> Option<String> {
    if raw.is_empty()
        || raw.len() > MAX_LEN
        || !raw.starts_with('/')
        || raw.starts_with("//")
        || raw.chars().any(|c| c.is_control() || c == '\\')
    {
        return None;
    }
    let base = url::Url::parse(origin).ok()?;
    let resolved = base.join(raw).ok()?;
    if resolved.origin() != base.origin()
        || resolved.username() != ""
        || resolved.password().is_some()
    {
        return None;
    }
    let path = resolved.path();
    if path.starts_with("//") || REFUSED_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    let out = &resolved[url::Position::BeforePath..];
    // Whatever we hand out must itself resolve to the same place: no second reading.
    let again = base.join(out).ok()?;
    (again == resolved).then(|| out.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "https://acme.portal.example";

    fn ok(raw: &str) -> String {
        safe_return_to(ORIGIN, Some(raw))
    }

    #[test]
    fn own_paths_are_kept() {
        assert_eq!(ok("/"), "/");
        assert_eq!(
            ok("/documents?site=berlin#top"),
            "/documents?site=berlin#top"
        );
        assert_eq!(ok("/api/v1/tickets/42"), "/api/v1/tickets/42");
        assert_eq!(safe_return_to(ORIGIN, None), "/");
    }

    #[test]
    fn whatwg_normalisation_cannot_leave_the_origin() {
        // Each of these is read by a browser as another host, or is not a plain path.
        for raw in [
            "/\t/example.org",
            "/\n/example.org",
            "/\r\n/example.org",
            "/\\example.org",
            "\\\\example.org",
            "/\\/example.org",
            "//example.org",
            "///example.org",
            "https://example.org/",
            "http:example.org",
            "javascript:alert(1)",
            "example.org",
            "",
            " /x",
            "/x\u{0}y",
            "/x\u{7f}",
            "/\u{85}/example.org",
        ] {
            assert_eq!(ok(raw), "/", "{raw:?}");
        }
    }

    #[test]
    fn encoded_forms_stay_on_the_origin() {
        // Percent-encoded slashes, backslashes and `@` are path characters: the browser stays
        // on our origin, and so does what we send.
        for raw in [
            "/%2F/example.org",
            "/%2f%2fexample.org",
            "/%5Cexample.org",
            "/%40example.org",
            "/@example.org",
        ] {
            let out = ok(raw);
            let resolved = url::Url::parse(ORIGIN).unwrap().join(&out).unwrap();
            assert_eq!(
                resolved.host_str(),
                Some("acme.portal.example"),
                "{raw:?} -> {out}"
            );
            assert!(
                out.starts_with('/') && !out.starts_with("//"),
                "{raw:?} -> {out}"
            );
        }
        // Dot segments that would climb to `//` are resolved first, then refused.
        assert_eq!(ok("/./example.org"), "/example.org");
        assert_eq!(ok("/.//example.org"), "/");
        assert_eq!(ok("/a/..//example.org"), "/");
    }

    #[test]
    fn sign_in_paths_are_not_destinations() {
        for raw in [
            "/login",
            "/login/totp",
            "/logout",
            "/sso/corp/start",
            "/invite/x",
        ] {
            assert_eq!(ok(raw), "/", "{raw:?}");
        }
    }

    #[test]
    fn overlong_values_are_refused() {
        assert_eq!(ok(&format!("/{}", "a".repeat(MAX_LEN))), "/");
    }
}
