//! Tenant export on both tiers: an archive encrypted to an age recipient (or plaintext when
//! asked), with every table from one snapshot, the plaintext of every document version and a
//! signed manifest; `portico export verify` checks it offline and names a changed byte in a
//! data file, in a document and in the manifest, a signature by another key and a truncated
//! archive; another tenant's data is nowhere in it; a killed export never leaves a file that
//! looks complete.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crash::pause_at;
use crate::portal::{content, new_version, post, upload, user};
use crate::support::{Backend, TestEnv, host_of};

/// A fresh age identity written to a file, and its recipient.
fn identity(dir: &Path, name: &str) -> (PathBuf, String) {
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
fn entries(raw: &[u8]) -> BTreeMap<String, (u64, Vec<u8>)> {
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

fn decrypt(raw: &[u8], identity: &Path) -> Vec<u8> {
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

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_dedicated_tenant_exports_encrypted_and_verifies_offline() {
    export_and_verify(TestEnv::new(Backend::S3Kms).await).await;
}

#[tokio::test]
async fn a_pooled_tenant_exports_encrypted_and_verifies_offline() {
    export_and_verify(TestEnv::pooled(Backend::FileLocal).await).await;
}

async fn export_and_verify(env: TestEnv) {
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, gus) = user(&env, "globex", "gus@globex.example", "admin").await;
    let server = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let mut uploaded = Vec::new();
    for (i, size) in [(1u8, 200_000usize), (2, 1_000)] {
        let up = upload(
            &server,
            &acme,
            &ann,
            &[("type", "invoice"), ("title", &format!("Invoice {i}"))],
            content(size, i),
        )
        .await;
        assert_eq!(up.status, 201, "{up:?}");
        uploaded.push((
            up.body["id"].as_str().expect("id").to_owned(),
            content(size, i),
        ));
    }
    let v2 = new_version(&server, &acme, &ann, &uploaded[0].0, content(90_000, 9)).await;
    assert_eq!(v2.status, 201, "{v2:?}");
    let ticket = post(
        &server,
        &acme,
        "/api/v1/tickets",
        &ann,
        json!({"title": "Printer broken"}),
    )
    .await;
    assert_eq!(ticket.status, 201, "{ticket:?}");
    let g = upload(
        &server,
        &globex,
        &gus,
        &[("type", "contract"), ("title", "GlobexSecretPlan")],
        content(500, 5),
    )
    .await;
    assert_eq!(g.status, 201, "{g:?}");

    let dir = tempfile::tempdir().expect("dir");
    let (id_file, recipient) = identity(dir.path(), "compliance.txt");
    let (other_id, _) = identity(dir.path(), "other.txt");
    let out = dir.path().join("acme.tar.age");
    let public = env.ok(&["export", "public-key"]).trim().to_owned();
    let report = env.json(&[
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--recipient",
        &recipient,
        "--json",
    ]);
    assert_eq!(report["encrypted"], true, "{report}");
    assert_eq!(report["documents"], 3, "{report}");
    assert!(!crate::export::partial(&out).exists());
    let events_now: i64 = env
        .tenant_db("acme")
        .await
        .query_one("select count(*) from audit_events", &[])
        .await
        .expect("count")
        .get(0);

    // Encrypted: nothing readable without the identity.
    let raw = std::fs::read(&out).expect("archive");
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    assert!(!contains(&raw, b"Printer broken") && !contains(&raw, b"ann@acme.example"));
    let ok = env.ok(&[
        "export",
        "verify",
        out.to_str().expect("path"),
        "--identity",
        id_file.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(ok.contains("valid export of tenant 'acme'"), "{ok}");
    env.run(&["export", "verify", out.to_str().expect("path")])
        .assert_error("is encrypted");
    env.run(&[
        "export",
        "verify",
        out.to_str().expect("path"),
        "--identity",
        other_id.to_str().expect("path"),
    ])
    .assert_error("cannot decrypt");
    env.run(&[
        "tenant",
        "export",
        "acme",
        "--out",
        dir.path().join("x").to_str().expect("path"),
    ])
    .assert_error("--recipient");
    env.run(&[
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--plaintext",
    ])
    .assert_error("exists already");

    // What is inside, read with nothing but age and tar.
    let plain = decrypt(&raw, &id_file);
    let files = entries(&plain);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"].1).expect("manifest");
    assert_eq!(manifest["format"], "portico-export/1");
    assert_eq!(manifest["tenant"]["slug"], "acme");
    assert_eq!(manifest["encrypted"], true);
    assert_eq!(manifest["audit"]["events"], events_now);
    let docs = manifest["documents"].as_array().expect("documents");
    assert_eq!(docs.len(), 3);
    for (doc_id, bytes) in &uploaded {
        let d = docs
            .iter()
            .find(|d| d["document_id"] == doc_id.as_str() && d["size"] == bytes.len())
            .unwrap_or_else(|| panic!("{doc_id} is not exported: {docs:?}"));
        let file = d["file"].as_str().expect("file");
        assert_eq!(&files[file].1, bytes, "{file}");
        assert_eq!(d["sha256"], hex::encode(Sha256::digest(bytes)));
    }
    let tickets = &files["tables/data.tickets.jsonl"].1;
    assert_eq!(tickets.iter().filter(|b| **b == b'\n').count(), 1);
    assert!(contains(tickets, b"Printer broken"));
    assert!(!contains(
        &files["tables/data.document_versions.jsonl"].1,
        b"data_key_wrapped"
    ));
    assert!(files.contains_key("tables/audit.audit_events.jsonl"));
    for (name, (_, data)) in &files {
        assert!(
            !contains(data, b"GlobexSecretPlan") && !contains(data, b"gus@globex.example"),
            "globex data in {name}"
        );
    }

    // Tampering, on a plaintext export: each change is named.
    let p = dir.path().join("acme.tar");
    env.ok(&[
        "tenant",
        "export",
        "acme",
        "--out",
        p.to_str().expect("path"),
        "--plaintext",
    ]);
    let good = std::fs::read(&p).expect("archive");
    let ok = env.ok(&[
        "export",
        "verify",
        p.to_str().expect("path"),
        "--public-key",
        &public,
    ]);
    assert!(ok.contains("valid export"), "{ok}");
    let files = entries(&good);
    let doc_file = docs[0]["file"].as_str().expect("file").to_owned();
    let manifest_bytes = files["manifest.json"].1.clone();
    let forged_sig = {
        let other = portico_core::signing::SigningKey::generate()
            .expect("key")
            .0;
        let sig = json!({
            "alg": "Ed25519",
            "key": other.public_key().to_string(),
            "value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, other.sign(&manifest_bytes)),
        })
        .to_string();
        assert_eq!(
            sig.len(),
            files["manifest.sig"].1.len(),
            "same length, so the tar stays valid"
        );
        sig
    };
    let flip = |name: &str, at: usize| {
        let mut bad = good.clone();
        let pos = usize::try_from(files[name].0).expect("pos") + at;
        bad[pos] ^= 0x01;
        bad
    };
    let slug_at = manifest_bytes
        .windows(6)
        .position(|w| w == b"\"acme\"")
        .expect("slug in manifest")
        + 4;
    let sig_pos = usize::try_from(files["manifest.sig"].0).expect("pos");
    let mut resigned = good.clone();
    resigned[sig_pos..sig_pos + forged_sig.len()].copy_from_slice(forged_sig.as_bytes());
    let manifest_pos = usize::try_from(files["manifest.json"].0).expect("pos");
    let truncated = good[..manifest_pos - 512].to_vec();
    for (what, bytes, expected) in [
        (
            "a data file",
            flip("tables/data.tickets.jsonl", 20),
            "tables/data.tickets.jsonl was changed",
        ),
        ("a document", flip(&doc_file, 10), "was changed"),
        (
            "the manifest",
            flip("manifest.json", slug_at),
            "does not match its signature",
        ),
        ("the signature", resigned, "not by the expected key"),
        ("the end", truncated, "incomplete"),
    ] {
        let f = dir.path().join("tampered.tar");
        std::fs::write(&f, &bytes).expect("write");
        let r = env.run(&[
            "export",
            "verify",
            f.to_str().expect("path"),
            "--public-key",
            &public,
        ]);
        assert!(!r.success, "a changed {what} passed");
        assert!(r.stderr.contains(expected), "{what}: {}", r.stderr);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_killed_export_never_leaves_a_file_that_looks_complete() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let server = env.serve(&[]);
    let up = upload(
        &server,
        &host_of("acme"),
        &ann,
        &[("type", "invoice"), ("title", "One")],
        content(300_000, 3),
    )
    .await;
    assert_eq!(up.status, 201, "{up:?}");
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("acme.tar");
    let args = [
        "tenant",
        "export",
        "acme",
        "--out",
        out.to_str().expect("path"),
        "--plaintext",
    ];
    for point in ["export:tables", "export:manifest"] {
        let (mut child, _watchdog) = pause_at(&env, &args, point);
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        assert!(!out.exists(), "killed at {point}, the archive exists");
        let partial = crate::export::partial(&out);
        assert!(
            partial.exists(),
            "killed at {point}: nothing was being written"
        );
        let r = env.run(&["export", "verify", partial.to_str().expect("path")]);
        assert!(
            !r.success,
            "an unfinished archive (killed at {point}) verified"
        );
    }
    env.ok(&args);
    assert!(!crate::export::partial(&out).exists());
    assert!(
        env.ok(&["export", "verify", out.to_str().expect("path")])
            .contains("valid export")
    );
    env.cleanup().await;
}

/// `<out>.partial`, as the export names it.
pub fn partial(out: &Path) -> PathBuf {
    portico_platform::export::partial_path(out)
}
