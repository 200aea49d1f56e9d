//! The OpenAPI document: generated from the code, served, committed, and not drifting.

use crate::support::{Backend, TestEnv, host_of};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/v1.json");

/// Fails when the committed `openapi/v1.json` differs from what the code generates. To update
/// it after an intended API change: `PORTICO_WRITE_OPENAPI=1 ./infra/test.sh --test e2e -- openapi`.
#[tokio::test]
async fn the_committed_openapi_document_matches_the_code_and_is_served() {
    let generated = portico_tenant_runtime::portal::openapi::json();
    if std::env::var_os("PORTICO_WRITE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, format!("{generated}\n")).expect("write openapi/v1.json");
    }
    let committed = std::fs::read_to_string(COMMITTED).expect("openapi/v1.json is committed");
    assert!(
        committed.trim_end() == generated,
        "openapi/v1.json is out of date; regenerate it (see this test's doc comment)"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/documents",
        "/api/v1/documents/{id}/content",
        "/api/v1/tickets",
        "/api/v1/audit-events",
        "/api/v1/approvals/{id}/approve",
        "/d/{token}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let server = env.serve(&[]);
    let served = server
        .get(&host_of("acme"), "/api/v1/openapi.json", None)
        .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, doc);
    env.cleanup().await;
}

/// The contract is valid OpenAPI 3.1 (openapi-spec-validator), a Python client generated from it
/// (openapi-python-client) compiles and imports, and a few hundred requests
/// Schemathesis generates from it — valid and invalid, with a real admin token — find no server
/// error, no status the contract does not document, and no response that contradicts its schema
/// or content type. Both tools come from the venv `infra/install.sh` builds.
#[tokio::test]
async fn the_contract_validates_and_generated_requests_find_nothing() {
    let venv = std::path::PathBuf::from(
        std::env::var("PORTICO_TEST_VENV").expect("PORTICO_TEST_VENV (run through infra/test.sh)"),
    );
    let validated = std::process::Command::new(venv.join("bin/openapi-spec-validator"))
        .arg(COMMITTED)
        .output()
        .expect("openapi-spec-validator");
    assert!(
        validated.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let env = TestEnv::new(Backend::FileLocal).await;

    // A client generated from the contract compiles and every module of it imports.
    let generated = env.dir.path().join("client");
    let config = env.dir.path().join("generator.yml");
    std::fs::write(&config, "post_hooks: []\n").expect("generator config");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("runs");
        assert!(
            out.status.success(),
            "{cmd:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        std::process::Command::new(venv.join("bin/openapi-python-client"))
            .args([
                "generate",
                "--meta",
                "none",
                "--path",
                COMMITTED,
                "--output-path",
            ])
            .arg(&generated)
            .arg("--config")
            .arg(&config),
    );
    run(std::process::Command::new(venv.join("bin/python"))
        .current_dir(env.dir.path())
        .args([
            "-c",
            "import importlib, pkgutil, client\n\
             names = [m.name for m in pkgutil.walk_packages(client.__path__, 'client.')]\n\
             [importlib.import_module(n) for n in names]\n\
             assert any(n.endswith('tickets_create') for n in names), names",
        ]));

    env.ok(&["tenant", "create", "acme"]);
    // A token acting for an admin *user*, so four-eyes decisions are reachable too.
    let (_, admin) = crate::portal::user(&env, "acme", "admin@acme.example", "admin").await;
    let server = env.serve(&[
        ("PORTICO_RATE_LIMIT_PER_IP", "0"),
        ("PORTICO_RATE_LIMIT_PER_TENANT", "0"),
        ("PORTICO_ANONYMOUS_LIMIT_PER_IP", "0"),
        ("PORTICO_ANONYMOUS_LIMIT_PER_TENANT", "0"),
    ]);
    let report = env.dir.path().join("schemathesis");
    let mut cmd = tokio::process::Command::new(venv.join("bin/schemathesis"));
    cmd.args(["run", COMMITTED, "--url"])
        .arg(format!("http://{}", server.addr))
        .args(["-H", &format!("Host: {}", host_of("acme"))])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--seed",
            "20261205",
            // One worker: Hypothesis describes strategies with `ast.parse`, which CPython
            // 3.11 can trip over when two threads do it at once ("AST constructor recursion
            // depth mismatch", seen once under a loaded full run).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            // Hypothesis' speed health checks trip on a loaded CI machine; they say nothing
            // about the API.
            "--suppress-health-check",
            "all",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // Its cache goes to the test's own directory, not the source tree.
        .current_dir(env.dir.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), cmd.output())
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran: a summary with a non-zero count of generated cases.
    // ("Test cases:" then "  1106 generated, 1106 passed")
    let cases = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" generated,")
                .and_then(|(n, _)| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    assert!(cases >= 200, "only {cases} test cases ran:\n{stdout}");
    drop(server);
    env.cleanup().await;
}
