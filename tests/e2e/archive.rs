//! Helpers of the compliance tests: age identities, and export archives read with nothing but
//! the `age` and `tar` crates (as a compliance officer without Portico would read them).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;

use crate::support::TestEnv;

/// A fresh age identity written to `dir/name`, and its recipient.
pub fn identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("# test identity\n{}\n", id.to_string().expose_secret()),
    )
    .expect("identity file");
    (path, id.to_public().to_string())
}

/// The archive's entries: name → (offset of the data in the file, bytes).
pub fn entries(raw: &[u8]) -> BTreeMap<String, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(raw);
    for e in archive.entries().expect("tar") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let pos = e.raw_file_position();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.insert(name, (pos, data));
    }
    out
}

/// The plaintext of an age-encrypted archive.
pub fn decrypt(raw: &[u8], identity: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(identity).expect("identity");
    let id: age::x25519::Identity = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("key line")
        .parse()
        .expect("identity");
    let d = age::Decryptor::new(raw).expect("age file");
    let mut r = d
        .decrypt(std::iter::once(&id as &dyn age::Identity))
        .expect("decrypt");
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("plaintext");
    out
}

/// SHA-256 (hex) of an encrypted archive's manifest.json.
pub fn manifest_sha(archive: &Path, identity: &Path) -> String {
    use sha2::Digest;
    let plain = decrypt(&std::fs::read(archive).expect("archive"), identity);
    let files = entries(&plain);
    hex::encode(sha2::Sha256::digest(&files["manifest.json"].1))
}

/// The directory exports made by the control plane go to in the tests (`$HOME` is the
/// environment's directory).
pub fn export_dir(env: &TestEnv) -> PathBuf {
    env.dir.path().join(".local/share/portico/exports")
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A downloaded archive: the answer is 200 `application/octet-stream`, and its body, written to
/// `out`, passes `portico export verify` with `identity` and the platform's public key as a
/// valid export of `slug`.
pub fn assert_verified_download(
    env: &TestEnv,
    answer: (u16, reqwest::header::HeaderMap, Result<Vec<u8>, Vec<u8>>),
    out: &Path,
    identity: &Path,
    slug: &str,
) {
    let (status, headers, body) = answer;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    std::fs::write(out, body.expect("body")).expect("write");
    let public = env.ok(&["export", "public-key"]).trim().to_owned();
    let ok = env.ok(&[
        "export",
        "verify",
        out.to_str().expect("path"),
        "--identity",
        identity.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(
        ok.contains(&format!("valid export of tenant '{slug}'")),
        "{ok}"
    );
}
