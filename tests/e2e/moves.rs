//! Online moves between tiers and servers: every row, sequence value and audit event arrives
//! (row counts and checksums equal, the audit chain verifies), the tenant is served before,
//! during (reads; writes answer `503 tenant_moving`) and after, the source is gone afterwards,
//! a move killed with SIGKILL at any step is finished by running it again or (before its
//! switch) undone, and a second PostgreSQL cluster takes tenants of both tiers.

use portico_platform::pgcluster::PgCluster;
use portico_provisioning::moves::fingerprint;
use reqwest::Method;
use serde_json::{Value, json};

use crate::crash::{kill_at, pause_at};
use crate::portal::user;
use crate::support::{Backend, Server, TestEnv, host_of};

/// Every table's row count and checksum, read as the admin where the tenant lives now.
async fn tenant_fingerprint(env: &TestEnv, slug: &str) -> Vec<(String, i64, String)> {
    let p = env.platform().await;
    let (mut client, _) = p.connect_as_admin(slug).await.expect("admin in tenant db");
    let target = p.tenant_target(slug).await.expect("target");
    fingerprint(&mut client, &target)
        .await
        .expect("fingerprint")
}

/// `audit verify` finds the chain intact and its protection in place.
fn audit_intact(env: &TestEnv, slug: &str) {
    let v = env.json(&["audit", "verify", slug, "--json"]);
    assert_eq!(
        (&v["intact"], &v["protection"]),
        (&json!(true), &json!([])),
        "{v}"
    );
}

/// Some business data, with its audit events: `n` tickets with a comment each.
async fn tickets(server: &Server, slug: &str, token: &str, n: usize, tag: &str) -> Vec<Value> {
    let mut made = Vec::new();
    for i in 0..n {
        let key = format!("{tag}-{i}");
        let t = server
            .request(
                Method::POST,
                &host_of(slug),
                "/api/v1/tickets",
                Some(token),
                &[("idempotency-key", &key)],
                Some(json!({"title": format!("Ticket {tag} {i}"), "description": "Leaks."})),
            )
            .await;
        assert_eq!(t.status, 201, "{t:?}");
        made.push(t.body);
    }
    made
}

async fn ticket_list(server: &Server, slug: &str, token: &str) -> Value {
    let r = server
        .get(&host_of(slug), "/api/v1/tickets?limit=100", Some(token))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Whether `database` exists on the test server, and whether `schema` exists in it.
async fn exists(env: &TestEnv, database: &str, schema: Option<&str>) -> bool {
    let admin = env.server_admin().await;
    let db: bool = admin
        .query_one(
            "select exists (select 1 from pg_database where datname = $1)",
            &[&database],
        )
        .await
        .expect("pg_database")
        .get(0);
    match schema {
        None => db,
        Some(s) if db => {
            let inside = env.server().admin_in(database).await.expect("admin in db");
            inside
                .query_one(
                    "select exists (select 1 from pg_namespace where nspname = $1)",
                    &[&s],
                )
                .await
                .expect("pg_namespace")
                .get(0)
        }
        Some(_) => false,
    }
}

#[tokio::test]
async fn a_tenant_moves_between_tiers_with_every_row_sequence_and_audit_event() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let before = env.json(&["tenant", "create", "acme", "--tier", "pooled", "--json"]);
    env.ok(&["tenant", "create", "other", "--tier", "pooled"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let (_, oli) = user(&env, "other", "oli@other.example", "admin").await;
    let server = env.serve(&[]);
    let made = tickets(&server, "acme", &ann, 5, "a").await;
    tickets(&server, "other", &oli, 2, "o").await;
    let listed = ticket_list(&server, "acme", &ann).await;
    let prints = tenant_fingerprint(&env, "acme").await;
    let shared = before["placement"]["database"]
        .as_str()
        .expect("db")
        .to_owned();
    let role = before["placement"]["role"]
        .as_str()
        .expect("role")
        .to_owned();

    // Refusals change nothing.
    env.run(&["tenant", "move", "acme", "--to-tier", "pooled"])
        .assert_error("already pooled");
    env.run(&["tenant", "move", "acme", "--to-server", "nowhere"])
        .assert_error("nowhere");
    env.run(&["tenant", "move", "acme", "--to-tier", "shared"])
        .assert_error("unknown tier 'shared'");
    env.run(&["tenant", "move", "nobody", "--to-tier", "dedicated"])
        .assert_error("nobody");

    // Pooled → dedicated.
    let moved = env.json(&["tenant", "move", "acme", "--to-tier", "dedicated", "--json"]);
    assert_eq!(moved["status"], "succeeded", "{moved}");
    assert_eq!(
        (&moved["from"]["tier"], &moved["to"]["tier"]),
        (&json!("pooled"), &json!("dedicated"))
    );
    assert!(moved["rows_copied"].as_i64().expect("rows") > 10, "{moved}");
    assert!(moved["write_freeze_ms"].as_i64().is_some(), "{moved}");
    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(shown["tier"], "dedicated");
    assert!(shown["placement"].get("schema").is_none(), "{shown}");
    let own_db = shown["placement"]["database"]
        .as_str()
        .expect("db")
        .to_owned();
    assert_eq!(
        own_db, role,
        "a dedicated database is named after the tenant"
    );
    assert_eq!(tenant_fingerprint(&env, "acme").await, prints);
    assert_eq!(ticket_list(&server, "acme", &ann).await, listed);
    // The source schemas are gone; the pool role no longer reaches the tenant role.
    assert!(!exists(&env, &shared, Some(&role)).await);
    assert!(!exists(&env, &shared, Some(&format!("{role}_audit"))).await);
    let member: bool = env
        .server_admin()
        .await
        .query_one("select pg_has_role($1, $2, 'member')", &[&shared, &role])
        .await
        .expect("membership")
        .get(0);
    assert!(
        !member,
        "the pool role keeps no membership in a dedicated tenant's role"
    );
    // Writes land in the new place, sequences carried on; the audit chain verifies.
    let next = tickets(&server, "acme", &ann, 1, "b").await;
    assert_eq!(
        next[0]["number"].as_i64().expect("number"),
        made[4]["number"].as_i64().expect("number") + 1,
        "{next:?}"
    );
    audit_intact(&env, "acme");
    // The neighbour in the shared database never noticed.
    assert_eq!(
        ticket_list(&server, "other", &oli).await["items"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Dedicated → pooled, back into a shared database.
    let prints = tenant_fingerprint(&env, "acme").await;
    let listed = ticket_list(&server, "acme", &ann).await;
    let back = env.json(&["tenant", "move", "acme", "--to-tier", "pooled", "--json"]);
    assert_eq!(back["status"], "succeeded", "{back}");
    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(shown["tier"], "pooled");
    assert_eq!(shown["placement"]["schema"], json!(role));
    assert_eq!(tenant_fingerprint(&env, "acme").await, prints);
    assert_eq!(ticket_list(&server, "acme", &ann).await, listed);
    assert!(
        !exists(&env, &own_db, None).await,
        "the dedicated database is dropped"
    );
    let can_login: bool = env
        .server_admin()
        .await
        .query_one(
            "select rolcanlogin from pg_roles where rolname = $1",
            &[&role],
        )
        .await
        .expect("role")
        .get(0);
    assert!(!can_login, "a pooled tenant's role cannot log in");
    tickets(&server, "acme", &ann, 1, "c").await;
    audit_intact(&env, "acme");
    // Both moves are on record with their steps.
    let cat = env.catalog().await;
    let n: i64 = cat
        .query_one(
            "select count(*) from provisioning_runs where kind = 'move' and status = 'succeeded'",
            &[],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(n, 2);
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn during_the_freeze_reads_go_on_writes_answer_503_and_the_database_refuses_them_too() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme", "--tier", "pooled"]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    let server = env.serve(&[]);
    tickets(&server, "acme", &ann, 3, "a").await;
    let listed = ticket_list(&server, "acme", &ann).await;
    let prints = tenant_fingerprint(&env, "acme").await;
    let args = ["tenant", "move", "acme", "--to-tier", "dedicated"];

    let (mut child, _watchdog) = pause_at(&env, &args, "after:freeze");
    // Reads are served; writes answer 503 tenant_moving with Retry-After.
    assert_eq!(ticket_list(&server, "acme", &ann).await, listed);
    let w = server
        .request(
            Method::POST,
            &host_of("acme"),
            "/api/v1/tickets",
            Some(&ann),
            &[("idempotency-key", "frozen-1")],
            Some(json!({"title": "Not now"})),
        )
        .await;
    w.assert_problem(503, "tenant_moving");
    assert!(w.header("retry-after").is_some(), "{w:?}");
    // An instance that has not heard of the freeze cannot write either: the tenant's role
    // lost its write privileges in the source.
    let conn = env.tenant_db("acme").await;
    let e = conn
        .execute(
            "update tickets set title = 'sneaked in' where number = (select min(number) from tickets)",
            &[],
        )
        .await
        .expect_err("a write during the freeze");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e}"
    );
    drop(conn);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // The operator sees the unfinished move and the freeze.
    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(shown["write_frozen"], true, "{shown}");
    assert_eq!(shown["open_move"]["status"], "running", "{shown}");
    assert!(
        env.ok(&["tenant", "show", "acme"])
            .contains("writes frozen")
    );

    // Undone: the source takes writes again, and nothing of the destination is left.
    let undone = env.json(&["tenant", "move", "acme", "--rollback", "--json"]);
    assert_eq!(undone["status"], "rolled_back", "{undone}");
    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(shown["tier"], "pooled");
    assert_eq!(shown["write_frozen"], false, "{shown}");
    assert!(shown.get("open_move").is_none(), "{shown}");
    let role = shown["placement"]["role"]
        .as_str()
        .expect("role")
        .to_owned();
    assert!(
        !exists(&env, &role, None).await,
        "the destination database is dropped"
    );
    assert_eq!(tenant_fingerprint(&env, "acme").await, prints);
    tickets(&server, "acme", &ann, 1, "after-undo").await;
    audit_intact(&env, "acme");
    env.run(&["tenant", "move", "acme", "--rollback"])
        .assert_error("no unfinished move");

    // Killed during the freeze again, then finished by running it again without options.
    kill_at(&env, &args, "after:freeze");
    env.run(&[
        "tenant",
        "move",
        "acme",
        "--to-tier",
        "pooled",
        "--to-server",
        "default",
    ])
    .assert_error("already moving to dedicated");
    let prints = tenant_fingerprint(&env, "acme").await;
    let done = env.json(&["tenant", "move", "acme", "--json"]);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(tenant_fingerprint(&env, "acme").await, prints);
    let w = server
        .request(
            Method::POST,
            &host_of("acme"),
            "/api/v1/tickets",
            Some(&ann),
            &[("idempotency-key", "thawed-1")],
            Some(json!({"title": "Now"})),
        )
        .await;
    assert_eq!(w.status, 201, "{w:?}");
    drop(server);
    env.cleanup().await;
}

const POINTS: &[&str] = &[
    "before:prepare",
    "after:prepare",
    "before:freeze",
    "after:freeze",
    "before:copy",
    "after:copy",
    "before:switch",
    "after:switch",
    "before:cleanup",
    "after:cleanup",
];

/// Killed at every step, each move is finished by running it again: the tenant ends up in
/// exactly one place, whole. Before its switch it can be undone instead; after, not.
async fn killed_moves(from: &str, to: &str, resume: bool) {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme", "--tier", from]);
    let (_, ann) = user(&env, "acme", "ann@acme.example", "admin").await;
    {
        let server = env.serve(&[]);
        tickets(&server, "acme", &ann, 2, "a").await;
    }
    let prints = tenant_fingerprint(&env, "acme").await;
    let mut at = from;
    for point in POINTS {
        let other = if at == from { to } else { from };
        kill_at(&env, &["tenant", "move", "acme", "--to-tier", other], point);
        let switched = POINTS.iter().position(|p| p == point)
            >= POINTS.iter().position(|p| *p == "after:switch");
        let shown = env.json(&["tenant", "show", "acme", "--json"]);
        assert_eq!(
            shown["tier"],
            if switched { other } else { at },
            "after a kill at {point}: {shown}"
        );
        if resume || switched {
            if !resume {
                env.run(&["tenant", "move", "acme", "--rollback"])
                    .assert_error("switched to the destination already");
            }
            let v = env.json(&["tenant", "move", "acme", "--json"]);
            assert_eq!(v["status"], "succeeded", "{point}: {v}");
            at = other;
        } else {
            let v = env.json(&["tenant", "move", "acme", "--rollback", "--json"]);
            assert_eq!(v["status"], "rolled_back", "{point}: {v}");
        }
        let shown = env.json(&["tenant", "show", "acme", "--json"]);
        assert_eq!(shown["tier"], at, "{point}: {shown}");
        assert_eq!(tenant_fingerprint(&env, "acme").await, prints, "{point}");
        // Exactly one place: a dedicated database only for a dedicated tenant.
        let role = shown["placement"]["role"].as_str().expect("role");
        assert_eq!(exists(&env, role, None).await, at == "dedicated", "{point}");
        let server = env.serve(&[]);
        assert_eq!(
            ticket_list(&server, "acme", &ann).await["items"]
                .as_array()
                .map(Vec::len),
            Some(2),
            "{point}"
        );
    }
    audit_intact(&env, "acme");
    env.cleanup().await;
}

#[tokio::test]
async fn a_move_killed_at_any_step_is_finished_by_running_it_again() {
    killed_moves("pooled", "dedicated", true).await;
}

#[tokio::test]
async fn a_move_killed_before_its_switch_is_undone_by_rollback() {
    killed_moves("dedicated", "pooled", false).await;
}

#[tokio::test]
async fn tenants_of_both_tiers_move_to_a_second_server_and_back_through_the_operator_api() {
    let env = TestEnv::new(Backend::FileLocal).await;
    // The first create registers the test server as `default`.
    env.ok(&["tenant", "create", "ded", "--tier", "dedicated"]);
    env.ok(&["tenant", "create", "poo", "--tier", "pooled"]);
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start_with(100))
        .await
        .expect("join")
        .expect("a second cluster");
    env.ok_with(
        &["db-server", "add", "second"],
        &[("PORTICO_DB_SERVER_URL", &cluster.url("postgres"))],
    );
    let op = env.operator_token("ops");
    let server = env.serve(&[]);
    let mut tokens = Vec::new();
    for slug in ["ded", "poo"] {
        let (_, t) = user(&env, slug, &format!("ann@{slug}.example"), "admin").await;
        tickets(&server, slug, &t, 2, slug).await;
        tokens.push((slug, t));
    }
    let admin_host = crate::support::OPERATOR_HOST;
    // A move stopped during its freeze is undone through the API; undoing again is refused.
    kill_at(
        &env,
        &["tenant", "move", "ded", "--to-server", "second"],
        "after:freeze",
    );
    let undo = async || {
        server
            .request(
                Method::POST,
                admin_host,
                "/operator/v1/tenants/ded/moves/rollback",
                Some(&op),
                &[],
                None,
            )
            .await
    };
    let r = undo().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "rolled_back", "{r:?}");
    undo().await.assert_problem(409, "invalid_state");
    let shown = env.json(&["tenant", "show", "ded", "--json"]);
    assert_eq!(shown["placement"]["db_server"], "default", "{shown}");
    // Bad input changes nothing.
    let r = server
        .request(
            Method::POST,
            admin_host,
            "/operator/v1/tenants/ded/moves",
            Some(&op),
            &[],
            Some(json!({"to_tier": "shared"})),
        )
        .await;
    r.assert_problem(422, "invalid_input");
    let r = server
        .request(
            Method::POST,
            admin_host,
            "/operator/v1/tenants/ded/moves",
            Some(&op),
            &[],
            Some(json!({"to_server": "nowhere"})),
        )
        .await;
    r.assert_problem(422, "db_server_not_found");
    for (slug, token) in &tokens {
        let prints = tenant_fingerprint(&env, slug).await;
        let r = server
            .request(
                Method::POST,
                admin_host,
                &format!("/operator/v1/tenants/{slug}/moves"),
                Some(&op),
                &[],
                Some(json!({"to_server": "second"})),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let run_url = r.body["run_url"].as_str().expect("run url").to_owned();
        let done = crate::support::within(std::time::Duration::from_secs(60), || {
            let (server, run_url, op) = (&server, run_url.clone(), op.clone());
            async move {
                let r = server.get(admin_host, &run_url, Some(&op)).await;
                r.body["status"] == "succeeded"
            }
        })
        .await;
        assert!(done.is_some(), "the move of {slug} finished");
        let shown = env.json(&["tenant", "show", slug, "--json"]);
        assert_eq!(shown["placement"]["db_server"], "second", "{shown}");
        assert_eq!(tenant_fingerprint(&env, slug).await, prints, "{slug}");
        assert_eq!(
            ticket_list(&server, slug, token).await["items"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        tickets(&server, slug, token, 1, "there").await;
        // And back, by the CLI.
        let back = env.json(&["tenant", "move", slug, "--to-server", "default", "--json"]);
        assert_eq!(back["status"], "succeeded", "{back}");
        assert_eq!(
            ticket_list(&server, slug, token).await["items"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }
    // Nothing of either tenant is left on the second server.
    let second = crate::support::connect(&cluster.url("postgres")).await;
    let left: i64 = second
        .query_one(
            "select (select count(*) from pg_database where datname like 't\\_%')
                  + (select count(*) from pg_roles where rolname like 't\\_%')",
            &[],
        )
        .await
        .expect("left")
        .get(0);
    assert_eq!(left, 0);
    drop(second);
    drop(server);
    env.cleanup().await;
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .expect("join")
        .expect("stop");
}
