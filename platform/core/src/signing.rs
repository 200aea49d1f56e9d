//! Ed25519 signatures (aws-lc-rs) over the documents Portico hands to compliance officers:
//! deletion certificates and export manifests. Verifying needs only the document and the
//! platform's public key (`portico export public-key`), never the catalog.
//!
//! A signed JSON document (`portico-signed/1`):
//!
//! ```json
//! { "format": "portico-signed/1",
//!   "payload": { … },
//!   "signature": { "alg": "Ed25519", "key": "<base64 public key>", "value": "<base64>" } }
//! ```
//!
//! The signature covers the payload's *canonical form*: compact JSON, object keys sorted by
//! their UTF-16 code units at every level (RFC 8785's order; payloads hold only strings,
//! integers, booleans, null, arrays and objects), so whitespace and key order in the file do
//! not matter and any change of a value does.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

/// The `format` of a signed document.
pub const SIGNED_FORMAT: &str = "portico-signed/1";

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not a signed Portico document: {0}")]
    Malformed(String),
    #[error(
        "the signature does not match: the document was changed after it was signed, or signed by another key"
    )]
    Mismatch,
    #[error("signed by key {found}, not by the expected key {expected}")]
    WrongKey { found: String, expected: String },
    #[error("cannot make a signing key: {0}")]
    Key(String),
}

/// An Ed25519 public key, written `ed25519:<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| SignatureError::Malformed("an Ed25519 public key has 32 bytes".into()))
    }

    /// Parses `ed25519:<base64>` (or the bare base64).
    pub fn parse(s: &str) -> Result<Self, SignatureError> {
        let b64 = s.trim();
        let b64 = b64.strip_prefix("ed25519:").unwrap_or(b64);
        let bytes = B64.decode(b64).map_err(|_| {
            SignatureError::Malformed(format!("'{s}' is not an Ed25519 public key"))
        })?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies a detached signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An Ed25519 private key. Its `Debug` shows only the public half.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key())
    }
}

impl SigningKey {
    /// A new key and its PKCS#8 encoding (to be stored encrypted).
    pub fn generate() -> Result<(Self, Vec<u8>), SignatureError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| SignatureError::Key(e.to_string()))?;
        let bytes = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes)?, bytes))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, SignatureError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(Self)
            .map_err(|e| SignatureError::Key(e.to_string()))
    }

    pub fn public_key(&self) -> PublicKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(out)
    }

    /// A detached signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }

    /// A `portico-signed/1` document carrying `payload`.
    pub fn sign_document(&self, payload: Value) -> Value {
        let signature = self.sign(&canonical_json(&payload));
        serde_json::json!({
            "format": SIGNED_FORMAT,
            "payload": payload,
            "signature": {
                "alg": "Ed25519",
                "key": self.public_key().to_string(),
                "value": B64.encode(signature),
            },
        })
    }
}

/// The canonical form of a JSON value: compact, object keys sorted at every level.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&map[k]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

/// Checks a `portico-signed/1` document: its signature over the payload, by `expected` if
/// given (else by the key it names, which the caller should compare with the published one).
/// Returns the signing key and the payload.
pub fn verify_document<'a>(
    doc: &'a Value,
    expected: Option<&PublicKey>,
) -> Result<(PublicKey, &'a Value), SignatureError> {
    let malformed = |m: &str| SignatureError::Malformed(m.to_owned());
    if doc.get("format").and_then(Value::as_str) != Some(SIGNED_FORMAT) {
        return Err(malformed("its format is not portico-signed/1"));
    }
    let payload = doc.get("payload").ok_or_else(|| malformed("no payload"))?;
    let sig = doc
        .get("signature")
        .ok_or_else(|| malformed("no signature"))?;
    if sig.get("alg").and_then(Value::as_str) != Some("Ed25519") {
        return Err(malformed("the signature's algorithm is not Ed25519"));
    }
    let key = PublicKey::parse(
        sig.get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("the signature names no key"))?,
    )?;
    if let Some(expected) = expected
        && *expected != key
    {
        return Err(SignatureError::WrongKey {
            found: key.to_string(),
            expected: expected.to_string(),
        });
    }
    let value = B64
        .decode(
            sig.get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("no signature value"))?,
        )
        .map_err(|_| malformed("the signature value is not base64"))?;
    key.verify(&canonical_json(payload), &value)?;
    Ok((key, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_layout_and_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, "x"], "x": null}}"#).expect("json");
        let b: Value =
            serde_json::from_str("{\n  \"a\": {\"x\": null, \"y\": [1, \"x\"]},\n \"b\": 1}")
                .expect("json");
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            String::from_utf8(canonical_json(&a)).expect("utf-8"),
            r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#
        );
    }

    #[test]
    fn signed_documents_verify_and_any_change_breaks_them() {
        let (key, pkcs8) = SigningKey::generate().expect("key");
        let again = SigningKey::from_pkcs8(&pkcs8).expect("reload");
        assert_eq!(key.public_key(), again.public_key());
        let doc = key.sign_document(json!({"tenant": "acme", "rows": 12}));
        let (signer, payload) = verify_document(&doc, Some(&again.public_key())).expect("valid");
        assert_eq!(signer, key.public_key());
        assert_eq!(payload["rows"], 12);

        let mut edited = doc.clone();
        edited["payload"]["rows"] = json!(13);
        assert!(matches!(
            verify_document(&edited, None),
            Err(SignatureError::Mismatch)
        ));
        let (other, _) = SigningKey::generate().expect("key");
        assert!(matches!(
            verify_document(&doc, Some(&other.public_key())),
            Err(SignatureError::WrongKey { .. })
        ));
        // A document re-signed by another key names that key, and is refused against ours.
        let forged = other.sign_document(edited["payload"].clone());
        assert!(verify_document(&forged, None).is_ok());
        assert!(verify_document(&forged, Some(&key.public_key())).is_err());
        assert_eq!(
            PublicKey::parse(&key.public_key().to_string()).expect("parse"),
            key.public_key()
        );
        assert!(!format!("{key:?}").contains(&B64.encode(&pkcs8)));
    }
}
