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
