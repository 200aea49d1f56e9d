//! Typed identifiers and validated names. Each has exactly one parse point (`FromStr` /
//! `parse`), so a value of these types is always valid, and mixing them is a compile error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused. The message is shown to operators verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

impl NameError {
    /// A refusal with this message (for ids declared with [`uuid_id!`](crate::uuid_id)).
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

/// A typed id over a UUID: one parse point (`FromStr`), `random`, `from_uuid`, `as_uuid`,
/// `Display`, a `Debug` that names the type, serde as the bare UUID. Exported so that other
/// crates (the tenant runtime's entity ids) declare theirs the same way.
#[macro_export]
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize,
            ::serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(::uuid::Uuid);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(::uuid::Uuid::new_v4())
            }
            /// Wraps an id read back from our own storage, or carried as a bare UUID.
            pub fn from_uuid(id: ::uuid::Uuid) -> Self {
                Self(id)
            }
            pub fn as_uuid(&self) -> ::uuid::Uuid {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::ids::NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ::uuid::Uuid::parse_str(s).map(Self).map_err(|_| {
                    $crate::ids::NameError::new(format!(
                        "'{s}' is not a valid {}",
                        stringify!($name)
                    ))
                })
            }
        }
    };
}

uuid_id!(
    /// The identity of a tenant. Used in every resource name (database, role, key alias,
    /// object prefix) so that no slug or other personal data leaks into them.
    TenantId
);
uuid_id!(
    /// One provisioning run (a create or a rollback of one tenant).
    RunId
);

impl TenantId {
    /// The 32-hex-digit form used inside PostgreSQL identifiers.
    pub fn simple(&self) -> String {
        self.0.simple().to_string()
    }
}

/// Words that may not be tenant slugs because they name platform hosts or are confusing.
pub const RESERVED_SLUGS: &[&str] = &[
    "www",
    "admin",
    "login",
    "api",
    "app",
    "auth",
    "sso",
    "operator",
    "console",
    "dashboard",
    "portal",
    "status",
    "static",
    "assets",
    "cdn",
    "mail",
    "smtp",
    "docs",
    "help",
    "support",
    "billing",
    "internal",
    "system",
    "root",
    "default",
    "metrics",
    "localhost",
];

/// A tenant slug: a DNS label (lowercase letters, digits, hyphens; 3–63 characters; no
/// leading, trailing or `xx--` hyphens) that is not a reserved word.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |why: &str| Err(NameError(format!("invalid slug '{s}': {why}")));
        if s.len() < 3 || s.len() > 63 {
            return err("must be 3 to 63 characters long");
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return err("must be lowercase");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("only lowercase letters, digits and hyphens are allowed");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return err("must not start or end with a hyphen");
        }
        if s.get(2..4) == Some("--") {
            return err("hyphens in the third and fourth position are reserved (punycode)");
        }
        if RESERVED_SLUGS.contains(&s) {
            return err("this name is reserved");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Slug {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Slug> for String {
    fn from(s: Slug) -> String {
        s.0
    }
}

impl FromStr for Slug {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slug({})", self.0)
    }
}

/// A DNS host name, normalised: lowercase, no trailing dot, at least two labels.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl Hostname {
    /// The host name of a `Host` header value: the port stripped, case folded, a trailing dot
    /// removed; anything that is not a DNS host name (IP literals included) is refused.
    pub fn from_host_header(raw: &str) -> Option<Self> {
        if raw.starts_with('[') {
            return None;
        }
        let name = match raw.rsplit_once(':') {
            Some((name, port)) => {
                if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
                    return None;
                }
                name
            }
            None => raw,
        };
        Self::parse(name).ok()
    }

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |why: &str| Err(NameError(format!("invalid host name '{s}': {why}")));
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() || lower.len() > 253 {
            return err("must be 1 to 253 characters long");
        }
        let labels: Vec<&str> = lower.split('.').collect();
        if labels.len() < 2 {
            return err("must have at least two labels (for example portal.example.com)");
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return err("each label must be 1 to 63 characters long");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return err("only letters, digits, hyphens and dots are allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return err("labels must not start or end with a hyphen");
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return err("an IP address is not a host name");
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` is `parent` or a name below it.
    pub fn is_within(&self, parent: &Hostname) -> bool {
        self.0 == parent.0
            || self
                .0
                .strip_suffix(parent.0.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// `<slug>.<self>`: a tenant's subdomain of the base domain.
    pub fn tenant_subdomain(&self, slug: &Slug) -> Hostname {
        Hostname(format!("{}.{}", slug.as_str(), self.0))
    }
}

impl TryFrom<String> for Hostname {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Hostname> for String {
    fn from(h: Hostname) -> String {
        h.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({})", self.0)
    }
}

/// The operator-chosen name of a registered database server.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DbServerName(String);

impl DbServerName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty()
            || s.len() > 63
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(NameError(format!(
                "invalid database server name '{s}': use 1 to 63 lowercase letters, digits, '-' or '_'"
            )));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DbServerName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DbServerName> for String {
    fn from(n: DbServerName) -> String {
        n.0
    }
}

impl fmt::Display for DbServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DbServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbServerName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels_and_not_reserved() {
        for ok in ["acme", "a-1", "globex-2026", &"a".repeat(63)] {
            assert!(Slug::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Acme",
            "acme_co",
            "-acme",
            "acme-",
            "xn--acme",
            "www",
            "admin",
            "login",
            "api",
            "ac me",
            "ácme",
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn hostnames_are_normalised_and_validated() {
        let h = Hostname::parse("Portal.Example.COM.").unwrap();
        assert_eq!(h.as_str(), "portal.example.com");
        for bad in ["localhost", "a..b", "-a.b", "a_b.com", "1.2.3.4", ""] {
            assert!(Hostname::parse(bad).is_err(), "{bad} should be refused");
        }
        let base = Hostname::parse("portal.localhost").unwrap();
        assert!(
            Hostname::parse("acme.portal.localhost")
                .unwrap()
                .is_within(&base)
        );
        assert!(base.is_within(&base));
        assert!(
            !Hostname::parse("evilportal.localhost")
                .unwrap()
                .is_within(&base)
        );
    }

    #[test]
    fn tenant_id_debug_and_parse() {
        let id = TenantId::random();
        assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id);
        assert!("not-a-uuid".parse::<TenantId>().is_err());
        assert_eq!(id.simple().len(), 32);
    }
}
