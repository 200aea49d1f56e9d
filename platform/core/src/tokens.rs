//! The bearer-secret primitive every token of Portico uses (tenant API tokens, operator tokens,
//! invitation links, session and flow cookies): 256 random bits, URL-safe base64 behind a
//! prefix that says what the secret is, and the SHA-256 of the whole that is all we store.

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;

/// Random bytes in a secret.
const SECRET_LEN: usize = 32;

/// A fresh secret with its prefix, and its digest.
pub fn generate(prefix: &str) -> (SecretString, Vec<u8>) {
    let bytes = crate::keys::random_bytes::<SECRET_LEN>();
    let secret = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = digest_of(&secret);
    (SecretString::from(secret), hash)
}

/// The digest of a presented token, or `None` when it is not shaped like one of `prefix`'s
/// (so malformed tokens never reach the database).
pub fn presented_digest(prefix: &str, presented: &str) -> Option<Vec<u8>> {
    let body = presented.strip_prefix(prefix)?;
    let decoded = URL_SAFE_NO_PAD.decode(body).ok()?;
    (decoded.len() == SECRET_LEN).then(|| digest_of(presented))
}

fn digest_of(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_generated_secret_presents_as_its_own_digest_only() {
        let (secret, digest) = generate("ptk_");
        let s = secret.expose_secret();
        assert!(s.starts_with("ptk_"));
        assert_eq!(presented_digest("ptk_", s), Some(digest.clone()));
        assert_eq!(presented_digest("pop_", s), None, "another prefix");
        assert_eq!(
            presented_digest("ptk_", &s[..s.len() - 1]),
            None,
            "truncated"
        );
        assert_eq!(presented_digest("ptk_", "ptk_not base64!"), None);
        assert_ne!(generate("ptk_").1, digest, "fresh every time");
    }
}
