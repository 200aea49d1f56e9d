//! Fleet schema migrations: tenants provisioned by older releases (at every earlier tenant
//! schema, with data) are brought to the current one by `tenant migrate` / `fleet migrate`,
//! end up equal to a freshly provisioned tenant, keep every row and a verifying audit chain;
//! fleet runs go in waves, stop on their failure budget, resume after a kill, skip nothing
//! silently; a newer schema is still served; the catalog's release window; feature flags.
//!
//! Older tenants are built in the harness, not with a production switch: the tenant's database
//! is replaced by a copy of a template built with only the first N migrations, exactly as an
//! older binary provisioned it (same layout), and the catalog records version N.

use std::time::Duration;

use portico_provisioning::migrations::{self, Migration};
use serde_json::{Value, json};

use crate::idp::Browser;
use crate::portal::{upload, user};
use crate::support::{
    Backend, OPERATOR_HOST, RunBounded, TestEnv, admin_url, connect, host_of, within,
};

const PASSWORD: &str = "correct horse battery staple";

/// A template with the first `version` shipped migrations, under a name of its own.
async fn old_template(env: &TestEnv, version: usize) -> String {
    let name = format!(
        "portico_test_tpl_v{version}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = connect(&admin_url("postgres")).await;
    portico_provisioning::database::ensure_template_named(
        &env.server(),
        &admin,
        &name,
        &migrations::shipped()[..version],
        false,
    )
    .await
    .expect("old template");
    name
}

async fn drop_template(name: &str) {
    let admin = connect(&admin_url("postgres")).await;
    for stmt in [
        format!("alter database {name} with is_template false"),
        format!("drop database {name}"),
    ] {
        admin
            .batch_execute(&stmt)
            .await
            .expect("dropping the old template");
    }
}

/// Replaces `slug`'s database by a copy of `template` (at `version`), as an older release
/// provisioned it, and records that version in the catalog.
async fn make_old(env: &TestEnv, slug: &str, template: &str, version: i32) {
    let p = env.platform().await;
    let (_, role) = p.connect_as_admin(slug).await.expect("tenant");
    let db = role.clone();
    let admin = connect(&admin_url("postgres")).await;
    for stmt in [
        format!("drop database {db} with (force)"),
        format!("create database {db} template {template} strategy wal_log"),
        format!("revoke all on database {db} from public"),
        format!("alter database {db} owner to {role}"),
    ] {
        admin
            .batch_execute(&stmt)
            .await
            .expect("recreating the tenant database at an older schema");
    }
    let t = p
        .catalog
        .tenant_by_slug(slug)
        .await
        .expect("catalog")
        .expect("tenant");
    let client = p.connect_as_tenant(slug).await.expect("tenant db");
    client
        .execute(
            "insert into tenant_profile (tenant_id, slug, display_name) values ($1, $2, $2)",
            &[&t.id, &slug],
        )
        .await
        .expect("profile");
    env.catalog()
        .await
        .execute(
            "update tenants set schema_version = $2 where slug = $1",
            &[&slug, &version],
        )
        .await
        .expect("catalog version");
}

/// Data of every kind the schema at `version` has, written as the tenant role. Returns the
/// number of audit events written.
async fn seed(env: &TestEnv, slug: &str, version: i32) -> usize {
    let client = env.tenant_db(slug).await;
    if version >= 2 {
        client
            .execute(
                "insert into api_tokens (id, name, role, token_hash) values ($1, 'legacy', 'admin', $2)",
                &[&uuid::Uuid::new_v4(), &vec![7u8; 32]],
            )
            .await
            .expect("token");
    }
    if version < 3 {
        return 0;
    }
    let hash = portico_tenant_runtime::store::users::hash_password(&PASSWORD.to_owned().into())
        .expect("hash");
    let alice = uuid::Uuid::new_v4();
    let conn = uuid::Uuid::new_v4();
    client
        .batch_execute(&format!(
            "insert into users (id, email, role) values ('{alice}', 'alice@{slug}.example', 'admin');
             insert into user_identities (user_id, connection_id, subject)
                 values ('{alice}', null, 'alice@{slug}.example');
             insert into local_credentials (user_id, password_hash) values ('{alice}', '{hash}');
             insert into sso_connections (id, name, kind, config, default_role)
                 values ('{conn}', 'corp', 'oidc', '{{\"kind\": \"oidc\", \"issuer\": \"https://idp.example\", \"client_id\": \"portal\"}}', 'member');
             insert into sessions (id_hash, user_id, csrf_token, expires_at)
                 values ('\\x01', '{alice}', 'csrf', now() + interval '1 day');"
        ))
        .await
        .expect("identity data");
    if version == 3 {
        client
            .batch_execute(
                "insert into audit_events (at, event_type, actor, client_ip, outcome, reason, details)
                 values ('2026-11-01 10:00:00.123456+00', 'login_success', 'alice', '192.0.2.7', 'success', null, '{}'),
                        ('2026-11-01 10:05:00+00', 'login_failure', 'mallory', '2001:db8::1', 'failure', 'bad_password', '{\"b\": 1, \"a\": [\"x\", {\"z\": null}]}'),
                        ('2026-11-02 08:00:00+00', 'logout', 'alice', null, 'success', null, '{}')",
            )
            .await
            .expect("V3 audit events");
        return 3;
    }
    // V4: the chained log (payload hashes as the runtime computes them), portal data.
    let at = time::OffsetDateTime::from_unix_timestamp(1_780_000_000).expect("time");
    let details = json!({"k": "v"});
    let payload = portico_core::audit_chain::canonical(
        at,
        "site_created",
        "alice",
        None,
        None,
        Some("berlin"),
        "success",
        None,
        &details,
    );
    client
        .execute(
            "insert into audit_events (at, event_type, actor, target, outcome, details, payload_hash,
                                       seq, prev_hash, hash)
             values ($1, 'site_created', 'alice', 'berlin', 'success', $2, $3, 0, '', '')",
            &[&at, &details, &portico_core::audit_chain::sha256(&payload)],
        )
        .await
        .expect("V4 audit event");
    client
        .batch_execute(
            "insert into sites (code, name) values ('berlin', 'Berlin');
             insert into tickets (id, title, created_by) values (gen_random_uuid(), 'Old ticket', 'alice');
             insert into documents (id, doc_type, title, site, created_by)
                 values (gen_random_uuid(), 'contract', 'Old contract', 'berlin', 'alice');",
        )
        .await
        .expect("portal data");
    1
}

/// Row counts of the tables [`seed`] writes for a tenant created at `version` (3 or later).
async fn counts(env: &TestEnv, slug: &str, version: i32) -> Value {
    let client = env.tenant_db(slug).await;
    let mut out = serde_json::Map::new();
    let portal: &[&str] = if version >= 4 {
        &["sites", "documents", "tickets"]
    } else {
        &[]
    };
    for table in [
        "api_tokens",
        "users",
        "user_identities",
        "local_credentials",
        "sso_connections",
        "sessions",
    ]
    .iter()
    .chain(portal)
    {
        let n: i64 = client
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .expect("count")
            .get(0);
        out.insert((*table).to_owned(), n.into());
    }
    Value::Object(out)
}

/// `pg_dump --schema-only` of a tenant's database, with its database and role names (the only
/// per-tenant names) replaced, and pg_dump's per-run `\restrict` keys left out.
fn schema_dump(env: &TestEnv, database: &str) -> String {
    let url = admin_url(database);
    let out = crate::support::output_within(
        std::process::Command::new(crate::support::pg_tool("pg_dump")).args([
            "--schema-only",
            "--dbname",
            &url,
        ]),
        crate::support::COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = env;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| l.replace(database, "t_TENANT"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn database_of(env: &TestEnv, slug: &str) -> String {
    env.platform()
        .await
        .connect_as_admin(slug)
        .await
        .expect("tenant")
        .1
}

#[tokio::test]
async fn tenants_of_every_older_schema_migrate_with_their_data_to_a_fresh_tenants_schema() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let latest = migrations::latest_version();
    env.ok(&["tenant", "create", "fresh"]);
    let mut olds = Vec::new();
    for version in 1..latest {
        let slug = format!("old{version}");
        env.ok(&["tenant", "create", &slug]);
        let template = old_template(&env, version as usize).await;
        make_old(&env, &slug, &template, version).await;
        drop_template(&template).await;
        let events = seed(&env, &slug, version).await;
        olds.push((slug, version, events));
    }
    let server = env.serve(&[]);
    // Below the oldest schema the code serves: 503 tenant_upgrading with Retry-After, never 500.
    let below: Vec<_> = olds
        .iter()
        .filter(|(_, v, _)| *v < portico_tenant_runtime::MIN_TENANT_SCHEMA)
        .collect();
    assert!(!below.is_empty());
    for (slug, _, _) in below {
        let r = server
            .get(&host_of(slug), "/api/v1/tenant", Some("x"))
            .await;
        r.assert_problem(503, "tenant_upgrading");
        assert!(r.header("retry-after").is_some(), "{r:?}");
        let page = server.get(&host_of(slug), "/login", None).await;
        assert_eq!(page.status, 503, "{page:?}");
    }
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for (slug, version, _) in &olds {
            v.push(if *version >= 3 {
                counts(&env, slug, *version).await
            } else {
                Value::Null
            });
        }
        v
    };

    let fresh_dump = schema_dump(&env, &database_of(&env, "fresh").await);
    for ((slug, version, events), before) in olds.iter().zip(before) {
        let r = env.json(&["tenant", "migrate", slug, "--json"]);
        assert_eq!(
            (&r["state"], &r["version_before"], &r["version_after"]),
            (&json!("succeeded"), &json!(version), &json!(latest)),
            "{r}"
        );
        // Indistinguishable from a freshly provisioned tenant: objects, owners, ACLs.
        let dump = schema_dump(&env, &database_of(&env, slug).await);
        if dump != fresh_dump {
            let diff: Vec<_> = dump
                .lines()
                .zip(fresh_dump.lines())
                .filter(|(a, b)| a != b)
                .take(5)
                .collect();
            panic!("{slug}: schema differs from a fresh tenant's: {diff:?}");
        }
        // Every row kept; the audit chain verifies (V3 events carried into it, marked).
        if *version >= 3 {
            assert_eq!(counts(&env, slug, *version).await, before, "{slug}");
        }
        let verified = env.ok(&["audit", "verify", slug]);
        let expected = match version {
            3 => events + 1,
            _ => *events,
        };
        assert!(
            verified.contains(&format!("is intact: {expected} events")),
            "{slug}: {verified}"
        );
        // Served again within a second (the catalog's notification refreshes the cached
        // route): sign-in (the V3 user's password), tokens, documents.
        let host = host_of(slug);
        let served = within(Duration::from_secs(1), async || {
            server.get(&host, "/login", None).await.status == 200
        })
        .await;
        assert!(
            served.is_some(),
            "{slug} still not served a second after its migration: {:?} {:?}",
            server.get(&host, "/login", None).await,
            server
                .stderr_lines()
                .iter()
                .filter(|l| l.contains("ERROR") || l.contains("error"))
                .collect::<Vec<_>>()
        );
        if *version >= 3 {
            let mut b = Browser::new(&server);
            let r = crate::local_accounts::password_login(
                &mut b,
                slug,
                &format!("alice@{slug}.example"),
                PASSWORD,
            )
            .await;
            assert_eq!(
                (r.status, r.location.as_deref()),
                (303, Some("/")),
                "{slug}: {r:?}"
            );
        }
        let (_, token) = user(&env, slug, &format!("bob@{slug}.example"), "admin").await;
        let tenant = server.get(&host, "/api/v1/tenant", Some(&token)).await;
        assert_eq!(tenant.status, 200, "{slug}: {tenant:?}");
        let doc = upload(
            &server,
            &host,
            &token,
            &[("type", "invoice"), ("title", "After the upgrade")],
            b"%PDF-1.4 migrated".to_vec(),
        )
        .await;
        assert_eq!(doc.status, 201, "{slug}: {doc:?}");
    }
    // The carried V3 events are in the chain in their order, followed by the marker.
    let exported: Vec<Value> = env
        .ok(&["audit", "export", "old3"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let kinds: Vec<&str> = exported
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        &kinds[..4],
        [
            "login_success",
            "login_failure",
            "logout",
            "audit_events_carried"
        ],
        "{exported:?}"
    );
    assert_eq!(exported[0]["client_ip"], "192.0.2.7");
    assert_eq!(
        exported[1]["details"],
        json!({"b": 1, "a": ["x", {"z": null}]})
    );
    assert_eq!(exported[3]["details"]["events"], 3);
    // Migrating again changes nothing.
    let again = env.json(&["tenant", "migrate", "old3", "--json"]);
    assert_eq!(
        (&again["version_before"], &again["version_after"]),
        (&json!(latest), &json!(latest))
    );
    env.cleanup().await;
}

/// `slugs` created now and rebuilt one schema behind (at the previous tenant schema).
async fn behind(env: &TestEnv, slugs: &[&str]) {
    let previous = migrations::latest_version() - 1;
    let template = old_template(env, previous as usize).await;
    for slug in slugs {
        env.ok(&["tenant", "create", slug]);
        make_old(env, slug, &template, previous).await;
    }
    drop_template(&template).await;
}

/// The tenant's schema version as its database records it, read as the server's admin.
async fn db_version(env: &TestEnv, slug: &str) -> i32 {
    let (client, _) = env
        .platform()
        .await
        .connect_as_admin(slug)
        .await
        .expect("admin");
    migrations::current_version(&client).await.expect("version")
}

async fn catalog_version(env: &TestEnv, slug: &str) -> Option<i32> {
    env.catalog()
        .await
        .query_one(
            "select schema_version from tenants where slug = $1",
            &[&slug],
        )
        .await
        .expect("catalog")
        .get(0)
}

/// The JSON lines a `fleet migrate --json` printed: tenant results, then the summary.
fn json_lines(stdout: &str) -> (Vec<Value>, Value) {
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let summary = lines.pop().expect("summary line");
    (lines, summary["summary"].clone())
}

#[tokio::test]
async fn fleet_runs_go_canary_first_stop_at_the_failure_budget_and_resume_after_a_kill() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let latest = migrations::latest_version();
    let slugs = ["ta1", "ta2", "ta3", "ta4", "ta5", "ta6"];
    behind(&env, &slugs).await;
    env.ok(&["tenant", "canary", "ta3", "on"]);
    // ta5's schema makes the migration fail: a constraint the newest migration (V8) replaces
    // is gone.
    let (a5, _) = env
        .platform()
        .await
        .connect_as_admin("ta5")
        .await
        .expect("ta5");
    a5.batch_execute("alter table approval_policy drop constraint approval_policy_action_check")
        .await
        .expect("poison");

    // A dry run plans and changes nothing.
    let dry = env.ok(&["fleet", "migrate", "--dry-run", "--json", "--canary", "1"]);
    let (plan, summary) = json_lines(&dry);
    assert_eq!(plan.len(), 6, "{dry}");
    assert!(summary["run"].is_null(), "{dry}");
    assert_eq!(env.json(&["fleet", "runs", "--json"]), json!([]));
    assert_eq!(catalog_version(&env, "ta1").await, Some(latest - 1));

    // Canary wave (ta3, flagged, and one more) first; ta5 fails in the second wave and the run
    // stops there: its migration rolled back, the tenant left on its old schema.
    let r = env.run(&[
        "fleet",
        "migrate",
        "--json",
        "--canary",
        "1",
        "--max-failures",
        "0",
        "--concurrency",
        "2",
    ]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let (results, summary) = json_lines(&r.stdout);
    assert_eq!(summary["run"]["status"], "stopped", "{}", r.stdout);
    let waves: Vec<i64> = results
        .iter()
        .map(|t| t["wave"].as_i64().expect("wave"))
        .collect();
    assert!(
        waves.windows(2).all(|w| w[0] <= w[1]),
        "canaries first: {waves:?}"
    );
    assert_eq!(waves.iter().filter(|w| **w == 0).count(), 2, "{waves:?}");
    assert!(results.iter().any(|t| t["slug"] == "ta3" && t["wave"] == 0));
    let failed = results
        .iter()
        .find(|t| t["slug"] == "ta5")
        .expect("ta5 ran");
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("V{latest}")),
        "{failed}"
    );
    assert_eq!(db_version(&env, "ta5").await, latest - 1);
    assert_eq!(catalog_version(&env, "ta5").await, Some(latest - 1));
    let run_id = summary["run"]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let first_done: Vec<String> = results
        .iter()
        .filter(|t| t["state"] == "succeeded")
        .map(|t| t["slug"].as_str().expect("slug").to_owned())
        .collect();

    // Fixed, the same command resumes the same run; finished tenants are not touched again.
    a5.batch_execute(
        "alter table approval_policy add constraint approval_policy_action_check
         check (action is not null)",
    )
    .await
    .expect("fix");
    resume_to_success(&env, &run_id);
    let shown = env.json(&["fleet", "run", "show", &run_id, "--json"]);
    for t in shown["tenants"].as_array().expect("tenants") {
        assert_eq!(t["state"], "succeeded", "{t}");
        let slug = t["slug"].as_str().expect("slug");
        let attempts = if first_done.iter().any(|d| d == slug) {
            1
        } else if slug == "ta5" {
            2
        } else {
            1
        };
        assert_eq!(t["attempts"], attempts, "{t}");
    }
    for slug in slugs {
        assert_eq!(db_version(&env, slug).await, latest, "{slug}");
        assert_eq!(catalog_version(&env, slug).await, Some(latest), "{slug}");
    }

    // Ctrl-C in the middle of a run: the tenant in flight finishes, the rest stay pending, the
    // run is recorded as stopped. (A suspended tenant is migrated like any other.) The run
    // takes the tenants in its plan's order; a lock held on the next tenant's data keeps the
    // run busy with it until the signal is sent, so "in the middle" is a state, not a moment.
    let more = ["tb1", "tb2", "tb3", "tb4", "tb5", "tb6"];
    behind(&env, &more).await;
    env.ok(&["tenant", "suspend", "tb6"]);
    let (plan, _) = json_lines(&env.ok(&["fleet", "migrate", "--dry-run", "--json"]));
    let order: Vec<String> = plan
        .iter()
        .map(|t| t["slug"].as_str().expect("slug").to_owned())
        .collect();
    assert_eq!(order.len(), 6, "{plan:?}");
    let slugs_in = |v: &Value, state: &str| -> Vec<String> {
        v["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .filter(|t| t["state"] == state)
            .map(|t| t["slug"].as_str().expect("slug").to_owned())
            .collect()
    };
    let (first, rest, code) = interrupt_after_first_result(&env, "INT", &order[1]).await;
    assert_eq!(code, Some(1), "{first}{rest}");
    let (_, summary) = json_lines(&rest);
    let stopped_id = summary["run"]["run_id"].as_str().expect("run").to_owned();
    assert_eq!(summary["run"]["status"], "stopped", "{rest}");
    assert!(
        summary["run"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{rest}"
    );
    let shown = env.json(&["fleet", "run", "show", &stopped_id, "--json"]);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(slugs_in(&shown, "succeeded")),
        sorted(order[..2].to_vec()),
        "{shown}"
    );
    assert_eq!(
        sorted(slugs_in(&shown, "pending")),
        sorted(order[2..].to_vec()),
        "{shown}"
    );

    // Killed (SIGKILL) in the middle of the resumed run: the same command finishes it.
    let (first, _, _) = interrupt_after_first_result(&env, "KILL", &order[3]).await;
    let killed: Value = serde_json::from_str(&first).expect("a tenant result");
    assert_eq!(
        (&killed["slug"], &killed["state"]),
        (&json!(order[2]), &json!("succeeded")),
        "{first}"
    );
    let open = env.json(&["fleet", "runs", "--json"]);
    let open_id = open[0]["run_id"].as_str().expect("run").to_owned();
    assert_eq!(open_id, stopped_id, "the interrupted run was resumed");
    assert_eq!(open[0]["status"], "running", "{open}");

    // Meanwhile, a second run is refused, naming the first (whose lock is held here).
    let catalog = env.catalog().await;
    let locked: bool = catalog
        .query_one(
            "select pg_try_advisory_lock($1)",
            &[&0x706f_7274_6963_6f01_i64],
        )
        .await
        .expect("lock")
        .get(0);
    assert!(locked);
    env.run(&["fleet", "migrate"])
        .assert_error(&format!("fleet run {open_id} is in progress"));
    catalog
        .execute(
            "select pg_advisory_unlock($1)",
            &[&0x706f_7274_6963_6f01_i64],
        )
        .await
        .expect("unlock");

    let (out, results) = resume_to_success(&env, &open_id);
    let redone: Vec<String> = results
        .iter()
        .map(|t| t["slug"].as_str().expect("slug").to_owned())
        .collect();
    assert_eq!(
        sorted(redone),
        sorted(order[3..].to_vec()),
        "only the tenants not finished before an interruption are migrated: {out}"
    );
    for slug in more {
        assert_eq!(db_version(&env, slug).await, latest, "{slug}");
        assert_eq!(catalog_version(&env, slug).await, Some(latest), "{slug}");
    }
    let status = env.json(&["fleet", "status", "--json"]);
    assert_eq!(
        status["by_version"],
        json!({ latest.to_string(): 12 }),
        "{status}"
    );
    assert_eq!(status["last_run"]["run_id"], json!(open_id));
    // Nothing left: a no-op.
    let noop = env.ok(&["fleet", "migrate"]);
    assert!(noop.contains("nothing to do: all 12 tenant(s)"), "{noop}");
    env.cleanup().await;
}

/// Runs `fleet migrate --json` again, which must resume run `id` and finish it; returns the
/// output and the tenant results.
fn resume_to_success(env: &TestEnv, id: &str) -> (String, Vec<Value>) {
    let out = env.ok(&["fleet", "migrate", "--json"]);
    let (results, summary) = json_lines(&out);
    assert_eq!(
        (
            &summary["resumed"],
            &summary["run"]["run_id"],
            &summary["run"]["status"]
        ),
        (&json!(true), &json!(id), &json!("succeeded")),
        "{out}"
    );
    (out, results)
}

/// As `slug`'s own role: an open transaction holding a lock its next migration needs.
async fn hold_lock(env: &TestEnv, slug: &str) -> portico_tenant_runtime::pools::TenantConn {
    let holder = env.tenant_db(slug).await;
    holder
        .batch_execute("begin; lock table approval_policy in access share mode")
        .await
        .expect("lock");
    holder
}

/// Starts `fleet migrate --json --concurrency 1` with a lock held on `blocked`'s data, waits
/// for the first tenant result and until the run waits for that lock, sends `signal` (`INT`,
/// `KILL`), then lets the lock go; returns the first line, the rest of the output and the exit
/// code.
async fn interrupt_after_first_result(
    env: &TestEnv,
    signal: &str,
    blocked: &str,
) -> (String, String, Option<i32>) {
    let holder = hold_lock(env, blocked).await;
    let database = database_of(env, blocked).await;
    use std::io::{BufRead, Read};
    let mut child = env
        .command()
        .args(["fleet", "migrate", "--json", "--concurrency", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("fleet migrate");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first result");
    let admin = connect(&admin_url("postgres")).await;
    let waiting = within(Duration::from_secs(60), async || {
        admin
            .query_one(
                "select exists (select 1 from pg_stat_activity
                                 where datname = $1 and wait_event_type = 'Lock')",
                &[&database],
            )
            .await
            .expect("activity")
            .get(0)
    })
    .await;
    assert!(waiting.is_some(), "the run never reached {blocked}");
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{signal}");
    holder.batch_execute("commit").await.expect("release");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest of the output");
    let status = child.wait().expect("wait");
    (first, rest, status.code())
}

#[tokio::test]
async fn a_down_server_fails_its_tenants_fast_and_the_others_go_on() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let latest = migrations::latest_version();
    behind(&env, &["near1", "near2"]).await;
    env.ok(&["tenant", "create", "far1"]);
    env.ok(&["tenant", "create", "far2"]);
    env.ok(&["tenant", "create", "provisioning1"]);
    let down = env.record_down_server("down").await;
    // Two tenants the catalog places on the down server, one schema behind; one tenant still
    // being provisioned.
    env.catalog()
        .await
        .batch_execute(&format!(
            "update tenant_placements set db_server_id = '{}'
              where tenant_id in (select id from tenants where slug in ('far1', 'far2'));
             update tenants set schema_version = {} where slug in ('far1', 'far2');
             update tenants set status = 'provisioning', schema_version = null
              where slug = 'provisioning1';",
            down.id,
            latest - 1
        ))
        .await
        .expect("placing tenants on the down server");
    let r = env.run(&["fleet", "migrate", "--json", "--max-failures", "0"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(!r.stdout.contains("secret-pw") && !r.stderr.contains("secret-pw"));
    let (results, summary) = json_lines(&r.stdout);
    let by_slug = |s: &str| results.iter().find(|t| t["slug"] == s).expect(s).clone();
    for far in ["far1", "far2"] {
        let t = by_slug(far);
        assert_eq!(t["state"], "failed", "{t}");
        assert!(
            t["error"]
                .as_str()
                .unwrap_or_default()
                .contains("'down' is unreachable"),
            "{t}"
        );
    }
    for near in ["near1", "near2"] {
        assert_eq!(by_slug(near)["state"], "succeeded");
        assert_eq!(db_version(&env, near).await, latest);
    }
    // Finished (not stopped: an unreachable server does not spend the budget), with the
    // provisioning tenant skipped and said so.
    assert_eq!(summary["run"]["status"], "failed", "{}", r.stdout);
    let run_id = summary["run"]["run_id"].as_str().expect("run");
    let shown = env.json(&["fleet", "run", "show", run_id, "--json"]);
    let skipped: Vec<&Value> = shown["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter(|t| t["state"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 1, "{shown}");
    assert_eq!(skipped[0]["slug"], "provisioning1");
    assert!(
        skipped[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("provisioned")
    );
    // Every run is in the operator audit, the command line's too.
    let audit = env.json(&["operator", "audit", "--json"]);
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|e| e["action"] == "fleet.run.finished"
                && e["outcome"] == "failed"
                && e["actor"].as_str().unwrap_or_default().starts_with("cli:")
                && e["detail"]["run_id"] == json!(run_id)),
        "{audit}"
    );
    // Bad input: one line, nothing recorded.
    env.run(&["fleet", "migrate", "--server", "nowhere"])
        .assert_error("no database server named 'nowhere'");
    env.run(&["fleet", "migrate", "--concurrency", "0"])
        .assert_error("--concurrency must be at least 1");
    env.run(&["tenant", "migrate", "nosuch"])
        .assert_error("no tenant named 'nosuch'");
    env.run(&["tenant", "migrate", "provisioning1"])
        .assert_error("still being provisioned");
    env.run(&["fleet", "run", "show", "not-a-uuid"])
        .assert_error("is not a run id");
    env.cleanup().await;
}

/// A tenant migrated by a later release (one more, additive migration) is served normally by
/// this binary, so the binary can be rolled back after a fleet migration.
#[tokio::test]
async fn a_tenant_at_a_newer_schema_is_still_served() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let latest = migrations::latest_version();
    let row = env.json(&["tenant", "create", "acme", "--json"]);
    let _ = row;
    let mut next = migrations::shipped();
    next.push(
        Migration::unapplied(
            &format!("V{}__a_later_release", latest + 1),
            "alter table tickets add column later_note text;
             create table later_things (id bigint not null constraint later_things_pkey primary key);",
        )
        .expect("migration"),
    );
    let (mut client, _) = env
        .platform()
        .await
        .connect_as_admin("acme")
        .await
        .expect("admin");
    let m = migrations::migrate_database(&mut client, &next, Default::default())
        .await
        .expect("the later release's migration");
    assert_eq!((m.before, m.after), (latest, latest + 1));
    env.catalog()
        .await
        .execute(
            "update tenants set schema_version = $1 where slug = 'acme'",
            &[&(latest + 1)],
        )
        .await
        .expect("catalog");
    let server = env.serve(&[]);
    let (_, token) = user(&env, "acme", "ann@acme.example", "admin").await;
    let acme = host_of("acme");
    assert_eq!(
        server
            .get(&acme, "/api/v1/tenant", Some(&token))
            .await
            .status,
        200
    );
    let t = crate::portal::post(
        &server,
        &acme,
        "/api/v1/tickets",
        &token,
        json!({"title": "Still works"}),
    )
    .await;
    assert_eq!(t.status, 201, "{t:?}");
    // This binary neither fails on it nor touches it.
    let r = env.json(&["tenant", "migrate", "acme", "--json"]);
    assert_eq!(
        (&r["state"], &r["version_before"], &r["version_after"]),
        (&json!("succeeded"), &json!(latest + 1), &json!(latest + 1)),
        "{r}"
    );
    assert!(env.ok(&["fleet", "migrate"]).contains("nothing to do"));
    env.cleanup().await;
}

/// Undoes `20261205000001_fleet.sql`: the catalog exactly as the previous release left it.
/// Undoes catalog release 5 (tenant deletion): the catalog as release 4 left it.
const UNDO_RELEASE_5: &str = "
    drop table tenant_deletions;
    drop table tenant_exports;
    drop table operator_approvals;
    drop table signing_keys;
    alter table provisioning_runs drop constraint provisioning_runs_kind_check;
    alter table provisioning_runs add constraint provisioning_runs_kind_check
        check (kind in ('create', 'move'));
    delete from catalog_releases where release = 5;
    delete from _sqlx_migrations where version in (20261207000001, 20261207000002, 20261207000003);";

/// Undoes catalog release 4 (online moves): the catalog as release 3 left it.
const UNDO_RELEASE_4: &str = "
    drop table tenant_moves;
    drop index provisioning_runs_one_open_move;
    alter table provisioning_runs drop constraint provisioning_runs_status_check;
    alter table provisioning_runs add constraint provisioning_runs_status_check
        check (status in ('running', 'succeeded', 'failed', 'rolling_back'));
    alter table provisioning_runs drop constraint provisioning_runs_kind_check;
    alter table provisioning_runs add constraint provisioning_runs_kind_check
        check (kind in ('create'));
    alter table tenants drop column write_frozen;
    delete from catalog_releases where release = 4;
    delete from _sqlx_migrations where version = 20261206000001;";

/// Undoes catalog release 3 (the pooled tier, TLS to servers): the catalog as release 2 left it.
const UNDO_RELEASE_3: &str = "
    drop trigger shared_databases_notify on shared_databases;
    drop function portico_notify_shared_database();
    alter table db_servers drop column ca_pem;
    drop index tenant_placements_schema_key, tenant_placements_shared_database_id_idx,
               tenant_placements_database_key;
    alter table tenant_placements drop constraint tenant_placements_tier_check,
        drop column schema_name, drop column shared_database_id;
    alter table tenant_placements
        add constraint tenant_placements_database_key unique (db_server_id, database_name);
    drop table shared_databases;
    alter table tenants drop constraint tenants_tier_check;
    alter table tenants add constraint tenants_tier_check check (tier in ('dedicated', 'shared'));
    delete from catalog_releases where release = 3;
    delete from _sqlx_migrations where version in (20261205000002, 20261205000003);";

/// Undoes catalog release 2 (fleet migrations, feature flags), after release 3.
const UNDO_RELEASE_2: &str = "
    drop table tenant_features, feature_rollouts, migration_run_tenants, migration_runs,
               catalog_releases;
    drop function portico_notify_features();
    alter table tenants drop column canary;
    create or replace function portico_notify_tenant() returns trigger language plpgsql as $$
    begin
        perform pg_notify('portico_catalog',
            json_build_object('tenant_id', coalesce(new.id, old.id))::text);
        return null;
    end $$;
    delete from _sqlx_migrations where version = 20261205000001;";

#[tokio::test]
async fn the_catalog_serves_the_next_release_and_refuses_an_older_catalog_or_a_later_one() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let catalog = env.catalog().await;
    // A newer release added a catalog migration and still serves this one.
    catalog
        .batch_execute(
            "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
                 values (29991231000001, 'a later release', true, '\\x00', 1);
             insert into catalog_releases (release, compatible_from)
                 select max(release) + 1, max(release) from catalog_releases;",
        )
        .await
        .expect("a later release");
    assert!(env.ok(&["tenant", "show", "acme"]).contains("acme"));
    let server = env.serve(&[]);
    drop(server);
    // `portico migrate` of this binary leaves the newer catalog alone.
    assert!(env.ok(&["migrate"]).contains("up to date"));
    // Two releases on: this binary refuses to run, saying what to do.
    catalog
        .batch_execute(
            "insert into catalog_releases (release, compatible_from)
                 select max(release) + 1, max(release) from catalog_releases",
        )
        .await
        .expect("two releases on");
    env.run(&["tenant", "show", "acme"])
        .assert_error("no longer serves this binary");
    env.run(&["migrate"]).assert_error("upgrade the binary");
    catalog
        .batch_execute(
            "delete from catalog_releases where release > (select min(release) from catalog_releases);
             delete from _sqlx_migrations where version = 29991231000001;",
        )
        .await
        .expect("back");
    // The catalog as the previous release left it, and as the one before it, with its
    // tenant: this binary's commands and `serve` refuse it, naming the command to run;
    // `portico migrate` brings it up, and the tenant is there and served.
    let (_, token) = user(&env, "acme", "ann@acme.example", "admin").await;
    for (release, undo) in [
        (4, vec![UNDO_RELEASE_5]),
        (3, vec![UNDO_RELEASE_5, UNDO_RELEASE_4]),
        (2, vec![UNDO_RELEASE_5, UNDO_RELEASE_4, UNDO_RELEASE_3]),
        (
            1,
            vec![
                UNDO_RELEASE_5,
                UNDO_RELEASE_4,
                UNDO_RELEASE_3,
                UNDO_RELEASE_2,
            ],
        ),
    ] {
        for sql in undo {
            catalog
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("the catalog of release {release}: {e}"));
        }
        env.run(&["tenant", "show", "acme"])
            .assert_error("run `portico migrate`");
        env.run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .assert_error("run `portico migrate`");
        assert!(env.ok(&["migrate"]).contains("up to date"));
        assert!(env.ok(&["tenant", "show", "acme"]).contains("acme"));
        assert_eq!(
            env.json(&["tenant", "feature", "list", "acme", "--json"])[0]["source"],
            "default"
        );
        assert!(env.ok(&["fleet", "migrate"]).contains("nothing to do"));
        let server = env.serve(&[]);
        assert_eq!(
            server
                .get(&host_of("acme"), "/api/v1/features", Some(&token))
                .await
                .status,
            200
        );
        drop(server);
    }
    // On the upgraded catalog, a pooled tenant beside the old dedicated one.
    env.ok(&["tenant", "create", "later", "--tier", "pooled"]);
    let later = env.tenant_token("later", "t", "member");
    let server = env.serve(&[]);
    for (host, token) in [(host_of("acme"), &token), (host_of("later"), &later)] {
        assert_eq!(
            server
                .get(&host, "/api/v1/tenant", Some(token))
                .await
                .status,
            200
        );
    }
    drop(server);
    let bare = format!("portico_test_{}", uuid::Uuid::new_v4().simple());
    connect(&admin_url("postgres"))
        .await
        .batch_execute(&format!("create database {bare}"))
        .await
        .expect("empty catalog");
    env.command()
        .env("PORTICO_DATABASE_URL", admin_url(&bare))
        .args(["tenant", "list"])
        .run_bounded()
        .assert_error("not set up yet; run `portico migrate`");
    connect(&admin_url("postgres"))
        .await
        .batch_execute(&format!("drop database {bare}"))
        .await
        .expect("drop");
    env.cleanup().await;
}

#[tokio::test]
async fn feature_flags_reach_every_instance_within_a_second() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (_, acme_token) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, globex_token) = user(&env, "globex", "gus@globex.example", "admin").await;
    let one = env.serve(&[]);
    let two = env.serve(&[]);
    let (acme, globex) = (host_of("acme"), host_of("globex"));
    let tickets_on = async |server: &crate::support::Server, host: &str, token: &str| {
        let f = server.get(host, "/api/v1/features", Some(token)).await;
        let on = f
            .body
            .as_array()
            .expect("features")
            .iter()
            .any(|x| x["name"] == "tickets" && x["enabled"] == true);
        let t = server.get(host, "/api/v1/tickets", Some(token)).await;
        match (on, t.status) {
            (true, 200) => Some(true),
            (false, 404) if t.body["code"] == "feature_disabled" => Some(false),
            _ => None,
        }
    };
    // Warm both instances' routes first (cached), so the change must come by notification.
    for s in [&one, &two] {
        assert_eq!(tickets_on(s, &acme, &acme_token).await, Some(true));
    }
    env.ok(&["tenant", "feature", "set", "acme", "tickets", "off"]);
    for s in [&one, &two] {
        let seen = within(Duration::from_secs(1), async || {
            tickets_on(s, &acme, &acme_token).await == Some(false)
        })
        .await;
        assert!(
            seen.is_some(),
            "an instance still served tickets after a second"
        );
    }
    // Only acme: globex keeps it, and acme's token reads nothing on globex's host.
    assert_eq!(tickets_on(&one, &globex, &globex_token).await, Some(true));
    one.get(&globex, "/api/v1/features", Some(&acme_token))
        .await
        .assert_problem(401, "invalid_token");
    let listed = env.json(&["tenant", "feature", "list", "acme", "--json"]);
    assert_eq!(listed[0]["source"], "tenant", "{listed}");
    // A fleet rollout: 0 % turns globex off; acme's own setting still wins over 100 %.
    env.ok(&["fleet", "feature", "set", "tickets", "--percent", "0"]);
    let seen = within(Duration::from_secs(1), async || {
        tickets_on(&two, &globex, &globex_token).await == Some(false)
    })
    .await;
    assert!(seen.is_some());
    env.ok(&["fleet", "feature", "set", "tickets", "--percent", "100"]);
    env.ok(&["tenant", "feature", "set", "acme", "tickets", "default"]);
    for (host, token) in [(&acme, &acme_token), (&globex, &globex_token)] {
        let seen = within(Duration::from_secs(1), async || {
            tickets_on(&one, host, token).await == Some(true)
        })
        .await;
        assert!(seen.is_some(), "{host}");
    }
    env.run(&["tenant", "feature", "set", "acme", "no-such-flag", "on"])
        .assert_error("unknown feature flag 'no-such-flag'");
    env.run(&["fleet", "feature", "set", "tickets", "--percent", "101"])
        .assert_error("not between 0 and 100");
    env.cleanup().await;
}

#[tokio::test]
async fn the_operator_api_starts_and_reports_fleet_runs() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let latest = migrations::latest_version();
    behind(&env, &["op1", "op2"]).await;
    let token = env.operator_token("ops");
    let server = env.serve(&[]);
    let op = async |method: reqwest::Method, path: &str, body: Option<Value>| {
        server
            .request(method, OPERATOR_HOST, path, Some(&token), &[], body)
            .await
    };
    op(
        reqwest::Method::POST,
        "/operator/v1/fleet/migrations",
        Some(json!({"concurrency": 0})),
    )
    .await
    .assert_problem(422, "invalid_input");
    op(
        reqwest::Method::POST,
        "/operator/v1/fleet/migrations",
        Some(json!({"concurency": 2})),
    )
    .await
    .assert_problem(422, "invalid_input");
    let started = op(
        reqwest::Method::POST,
        "/operator/v1/fleet/migrations",
        Some(json!({})),
    )
    .await;
    assert_eq!(started.status, 202, "{started:?}");
    let run = started.body["run_id"].as_str().expect("run id").to_owned();
    let path = format!("/operator/v1/fleet/migrations/{run}");
    let done = within(Duration::from_secs(60), async || {
        op(reqwest::Method::GET, &path, None).await.body["run"]["status"] == "succeeded"
    })
    .await;
    assert!(
        done.is_some(),
        "{:?}",
        op(reqwest::Method::GET, &path, None).await
    );
    let status = op(reqwest::Method::GET, "/operator/v1/fleet/status", None).await;
    assert_eq!(
        status.body["by_version"],
        json!({ latest.to_string(): 2 }),
        "{status:?}"
    );
    let runs = op(reqwest::Method::GET, "/operator/v1/fleet/migrations", None).await;
    assert_eq!(runs.body[0]["run_id"], json!(run));
    op(
        reqwest::Method::GET,
        &format!("/operator/v1/fleet/migrations/{}", uuid::Uuid::new_v4()),
        None,
    )
    .await
    .assert_problem(404, "run_not_found");
    let audit = env.json(&["operator", "audit", "--json"]);
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|e| e["action"] == "fleet.migrate"
                && e["outcome"] == "succeeded"
                && e["detail"]["run_id"] == json!(run)),
        "{audit}"
    );
    // Nothing left to do: 200 and no run.
    let noop = op(
        reqwest::Method::POST,
        "/operator/v1/fleet/migrations",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (noop.status, &noop.body["run_id"]),
        (200, &Value::Null),
        "{noop:?}"
    );
    env.cleanup().await;
}

/// A migration that needs a lock an application transaction holds waits at most `lock_timeout`
/// (so requests do not queue behind it for longer), gives up, and retries with backoff until
/// the lock is free.
#[tokio::test]
async fn a_migration_waiting_for_a_lock_gives_up_at_lock_timeout_and_retries() {
    use std::io::BufRead;
    let env = TestEnv::new(Backend::FileLocal).await;
    behind(&env, &["locked"]).await;
    // As the tenant's own role: an open transaction holding a lock on a table the newest
    // migration (V8) alters.
    let holder = env.tenant_db("locked").await;
    holder
        .batch_execute("begin; lock table approval_policy in access share mode")
        .await
        .expect("lock");
    // Start a migration and wait until it has given up on the lock once.
    let start = || {
        let mut child = env
            .command()
            .env("PORTICO_LOG", "portico_provisioning=info")
            .args(["tenant", "migrate", "locked", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tenant migrate");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let retried = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("waited too long for a lock; retrying"));
        assert!(retried, "the migration never gave up waiting");
        (child, lines)
    };
    // Killed while it waits: the next `tenant migrate` closes that run as interrupted.
    let (mut killed, _) = start();
    killed.kill().expect("kill -9");
    let _ = killed.wait();
    let (child, lines) = start();
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    holder.batch_execute("commit").await.expect("release");
    let out = child.wait_with_output().expect("wait");
    let _ = drain.join();
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(r["attempts"].as_i64().expect("attempts") >= 2, "{r}");
    assert_eq!(
        db_version(&env, "locked").await,
        migrations::latest_version()
    );
    let runs = env.json(&["fleet", "runs", "--json"]);
    let states: Vec<(&Value, &Value)> = runs
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| (&r["status"], &r["error"]))
        .collect();
    assert_eq!(
        states,
        [
            (&json!("succeeded"), &Value::Null),
            (&json!("stopped"), &json!("interrupted before it finished"))
        ],
        "{runs}"
    );
    env.cleanup().await;
}

/// Events written before tenant schema 8 (plain, then converted by its migration: hashed over
/// the original strings) are erased like newer ones: the person's e-mail leaves the database,
/// and the chain still verifies, saying how many old events can no longer have their content
/// checked.
#[tokio::test]
async fn a_person_in_events_from_before_schema_8_is_erased_and_the_chain_still_verifies() {
    let env = TestEnv::new(Backend::FileLocal).await;
    behind(&env, &["old"]).await;
    let email = "ann.old@old.example";
    {
        // As a release-7 runtime wrote them: the strings inside the hashed body.
        let client = env.tenant_db("old").await;
        for (i, actor) in [email, "zed@old.example"].into_iter().enumerate() {
            let at =
                time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + i as i64).expect("time");
            let details = json!({"method": "password", "note": format!("by {actor}")});
            let payload = portico_core::audit_chain::canonical(
                at,
                "login_success",
                actor,
                None,
                None,
                None,
                "success",
                None,
                &details,
            );
            client
                .execute(
                    "insert into audit_events (at, event_type, actor, outcome, details,
                                               payload_hash, seq, prev_hash, hash)
                     values ($1, 'login_success', $2, 'success', $3, $4, 0, '', '')",
                    &[
                        &at,
                        &actor,
                        &details,
                        &portico_core::audit_chain::sha256(&payload),
                    ],
                )
                .await
                .expect("a release-7 event");
        }
    }
    env.ok(&["tenant", "migrate", "old"]);
    let converted = env.ok(&["audit", "verify", "old"]);
    assert!(converted.contains("intact"), "{converted}");
    let (ann_id, _) = user(&env, "old", email, "member").await;
    let (_, zed) = user(&env, "old", "zed@old.example", "admin").await;
    let (_, amy) = user(&env, "old", "amy@old.example", "admin").await;
    let server = env.serve(&[]);
    let host = host_of("old");
    let path = format!("/api/v1/users/{ann_id}/erasure");
    let asked = crate::portal::post(&server, &host, &path, &zed, json!({})).await;
    assert_eq!(asked.status, 202, "{asked:?}");
    let approval = asked.body["approval"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let done = crate::portal::post(
        &server,
        &host,
        &format!("/api/v1/approvals/{approval}/approve"),
        &amy,
        json!({}),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    let verified = env.ok(&["audit", "verify", "old"]);
    assert!(verified.contains("intact"), "{verified}");
    assert!(
        verified.contains("1 older event(s) whose content can no longer be checked"),
        "{verified}"
    );
    let (admin, _) = env
        .platform()
        .await
        .connect_as_admin("old")
        .await
        .expect("admin");
    let left: i64 = admin
        .query_one(
            "select (select count(*) from portico_audit.audit_values where value ilike '%' || $1 || '%')
                  + (select count(*) from portico_audit.audit_events
                      where actor ilike '%' || $1 || '%' or details::text ilike '%' || $1 || '%')
                  + (select count(*) from users where email ilike $1)",
            &[&email],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "{email} is still in the database");
    env.cleanup().await;
}
