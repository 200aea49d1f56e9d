//! The audit log's hash chain, shared by the tenant runtime (which writes and verifies it) and
//! by tenant migrations (which carry events of older schemas into the chain).
//!
//! Each event's *payload hash* is SHA-256 of its canonical serialization ([`canonical`]); the
//! tenant database links it to the event before it: `hash = SHA-256(prev_hash ‖ payload_hash)`.

use time::OffsetDateTime;

/// The version tag at the start of every canonical serialization.
pub const CANONICAL_V1: &str = "portico-audit-v1";

/// The canonical bytes of an event: a JSON array of the version tag and every field in a fixed
/// order (time as RFC 3339 UTC with microseconds, as PostgreSQL stores it; objects with keys
/// sorted, as `serde_json` without `preserve_order` keeps them).
#[allow(clippy::too_many_arguments)]
pub fn canonical(
    at: OffsetDateTime,
    event_type: &str,
    actor: &str,
    client_ip: Option<&str>,
    request_id: Option<&str>,
    target: Option<&str>,
    outcome: &str,
    reason: Option<&str>,
    details: &serde_json::Value,
) -> Vec<u8> {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    );
    let v = serde_json::json!([
        CANONICAL_V1,
        at,
        event_type,
        actor,
        client_ip,
        request_id,
        target,
        outcome,
        reason,
        details
    ]);
    let mut out = String::new();
    write_canonical(&v, &mut out);
    out.into_bytes()
}

/// JSON with object keys sorted by their bytes, whatever order the `Value` keeps them in (so
/// the hash does not depend on serde_json's `preserve_order` feature being off).
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    // Serialising a string or a number cannot fail.
    let scalar = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&scalar(&Value::String(k.clone())));
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        other => out.push_str(&scalar(other)),
    }
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// `SHA-256(prev ‖ payload_hash)`: how the database links an event to the one before it.
pub fn link(prev: &[u8], payload_hash: &[u8]) -> Vec<u8> {
    let mut buf = prev.to_vec();
    buf.extend_from_slice(payload_hash);
    sha256(&buf)
}

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The version tag of events whose bodies hold references to committed values (format 3).
pub const CANONICAL_V2: &str = "portico-audit-v2";

/// How an event's body is stored and what its payload hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Strings stored as they are; the payload hash covers them (`portico-audit-v1`). Written
    /// only by migrations and imports, and converted in the same transaction.
    Plain = 1,
    /// Strings moved to `audit_values` and referenced; the payload hash still covers the
    /// original strings (`portico-audit-v1`, computed before tenant schema 8). Checked by
    /// resolving the references, unless a value was erased.
    Converted = 2,
    /// Strings moved to `audit_values` and referenced; the payload hash covers the references
    /// (`portico-audit-v2`), so an erased value leaves only a salted commitment behind.
    Committed = 3,
}

impl Format {
    pub fn from_i16(v: i16) -> Option<Self> {
        match v {
            1 => Some(Self::Plain),
            2 => Some(Self::Converted),
            3 => Some(Self::Committed),
            _ => None,
        }
    }
}

/// How a stored event refers to a committed value: `pv:` and the hex SHA-256 of salt ‖ value.
pub const REF_PREFIX: &str = "pv:";

/// The reference committing to `value` under `salt`.
pub fn commitment(salt: &[u8], value: &str) -> String {
    let mut buf = salt.to_vec();
    buf.extend_from_slice(value.as_bytes());
    format!("{REF_PREFIX}{}", hex::encode(sha256(&buf)))
}

/// Whether a stored string is a reference to a committed value.
pub fn is_ref(s: &str) -> bool {
    s.len() == REF_PREFIX.len() + 64
        && s.starts_with(REF_PREFIX)
        && s[REF_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The values an event's strings were moved to: (reference, salt, value) rows for
/// `audit_values`, each under a fresh random salt.
#[derive(Debug, Default)]
pub struct Commitments {
    pub refs: Vec<String>,
    pub salts: Vec<Vec<u8>>,
    pub values: Vec<String>,
}

impl Commitments {
    /// Commits `value` and returns its reference.
    pub fn commit(&mut self, value: &str) -> String {
        let salt = crate::keys::random_bytes::<32>().to_vec();
        let r = commitment(&salt, value);
        self.refs.push(r.clone());
        self.salts.push(salt);
        self.values.push(value.to_owned());
        r
    }

    /// Every string value of `v` (not object keys) replaced by its committed reference.
    pub fn commit_json(&mut self, v: &serde_json::Value) -> serde_json::Value {
        map_strings(v, &mut |s| self.commit(s))
    }
}

/// `v` with every string value (not object keys) replaced by `f` of it.
pub fn map_strings(v: &serde_json::Value, f: &mut impl FnMut(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(f(s)),
        Value::Array(items) => Value::Array(items.iter().map(|i| map_strings(i, f)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| (k.clone(), map_strings(i, f)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every reference string in `v`, in order.
pub fn refs_in(v: &serde_json::Value, out: &mut Vec<String>) {
    map_strings(v, &mut |s| {
        if is_ref(s) {
            out.push(s.to_owned());
        }
        s.to_owned()
    });
}

/// The canonical bytes of an event stored in `format`: [`canonical`]'s bytes (of the strings
/// as stored, or as resolved for a format-2 event), tagged `portico-audit-v2` for format 3.
pub fn in_format(format: Format, v1: Vec<u8>) -> Vec<u8> {
    if format != Format::Committed {
        return v1;
    }
    // Same layout, another tag: `["portico-audit-v1",…` becomes `["portico-audit-v2",…`.
    let mut v = v1;
    let tag = format!("[\"{CANONICAL_V1}\"");
    v.splice(..tag.len(), format!("[\"{CANONICAL_V2}\"").into_bytes());
    v
}

#[cfg(test)]
mod commitment_tests {
    use super::*;

    #[test]
    fn committed_strings_become_salted_references_and_v2_differs_only_in_its_tag() {
        let mut c = Commitments::default();
        let details = serde_json::json!({"email": "ann@acme.example", "n": 3, "list": ["x", true]});
        let committed = c.commit_json(&details);
        // Keys and non-strings stay; every string is a reference.
        assert_eq!(committed["n"], 3);
        assert_eq!(committed["list"][1], true);
        for r in [&committed["email"], &committed["list"][0]] {
            assert!(is_ref(r.as_str().expect("string")), "{r}");
        }
        assert_eq!(c.refs.len(), 2);
        for ((r, salt), value) in c.refs.iter().zip(&c.salts).zip(&c.values) {
            assert_eq!(&commitment(salt, value), r);
            assert_eq!(salt.len(), 32);
        }
        // The same value twice gets two unrelated references (fresh salts).
        let (a, b) = (c.commit("ann@acme.example"), c.commit("ann@acme.example"));
        assert_ne!(a, b);
        assert!(!is_ref("pv:xyz") && !is_ref("ann@acme.example"));
        let mut found = Vec::new();
        refs_in(&committed, &mut found);
        assert_eq!(found.len(), 2);

        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let v1 = canonical(
            at, "login", &a, None, None, None, "success", None, &committed,
        );
        assert_eq!(in_format(Format::Converted, v1.clone()), v1);
        let v2 = in_format(Format::Committed, v1.clone());
        let v1 = String::from_utf8(v1).expect("utf8");
        let v2 = String::from_utf8(v2).expect("utf8");
        assert!(v2.starts_with("[\"portico-audit-v2\","), "{v2}");
        assert_eq!(v1.replacen(CANONICAL_V1, CANONICAL_V2, 1), v2);
    }
}
