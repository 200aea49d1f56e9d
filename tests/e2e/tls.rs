//! TLS to a registered database server with its own CA: a second PostgreSQL cluster serving a
//! certificate from a CA made for this test. Registered with a different CA it is refused
//! (nothing recorded); with its own, tenants of both tiers are created there and served, and
//! every runtime connection to it is encrypted.

use std::path::Path;
use std::process::Command;

use portico_platform::pgcluster::PgCluster;
use reqwest::Method;

use crate::support::{Backend, COMMAND_LIMIT, TestEnv, host_of, output_within};

/// `openssl` with `args` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = output_within(
        Command::new("openssl").current_dir(dir).args(args),
        COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (`<name>.crt`, `<name>.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

#[tokio::test]
async fn a_server_with_its_own_ca_is_reached_over_verified_tls_only() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ca(d, "portico-test-ca");
    ca(d, "another-ca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "portico-test-ca.crt",
            "-CAkey",
            "portico-test-ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let read = |f: &str| std::fs::read_to_string(d.join(f)).expect(f);
    let (cert, key) = (read("server.crt"), read("server.key"));
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start_with_tls(100, &cert, &key))
        .await
        .expect("join")
        .expect("a TLS cluster");
    let url = cluster.url("postgres");
    let ca_file = |f: &str| d.join(f).display().to_string();

    // The wrong CA: refused before anything is recorded; no CA file at all: refused too.
    env.run_with(
        &[
            "db-server",
            "add",
            "secure",
            "--ca-file",
            &ca_file("another-ca.crt"),
        ],
        &[("PORTICO_DB_SERVER_URL", &url)],
    )
    .assert_error("invalid peer certificate: UnknownIssuer");
    env.run_with(
        &[
            "db-server",
            "add",
            "secure",
            "--ca-file",
            &ca_file("server.csr"),
        ],
        &[("PORTICO_DB_SERVER_URL", &url)],
    )
    .assert_error("--ca-file");
    let listed = env.json(&["db-server", "list", "--json"]);
    assert!(
        listed
            .as_array()
            .is_none_or(|a| a.iter().all(|s| s["name"] != "secure")),
        "{listed}"
    );

    // Its own CA: registered, and tenants of both tiers live there.
    let out = env.ok_with(
        &[
            "db-server",
            "add",
            "secure",
            "--ca-file",
            &ca_file("portico-test-ca.crt"),
        ],
        &[("PORTICO_DB_SERVER_URL", &url)],
    );
    assert!(out.contains("TLS"), "{out}");
    env.ok(&["tenant", "create", "ded", "--db-server", "secure"]);
    env.ok(&[
        "tenant",
        "create",
        "poo",
        "--db-server",
        "secure",
        "--tier",
        "pooled",
    ]);
    let tokens: Vec<(&str, String)> = ["ded", "poo"]
        .into_iter()
        .map(|s| (s, env.tenant_token(s, "t", "admin")))
        .collect();
    let server = env.serve(&[]);
    for (slug, token) in &tokens {
        let r = server
            .request(
                Method::GET,
                &host_of(slug),
                "/api/v1/tenant",
                Some(token),
                &[],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{slug}: {r:?}");
        assert_eq!(r.body["slug"], *slug);
    }
    // Every runtime and provisioning session on that server is encrypted.
    let admin = crate::support::connect(&url).await;
    let row = admin
        .query_one(
            "select count(*) filter (where s.ssl), count(*)
               from pg_stat_activity a join pg_stat_ssl s on s.pid = a.pid
              where a.application_name in ('portico-runtime', 'portico-provisioning')",
            &[],
        )
        .await
        .expect("sessions");
    let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 2, "runtime sessions on the TLS server: {all}");
    assert_eq!(encrypted, all, "every session uses TLS");
    drop(server);
    drop(admin);
    env.cleanup().await;
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .expect("join")
        .expect("stopping the TLS cluster");
}
