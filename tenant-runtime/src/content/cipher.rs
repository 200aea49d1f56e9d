//! Segmented authenticated encryption of document content: the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over AES-256-GCM, with aws-lc-rs doing the AEAD.
//! The nonce of segment *i* is `prefix (7 bytes) ‖ i (32-bit big-endian) ‖ last (1 byte)`,
//! exactly RustCrypto's `aead::stream::StreamBE32` (a test checks byte-for-byte agreement with
//! it); aws-lc's AES-GCM is several times faster than the pure-Rust one.
//!
//! - Each object gets its own key: HKDF-SHA256 of the tenant's data key with a random 32-byte
//!   salt, and the tenant id and version id as info. So an object copied to another version's
//!   record, or to another tenant, does not decrypt ("swapped objects").
//! - Segments are [`SEGMENT`] bytes of plaintext (the last may be shorter, or empty for an
//!   empty file), each followed by its 16-byte tag. The counter binds each segment to its
//!   position (reordering fails) and the flag marks the final one (truncation fails, as does
//!   appending).
//! - Fixed-size segments give random access, so `Range` requests decrypt only what they need.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use portico_core::TenantId;
use uuid::Uuid;

/// Plaintext bytes per segment.
pub const SEGMENT: u64 = 64 * 1024;
/// Tag bytes after each segment.
pub const TAG: u64 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    #[error("a content segment failed authentication (tampered, reordered, truncated or swapped)")]
    Authentication,
    #[error("content encryption failed")]
    Encrypt,
}

/// Segment layout of an object of `size` plaintext bytes (`overhead` bytes after each segment:
/// [`TAG`] when encrypted, 0 for the plaintext baseline of the benchmark).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u64,
    pub overhead: u64,
}

impl Layout {
    /// Number of segments (an empty object still has one, holding only its tag).
    pub fn segments(self) -> u64 {
        self.size.div_ceil(SEGMENT).max(1)
    }
    pub fn plain_len(self, segment: u64) -> u64 {
        self.size.saturating_sub(segment * SEGMENT).min(SEGMENT)
    }
    pub fn stored_offset(self, segment: u64) -> u64 {
        segment * (SEGMENT + self.overhead)
    }
    pub fn stored_len(self, segment: u64) -> u64 {
        self.plain_len(segment) + self.overhead
    }
    /// Total stored bytes.
    pub fn stored_size(self) -> u64 {
        self.size + self.segments() * self.overhead
    }
}

/// The cipher of one stored object.
pub struct ObjectCipher {
    key: LessSafeKey,
}

/// STREAM's nonce: a 7-byte prefix (zero: the key is unique per object), the segment counter
/// (32-bit big-endian) and the last-segment flag.
fn nonce(index: u64, last: bool) -> Option<Nonce> {
    let counter = u32::try_from(index).ok()?;
    let mut n = [0u8; NONCE_LEN];
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Some(Nonce::assume_unique_for_key(n))
}

impl ObjectCipher {
    /// The object key for (data key, salt, tenant, version).
    pub fn new(data_key: &[u8; 32], salt: &[u8], tenant: TenantId, version: Uuid) -> Self {
        let info = format!("portico:document-content:v1:{tenant}:{version}");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(data_key);
        let mut key = [0u8; 32];
        let info_parts = [info.as_bytes()];
        // HKDF-SHA256 can always produce 32 bytes.
        if let Ok(okm) = prk.expand(&info_parts, hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut key);
        }
        Self::from_key(&key)
    }

    fn from_key(key: &[u8; 32]) -> Self {
        // A 32-byte key is always a valid AES-256 key.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 256-bit key");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts segment `index` in place, appending its tag.
    pub fn seal(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), CipherError> {
        let nonce = nonce(index, last).ok_or(CipherError::Encrypt)?;
        self.key
            .seal_in_place_append_tag(nonce, Aad::empty(), buf)
            .map_err(|_| CipherError::Encrypt)
    }

    /// Decrypts segment `index` (ciphertext and tag) in place; returns the plaintext length.
    pub fn open_in_place(
        &self,
        index: u64,
        last: bool,
        buf: &mut [u8],
    ) -> Result<usize, CipherError> {
        let nonce = nonce(index, last).ok_or(CipherError::Authentication)?;
        Ok(self
            .key
            .open_in_place(nonce, Aad::empty(), buf)
            .map_err(|_| CipherError::Authentication)?
            .len())
    }

    /// Decrypts segment `index` in place, removing its tag.
    pub fn open(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), CipherError> {
        let len = self.open_in_place(index, last, buf)?;
        buf.truncate(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(version: Uuid) -> ObjectCipher {
        ObjectCipher::new(&[7; 32], &[9; 32], TenantId::random(), version)
    }

    #[test]
    fn segments_detect_reordering_truncation_and_swaps() {
        let v = Uuid::new_v4();
        let c = ObjectCipher::new(&[7; 32], &[9; 32], TenantId::random(), v);
        let mut a = b"first".to_vec();
        let mut b = b"second".to_vec();
        c.seal(0, false, &mut a).unwrap();
        c.seal(1, true, &mut b).unwrap();
        // In order: fine.
        let (mut a1, mut b1) = (a.clone(), b.clone());
        c.open(0, false, &mut a1).unwrap();
        c.open(1, true, &mut b1).unwrap();
        assert_eq!(
            (a1.as_slice(), b1.as_slice()),
            (&b"first"[..], &b"second"[..])
        );
        // Reordered: the counter does not match.
        assert!(c.open(0, false, &mut b.clone()).is_err());
        // Truncated after the first segment: it was not sealed as the last one.
        assert!(c.open(0, true, &mut a.clone()).is_err());
        // Tampered.
        let mut t = a.clone();
        t[0] ^= 1;
        assert!(c.open(0, false, &mut t).is_err());
        // Another version's (or tenant's) key.
        assert!(
            cipher(Uuid::new_v4())
                .open(0, false, &mut a.clone())
                .is_err()
        );
    }

    /// The construction is RustCrypto's `StreamBE32` over AES-256-GCM, byte for byte.
    #[test]
    fn agrees_with_rustcrypto_stream_be32() {
        use aes_gcm::aead::generic_array::GenericArray;
        use aes_gcm::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
        use aes_gcm::{Aes256Gcm, KeyInit};
        let key = [42u8; 32];
        let ours = ObjectCipher::from_key(&key);
        let reference: StreamBE32<Aes256Gcm> = StreamBE32::from_aead(
            Aes256Gcm::new(GenericArray::from_slice(&key)),
            GenericArray::from_slice(&[0u8; 7]),
        );
        for (index, last, len) in [
            (0u64, false, 65_536usize),
            (1, false, 3),
            (7, true, 100),
            (0, true, 0),
        ] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (mut a, mut b) = (plain.clone(), plain.clone());
            ours.seal(index, last, &mut a).unwrap();
            reference
                .encrypt_in_place(index as u32, last, b"", &mut b)
                .unwrap();
            assert_eq!(a, b, "segment {index} (last: {last})");
            ours.open(index, last, &mut a).unwrap();
            assert_eq!(a, plain);
        }
    }

    #[test]
    fn layout() {
        let l = Layout {
            size: 0,
            overhead: TAG,
        };
        assert_eq!((l.segments(), l.stored_size()), (1, 16));
        let l = Layout {
            size: SEGMENT * 2 + 1,
            overhead: TAG,
        };
        assert_eq!(l.segments(), 3);
        assert_eq!(l.plain_len(2), 1);
        assert_eq!(l.stored_offset(2), 2 * (SEGMENT + TAG));
        assert_eq!(l.stored_size(), SEGMENT * 2 + 1 + 3 * TAG);
    }
}
