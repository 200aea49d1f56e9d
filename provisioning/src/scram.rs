//! SCRAM-SHA-256 verifiers for tenant and pool roles, computed here so the plaintext never
//! reaches the server, with an iteration count of our choosing.
//!
//! PostgreSQL stores `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802,
//! RFC 7677) and the *client* runs the PBKDF2 loop at whatever count the verifier names; the
//! server runs none. Our role passwords are 256 random bits, so key stretching protects
//! nothing (a guess costs 2^255 tries at any count), while every connection open pays for it:
//! at PostgreSQL's default of 4,096 iterations a login costs the client about as much as the
//! backend start-up itself. [`ROLE_ITERATIONS`] keeps the format and drops the stretching.
//! The primitives are aws-lc-rs'; only the RFC's composition is written here, and a test
//! checks it against `postgres-protocol`'s own verifier byte for byte.

use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::num::NonZeroU32;

/// Iterations in the verifiers of role passwords (random, 256-bit; see the module docs).
pub const ROLE_ITERATIONS: u32 = 16;

/// The verifier of `password` at `iterations` with `salt`. The password must already be in
/// SASLprep normal form; ours are URL-safe base64, which is.
pub fn verifier(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{salt}${stored}:{server}",
        salt = STANDARD.encode(salt),
        stored = STANDARD.encode(stored_key.as_ref()),
        server = STANDARD.encode(server_key.as_ref()),
    )
}

/// A verifier for a role password with a fresh random salt at [`ROLE_ITERATIONS`].
pub fn role_verifier(password: &[u8]) -> String {
    let salt = portico_core::keys::random_bytes::<16>();
    verifier(
        password,
        &salt,
        NonZeroU32::new(ROLE_ITERATIONS).unwrap_or(NonZeroU32::MIN),
    )
}

/// The iteration count a stored verifier names (`None` if it is not SCRAM-SHA-256).
pub fn iterations_of(verifier: &str) -> Option<u32> {
    verifier
        .strip_prefix("SCRAM-SHA-256$")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol_at_its_own_salt_and_count() {
        let password = b"Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG0";
        let theirs = postgres_protocol::password::scram_sha_256(password);
        let (head, _) = theirs.rsplit_once('$').expect("verifier shape");
        let (count, salt) = head
            .strip_prefix("SCRAM-SHA-256$")
            .and_then(|s| s.split_once(':'))
            .expect("verifier shape");
        let salt = STANDARD.decode(salt).expect("salt is base64");
        let count = NonZeroU32::new(count.parse().expect("count")).expect("non-zero");
        assert_eq!(verifier(password, &salt, count), theirs);
    }

    #[test]
    fn role_verifiers_name_the_low_count_and_a_fresh_salt() {
        let a = role_verifier(b"secret");
        let b = role_verifier(b"secret");
        assert_eq!(iterations_of(&a), Some(ROLE_ITERATIONS));
        assert_ne!(a, b, "every verifier gets its own salt");
    }
}
