//! Architecture rules that the compiler cannot check: the runtime never creates or destroys
//! tenant resources and never writes the catalog (ARCHITECTURE.md, "Invariants").

use std::path::Path;

fn rust_sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn tenant_runtime_neither_provisions_nor_writes_the_catalog() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenant-runtime");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
    for forbidden in ["portico-provisioning", "portico-platform"] {
        assert!(
            !manifest.contains(forbidden),
            "tenant-runtime must not depend on {forbidden}"
        );
    }
    let mut files = Vec::new();
    rust_sources(&root.join("src"), &mut files);
    assert!(!files.is_empty());
    let mut forbidden: Vec<String> = [
        "create database",
        "drop database",
        "create role",
        "drop role",
        "alter role",
        "create_key",
        "schedule_key_deletion",
        "create_alias",
        "delete_alias",
    ]
    .map(String::from)
    .to_vec();
    // It reads the catalog; it writes none of its tables.
    for table in [
        "tenants",
        "tenant_domains",
        "tenant_placements",
        "provisioning_runs",
        "provisioning_steps",
        "db_servers",
        "operator_tokens",
        "operator_audit",
        "sso_domain_claims",
        "catalog_releases",
        "migration_runs",
        "migration_run_tenants",
        "feature_rollouts",
        "tenant_features",
    ] {
        for verb in ["insert into", "update", "delete from"] {
            forbidden.push(format!("{verb} {table}"));
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file)
            .expect("source")
            .to_lowercase();
        for f in &forbidden {
            assert!(
                !text.contains(f.as_str()),
                "{} contains '{f}'",
                file.display()
            );
        }
    }
}

/// The runtime's one writable control-plane pool serves the shared SAML replay cache and
/// nothing else: only `replay.rs` queries through it (every statement there names
/// `saml_replay`), and the pool is handed to nothing but `replay::record`.
#[test]
fn the_runtime_state_pool_only_touches_the_replay_cache() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenant-runtime/src");
    let mut files = Vec::new();
    rust_sources(&root, &mut files);
    let mut replay_users = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let name = file
            .strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        if text.contains("into saml_replay") || text.contains("from saml_replay") {
            replay_users.push(name.clone());
            let statements: Vec<&str> = text
                .split("sqlx::query(")
                .skip(1)
                .map(|q| q.split(')').next().unwrap_or(""))
                .collect();
            assert!(!statements.is_empty());
            for q in statements {
                assert!(q.contains("saml_replay"), "{}: {q}", file.display());
            }
        }
        // Where the pool is used at all: its definition, its construction, and the one call.
        if text.contains(".state_pool") {
            for (i, _) in text.match_indices(".state_pool") {
                let before = &text[..i];
                let call = before
                    .rfind("crate::replay::record(")
                    .map(|at| &before[at..]);
                assert!(
                    call.is_some_and(|c| !c.contains(';')),
                    "{name} uses the state pool outside replay::record"
                );
            }
        }
    }
    assert_eq!(replay_users, ["replay.rs"]);
}

#[test]
fn only_provisioning_issues_ddl_for_tenant_resources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for crate_dir in ["platform/src", "platform/core/src", "tenant-runtime/src"] {
        let mut files = Vec::new();
        rust_sources(&root.join(crate_dir), &mut files);
        for file in files {
            // The demo creates its own control-plane database in its own throwaway cluster.
            if file.ends_with("demo.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file)
                .expect("source")
                .to_lowercase();
            for f in [
                "create database",
                "drop database",
                "create role",
                "drop role",
                "create_key(",
            ] {
                assert!(!text.contains(f), "{} contains '{f}'", file.display());
            }
        }
    }
}

/// The runtime's catalog sessions are read-only: PostgreSQL itself refuses a write.
#[tokio::test]
async fn the_runtime_catalog_pool_cannot_write() {
    let env = crate::support::TestEnv::new(crate::support::Backend::FileLocal).await;
    env.ok(&["migrate"]);
    let pool = portico_platform::serve::runtime_catalog_pool(&env.settings())
        .await
        .expect("runtime catalog pool");
    let err = sqlx::query("update tenants set status = 'active'")
        .execute(&pool)
        .await
        .expect_err("a write through the runtime's catalog pool must fail");
    assert!(err.to_string().contains("read-only transaction"), "{err}");
    // Reads (and LISTEN) work.
    sqlx::query("listen portico_catalog")
        .execute(&pool)
        .await
        .expect("listen");
    pool.close().await;
    env.cleanup().await;
}

/// Error codes are values of one enum (`http::ErrorCode`), never string literals handed to a
/// problem: a code can then neither be misspelt nor silently renamed.
#[test]
fn problems_take_error_codes_not_strings() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_sources(&base.join("tenant-runtime/src"), &mut files);
    rust_sources(&base.join("platform/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("Problem::new(") {
            let args = &rest[i + "Problem::new(".len()..];
            let second = args
                .split_once(',')
                .map(|(_, after)| after.trim_start())
                .unwrap_or("");
            assert!(
                !second.starts_with('"'),
                "{}: a problem with a string code: {}",
                file.display(),
                &args[..args.len().min(80)]
            );
            rest = args;
        }
    }
}

/// The runtime's modules form layers, and no module imports one above it:
///
/// | layer | modules |
/// |---|---|
/// | route table | `routes.rs` |
/// | features (handlers) | `portal/`, `identity/web/`, `identity/connections_api.rs` |
/// | request context | `caller.rs`, `tenancy.rs` |
/// | shared state | `state.rs` |
/// | foundations | everything else (stores, pools, resolution, HTTP edge, content, SSO protocols) |
#[test]
fn runtime_modules_never_import_upwards() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenant-runtime/src");
    let mut files = Vec::new();
    rust_sources(&root, &mut files);
    let features = [
        "crate::portal",
        "crate::identity::web",
        "crate::identity::connections_api",
    ];
    let context = ["crate::caller", "crate::tenancy"];
    for file in files {
        let name = file
            .strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).expect("source");
        let uses = |paths: &[&'static str]| -> Option<&'static str> {
            paths.iter().find(|p| text.contains(*p)).copied()
        };
        let layer = if name == "routes.rs" || name == "lib.rs" {
            4
        } else if name.starts_with("portal/")
            || name.starts_with("identity/web/")
            || name == "identity/connections_api.rs"
        {
            3
        } else if name == "caller.rs" || name == "tenancy.rs" {
            2
        } else if name == "state.rs" {
            1
        } else {
            0
        };
        if layer < 4 {
            assert!(
                !text.contains("crate::routes"),
                "{name} imports the route table"
            );
        }
        if layer < 3 {
            assert_eq!(uses(&features), None, "{name} imports a feature");
        }
        if layer < 2 {
            assert_eq!(uses(&context), None, "{name} imports the request context");
        }
        if layer < 1 {
            assert!(
                !text.contains("crate::state"),
                "{name} imports the shared state"
            );
        }
    }
}

/// The operator API stands on `portico-http` and `portico-core`, not on the tenant runtime's
/// edge or token code; and `portico-http` knows no tenant.
#[test]
fn the_edge_and_the_token_primitive_are_shared_not_borrowed() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_sources(&base.join("platform/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        for borrowed in [
            "portico_tenant_runtime::http",
            "portico_tenant_runtime::tenancy",
            "store::tokens::{generate",
            "tokens::presented_digest",
        ] {
            assert!(
                !text.contains(borrowed),
                "{} uses {borrowed}",
                file.display()
            );
        }
    }
    let manifest =
        std::fs::read_to_string(base.join("platform/http/Cargo.toml")).expect("manifest");
    for forbidden in [
        "portico-tenant-runtime",
        "portico-platform",
        "portico-provisioning",
        "sqlx",
        "tokio-postgres",
    ] {
        assert!(
            !manifest.contains(forbidden),
            "portico-http depends on {forbidden}"
        );
    }
}
