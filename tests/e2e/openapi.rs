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
