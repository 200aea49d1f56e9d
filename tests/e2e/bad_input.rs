//! Bad input exits non-zero with one clear line and creates nothing.

use crate::support::{Backend, RunBounded, TestEnv};

async fn catalog_counts(env: &TestEnv) -> (i64, i64, i64) {
    let c = env.catalog().await;
    let row = c
        .query_one(
            "select (select count(*) from tenants), (select count(*) from tenant_domains),
                    (select count(*) from db_servers)",
            &[],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1), row.get(2))
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&[
        "tenant",
        "create",
        "acme",
        "--domain",
        "portal.acme.example",
    ]);
    let before = catalog_counts(&env).await;
    let keys_before = entries(&env.dir.path().join("keys/tenant-keys"));
    let prefixes_before = entries(&env.storage_root().join("tenants"));

    let cases: &[(&[&str], &str)] = &[
        (
            &["tenant", "create", "Acme"],
            "invalid slug 'Acme': must be lowercase",
        ),
        (&["tenant", "create", "ab"], "3 to 63 characters"),
        (&["tenant", "create", "acme_co"], "only lowercase letters"),
        (&["tenant", "create", "--", "-acme"], "hyphen"),
        (&["tenant", "create", "admin"], "reserved"),
        (&["tenant", "create", "www"], "reserved"),
        (
            &["tenant", "create", "acme"],
            "slug 'acme' is already taken",
        ),
        (
            &[
                "tenant",
                "create",
                "beta",
                "--domain",
                "Portal.ACME.example.",
            ],
            "domain 'portal.acme.example' is already used by tenant 'acme'",
        ),
        (
            &["tenant", "create", "beta", "--domain", "x.portal.test"],
            "under the base domain",
        ),
        (
            &["tenant", "create", "beta", "--domain", "bad domain.example"],
            "invalid host name",
        ),
        (
            &[
                "tenant",
                "create",
                "beta",
                "--domain",
                "a.example",
                "--domain",
                "a.example",
            ],
            "given twice",
        ),
        (
            &["tenant", "create", "beta", "--name", "line\nbreak"],
            "invalid display name",
        ),
        (
            &["tenant", "create", "beta", "--db-server", "nowhere"],
            "no database server named 'nowhere'",
        ),
        (
            &["tenant", "create", "beta", "--db-server", "Bad Name"],
            "invalid database server name",
        ),
        (&["tenant", "show", "nobody"], "no tenant named 'nobody'"),
        (&["tenant", "suspend", "nobody"], "no tenant named 'nobody'"),
        (
            &["tenant", "create", "--rollback", "acme"],
            "rollback only undoes an unfinished create",
        ),
        (
            &["tenant", "create", "--rollback", "nobody"],
            "no tenant named 'nobody'",
        ),
        (
            &[
                "db-server",
                "add",
                "dead",
                "--url",
                "postgres://postgres:x@127.0.0.1:1/postgres",
            ],
            "cannot reach database server postgres://postgres@127.0.0.1:1/postgres",
        ),
        (
            &["db-server", "add", "junk", "--url", "not a url"],
            "invalid database server URL",
        ),
        (
            &[
                "db-server",
                "add",
                "zero",
                "--url",
                &crate::support::admin_url("postgres"),
                "--max-connections",
                "0",
            ],
            "--max-connections must be at least 1",
        ),
    ];
    for (args, needle) in cases {
        env.run(args).assert_error(needle);
    }
    // Nothing changed: no catalog rows, no keys, no prefixes.
    assert_eq!(catalog_counts(&env).await, before);
    assert_eq!(
        entries(&env.dir.path().join("keys/tenant-keys")),
        keys_before
    );
    assert_eq!(
        entries(&env.storage_root().join("tenants")),
        prefixes_before
    );

    // A password given in a bad URL never shows up in the error.
    let r = env.run(&[
        "db-server",
        "add",
        "dead",
        "--url",
        "postgres://u:hunter2secret@127.0.0.1:1/db",
    ]);
    assert!(!r.stderr.contains("hunter2secret"), "{}", r.stderr);
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_settings_name_the_setting_and_create_nothing() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let run = |var: &str, value: &str| {
        env.command()
            .env(var, value)
            .args(["tenant", "create", "acme"])
            .run_bounded()
    };
    run("PORTICO_STORAGE", "ftp://x/y").assert_error("PORTICO_STORAGE");
    run("PORTICO_STORAGE", "file://relative/dir").assert_error("PORTICO_STORAGE");
    run("PORTICO_KMS", "vault").assert_error("PORTICO_KMS");
    run("PORTICO_BASE_DOMAIN", "nodots").assert_error("PORTICO_BASE_DOMAIN");
    run("PORTICO_S3_ENDPOINT", "not a url").assert_error("PORTICO_S3_ENDPOINT");
    run("PORTICO_TENANT_CONNECTION_LIMIT", "0").assert_error("PORTICO_TENANT_CONNECTION_LIMIT");
    run("PORTICO_DATABASE_URL", "mysql://x@y/z").assert_error("PORTICO_DATABASE_URL");
    let r = env
        .command()
        .env_remove("PORTICO_DATABASE_URL")
        .args(["tenant", "list"])
        .run_bounded();
    r.assert_error("PORTICO_DATABASE_URL");

    // A master key readable by others is refused (and not replaced).
    env.ok(&["migrate"]);
    let key = env.master_key();
    env.ok(&["tenant", "list"]);
    assert!(key.exists(), "the master key is created on first use");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    env.run(&["tenant", "create", "acme"])
        .assert_error("chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    assert_eq!(env.tenant_count().await, 0);
    env.cleanup().await;
}

/// A registered server that cannot be reached, or a KMS that cannot be reached, stops a create
/// before anything is recorded or created.
#[tokio::test]
async fn unreachable_backends_stop_a_create_before_it_starts() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.record_down_server("down").await;
    let r = env.run(&["tenant", "create", "acme", "--db-server", "down"]);
    r.assert_error("cannot reach database server postgres://postgres@127.0.0.1:1/postgres");
    assert!(!r.stderr.contains("secret-pw"));
    assert_eq!(env.tenant_count().await, 0);
    env.cleanup().await;

    let env = TestEnv::new(Backend::S3Kms).await;
    let r = env
        .command()
        .env("PORTICO_KMS_ENDPOINT", "http://127.0.0.1:1")
        .args(["tenant", "create", "acme"])
        .run_bounded();
    r.assert_error("KMS");
    // Read commands make no KMS call: they work while KMS is unreachable.
    let r = env
        .command()
        .env("PORTICO_KMS_ENDPOINT", "http://127.0.0.1:1")
        .args(["tenant", "list", "--json"])
        .run_bounded();
    assert!(r.success, "tenant list needed KMS: {}", r.stderr);
    assert_eq!(r.stdout.trim(), "[]");
    assert_eq!(env.tenant_count().await, 0);
    for (var, value, needle) in [
        ("PORTICO_S3_ENDPOINT", "http://127.0.0.1:1", "S3 HeadBucket"),
        (
            "PORTICO_STORAGE",
            "s3://no-such-bucket-here/x",
            "no-such-bucket-here",
        ),
    ] {
        let r = env
            .command()
            .env(var, value)
            .args(["tenant", "create", "acme"])
            .run_bounded();
        r.assert_error(needle);
        assert_eq!(
            env.tenant_count().await,
            0,
            "{var}={value} created a tenant"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn token_commands_refuse_bad_input() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.run(&["tenant", "token", "create", "ghost", "--name", "x"])
        .assert_error("no tenant named 'ghost'");
    env.run(&[
        "tenant",
        "token",
        "create",
        "acme",
        "--name",
        "x",
        "--expires-in",
        "soon",
    ])
    .assert_error("--expires-in 'soon'");
    env.run(&["tenant", "token", "create", "acme", "--name", "  "])
        .assert_error("token name");
    env.run(&[
        "tenant", "token", "create", "acme", "--name", "x", "--role", "root",
    ])
    .assert_error("there is no role 'root'");
    env.run(&[
        "tenant", "token", "create", "acme", "--name", "x", "--site", "atlantis",
    ])
    .assert_error("unknown site 'atlantis'");
    env.run(&[
        "tenant",
        "token",
        "create",
        "acme",
        "--name",
        "x",
        "--user",
        "nobody@acme.example",
    ])
    .assert_error("no active user 'nobody@acme.example'");
    env.ok(&["tenant", "token", "create", "acme", "--name", "ci"]);
    env.run(&["tenant", "token", "create", "acme", "--name", "ci"])
        .assert_error("already exists");
    env.run(&["tenant", "token", "revoke", "acme", "nope"])
        .assert_error("no active token named 'nope'");
    env.run(&["operator", "token", "revoke", "nope"])
        .assert_error("no active operator token named 'nope'");
    env.ok(&["operator", "token", "create", "alice"]);
    env.run(&["operator", "token", "create", "alice"])
        .assert_error("exists");
    env.run(&["operator", "token", "create", "bob", "--expires-in", "0s"])
        .assert_error("positive duration");
    for cmd in ["verify", "export", "anchor"] {
        env.run(&["audit", cmd, "ghost"])
            .assert_error("no tenant named 'ghost'");
    }
    // Only the two good tokens exist.
    let tokens = env.json(&["tenant", "token", "list", "acme", "--json"]);
    assert_eq!(tokens.as_array().map(Vec::len), Some(1));
    let ops = env.json(&["operator", "token", "list", "--json"]);
    assert_eq!(ops.as_array().map(Vec::len), Some(1));
    // A revoked name can be used again.
    env.ok(&["tenant", "token", "revoke", "acme", "ci"]);
    env.ok(&["tenant", "token", "create", "acme", "--name", "ci"]);
    env.cleanup().await;
}

#[tokio::test]
async fn identity_commands_refuse_bad_input() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let missing = env.dir.path().join("missing.xml");
    let missing = missing.to_str().expect("path");
    let secret_file = env.dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret").expect("secret");
    let secret = secret_file.to_str().expect("path");
    let cases: &[(&[&str], &str)] = &[
        (
            &["tenant", "user", "invite", "ghost", "a@b.example"],
            "no tenant named 'ghost'",
        ),
        (
            &["tenant", "user", "invite", "acme", "not-an-email"],
            "is not an e-mail address",
        ),
        (
            &[
                "tenant",
                "user",
                "deactivate",
                "acme",
                "nobody@acme.example",
            ],
            "no user with e-mail",
        ),
        (
            &[
                "tenant",
                "sso",
                "add-saml",
                "acme",
                "--name",
                "x",
                "--metadata-file",
                missing,
            ],
            "cannot read metadata file",
        ),
        (
            &[
                "tenant",
                "sso",
                "add-oidc",
                "acme",
                "--name",
                "x",
                "--issuer",
                "https://idp.example",
                "--client-id",
                "c",
                "--client-secret-file",
                missing,
            ],
            "cannot read client secret file",
        ),
        (
            &["tenant", "sso", "show", "acme", "nope"],
            "has no connection 'nope'",
        ),
        (
            &["tenant", "sso", "remove", "acme", "nope"],
            "no SSO connection named 'nope'",
        ),
        (
            &[
                "tenant",
                "sso",
                "claim-domain",
                "acme",
                "nope",
                "acme.example",
            ],
            "has no connection 'nope'",
        ),
        (
            &["tenant", "sso", "unclaim-domain", "acme", "acme.example"],
            "has not claimed",
        ),
        // Refused before anything is fetched (the host does not exist).
        (
            &[
                "tenant",
                "sso",
                "add-saml",
                "acme",
                "--name",
                "x",
                "--metadata-url",
                "https://idp.invalid/md",
                "--map-group",
                "admins",
            ],
            "is not a mapping",
        ),
        (
            &[
                "tenant",
                "sso",
                "add-oidc",
                "acme",
                "--name",
                "x",
                "--issuer",
                "https://idp.invalid",
                "--client-id",
                "c",
                "--client-secret-file",
                secret,
                "--map-claim",
                "groups:a=root",
            ],
            "there is no role 'root'",
        ),
    ];
    for (args, needle) in cases {
        env.run(args).assert_error(needle);
    }
    env.ok(&["tenant", "user", "invite", "acme", "ann@acme.example"]);
    // A second invitation for the same address is fine until the account exists.
    env.ok(&[
        "tenant",
        "user",
        "invite",
        "acme",
        "ann@acme.example",
        "--role",
        "admin",
    ]);
    assert_eq!(
        env.json(&["tenant", "user", "list", "acme", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        env.json(&["tenant", "sso", "list", "acme", "--json"]),
        serde_json::json!([])
    );
    env.cleanup().await;
}
