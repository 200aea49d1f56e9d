//! The pooled tier: tenants as schemas of a shared database, reached through a pool role that
//! can only switch to them. Their objects are those of a dedicated tenant database; a tenant
//! context never reaches the next borrower of a connection (errors, cancelled queries,
//! abandoned futures and session-level `SET`s included); a borrow's reads share one read-only
//! transaction while each write commits on its own; what one tenant's role can reach in the shared database is
//! its own schema and an append-only audit log; fleet migrations go over both tiers.
//!
//! The HTTP-level isolation suite runs on both tiers too (the `*_pooled` tests of `access`,
//! `audit_log`, `documents`, `routing` and `tickets`).

use std::time::Duration;

use portico_provisioning::migrations::{self, Target};
use portico_tenant_runtime::catalog::{CatalogReader, TenantRoute};
use portico_tenant_runtime::conn::TenantContext;
use portico_tenant_runtime::pools::{TenantConn, TenantPools};
use serde_json::Value;

use crate::pools::route_of;
use crate::support::{Backend, TestEnv, admin_url, connect, within};

/// The pool role of the shared database `slug` lives in, and its password.
async fn pool_login(env: &TestEnv, slug: &str) -> (String, String) {
    let row = env
        .catalog()
        .await
        .query_one(
            "select sd.id, sd.pool_role, sd.pool_password_ciphertext
               from tenants t join tenant_placements p on p.tenant_id = t.id
               join shared_databases sd on sd.id = p.shared_database_id
              where t.slug = $1",
            &[&slug],
        )
        .await
        .expect("shared database");
    let id: uuid::Uuid = row.get(0);
    let plain = env
        .keyring()
        .await
        .decrypt_platform(
            &portico_core::keys::pool_role_purpose(id),
            &row.get::<_, Vec<u8>>(2),
        )
        .await
        .expect("pool password");
    (row.get(1), String::from_utf8(plain).expect("utf-8"))
}

fn denied(e: &tokio_postgres::Error) -> bool {
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    msg.contains("permission denied")
        || msg.contains("must be owner")
        || msg.contains("append-only")
}

#[tokio::test]
async fn pooled_tenants_share_a_database_and_each_role_reaches_only_its_own_schema() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    let alpha = env.json(&["tenant", "create", "alpha", "--json"]);
    let bravo = env.json(&["tenant", "create", "bravo", "--json"]);
    let delta = env.json(&["tenant", "create", "delta", "--tier", "dedicated", "--json"]);
    env.run(&["tenant", "create", "echo", "--tier", "shared"])
        .assert_error("unknown tier 'shared'");
    for t in [&alpha, &bravo] {
        assert_eq!(t["tier"], "pooled", "{t}");
        assert_eq!(t["status"], "active", "{t}");
        assert_eq!(t["placement"]["schema"], t["placement"]["role"], "{t}");
        assert_eq!(t["schema_version"], migrations::latest_version());
    }
    assert_eq!(delta["tier"], "dedicated");
    assert!(delta["placement"].get("schema").is_none(), "{delta}");
    let shared = alpha["placement"]["database"].as_str().expect("database");
    assert_eq!(bravo["placement"]["database"], shared);
    assert!(shared.starts_with("p_"), "{shared}");
    let role = |t: &Value| t["placement"]["role"].as_str().expect("role").to_owned();
    let (ra, rb) = (role(&alpha), role(&bravo));
    for slug in ["alpha", "bravo", "delta"] {
        let v = env.json(&["audit", "verify", slug, "--json"]);
        assert_eq!(v["intact"], true, "{slug}: {v}");
    }

    // Roles: tenants cannot log in; the pool role logs in, inherits nothing, and is a member
    // of exactly its tenants' roles.
    let (pool_role, pool_password) = pool_login(&env, "alpha").await;
    assert_eq!(pool_role, shared);
    let admin = env.server_admin().await;
    let row = admin
        .query_one(
            "select (select rolcanlogin from pg_roles where rolname = $1),
                    (select rolcanlogin from pg_roles where rolname = $2),
                    (select rolcanlogin and not rolinherit from pg_roles where rolname = $3),
                    array(select r.rolname::text from pg_auth_members m
                            join pg_roles r on r.oid = m.roleid
                            join pg_roles p on p.oid = m.member
                           where p.rolname = $3 and r.rolname like 't\\_%' order by 1)",
            &[&ra, &rb, &pool_role],
        )
        .await
        .expect("roles");
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1));
    assert!(
        row.get::<_, bool>(2),
        "pool role must log in and not inherit"
    );
    let mut both = vec![ra.clone(), rb.clone()];
    both.sort();
    assert_eq!(row.get::<_, Vec<String>>(3), both);

    let server = env.server();
    let pool = server
        .connect_as(shared, &pool_role, &pool_password)
        .await
        .expect("the pool role logs in to its database");
    // Outside a tenant's context the pool role reads nothing of any tenant.
    for stmt in [
        format!("select * from {ra}.tenant_profile"),
        format!("select * from {ra}_audit.audit_events"),
        format!("insert into {rb}.sites (code, name) values ('x', 'x')"),
        "create table public.planted (a int)".to_owned(),
    ] {
        let e = pool.batch_execute(&stmt).await.expect_err(&stmt);
        assert!(denied(&e), "{stmt}: {e}");
    }
    // Not in another database: a dedicated tenant's, or the catalog.
    for db in [
        delta["placement"]["database"].as_str().expect("db"),
        env.catalog_db.as_str(),
    ] {
        let e = server
            .connect_as(db, &pool_role, &pool_password)
            .await
            .expect_err(db)
            .to_string();
        assert!(
            e.contains("permission denied for database") || e.contains("pg_hba.conf"),
            "{db}: {e}"
        );
    }

    // In alpha's context on the pool role's own session, as the runtime runs it: alpha's rows
    // only; bravo's schema and audit log are out of reach; alpha's own audit log takes appends
    // and reads only.
    let a = TenantConn::direct(
        server
            .connect_as(shared, &pool_role, &pool_password)
            .await
            .expect("pool role"),
        crate::support::tenant_id(&alpha),
        portico_core::keys::TenantKeyRef::new(alpha["key_id"].as_str().expect("key")),
        Some(TenantContext::new(&ra, &ra)),
    );
    let slug: String = a
        .query_one("select slug from tenant_profile", &[])
        .await
        .expect("own profile")
        .get(0);
    assert_eq!(slug, "alpha");
    for stmt in [
        format!("select * from {rb}.tenant_profile"),
        format!("select * from {rb}_audit.audit_events"),
        format!("update {ra}_audit.audit_events set actor = 'mallory'"),
        format!("delete from {ra}_audit.audit_events"),
        format!("truncate {ra}_audit.audit_events"),
        format!("create table {ra}_audit.decoy (a int)"),
        format!("drop schema {ra}_audit cascade"),
        format!("alter table {ra}_audit.audit_events disable trigger audit_events_no_update"),
        format!("grant usage on schema {ra} to {rb}"),
    ] {
        // `grant` is the one statement alpha may run on its own schema; it must not help bravo.
        if stmt.starts_with("grant") {
            a.batch_execute(&stmt)
                .await
                .expect("alpha may grant on its own schema");
            continue;
        }
        let e = a.batch_execute(&stmt).await.expect_err(&stmt);
        assert!(denied(&e), "{stmt}: {e}");
    }
    // Even granted usage on alpha's schema, bravo's role owns none of alpha's tables.
    let b = env.tenant_db("bravo").await;
    let e = b
        .query(&format!("select * from {ra}.tenant_profile"), &[])
        .await
        .expect_err("bravo reads alpha's table");
    assert!(denied(&e), "{e}");
    // The documented limit of the tier: SQL *injected into the pool role's session* may switch
    // to any tenant role of the database (the session user is a member of them all). Role
    // switching guards against application bugs, not against that; hard isolation is the
    // dedicated tier's.
    let injected: Vec<tokio_postgres::SimpleQueryMessage> = pool
        .simple_query(&format!(
            "set role {rb}; select slug from {rb}.tenant_profile"
        ))
        .await
        .expect("the pool role's session can become bravo");
    assert!(
        injected.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("bravo"))
        ),
        "{injected:?}"
    );
    // A table alpha's role plants under an audit-looking name in its own schema is never the
    // one audit writes go to: the audit schema comes first on the search path.
    a.batch_execute(&format!("create table {ra}.audit_events (id int)"))
        .await
        .expect("alpha may create in its own schema");
    let before = env.json(&["audit", "verify", "alpha", "--json"])["events"].clone();
    env.ok(&[
        "tenant", "token", "create", "alpha", "--name", "t2", "--role", "member",
    ]);
    let after = env.json(&["audit", "verify", "alpha", "--json"]);
    assert_eq!(after["intact"], true, "{after}");
    assert_eq!(
        after["events"].as_i64(),
        before.as_i64().map(|n| n + 1),
        "{after}"
    );
    env.cleanup().await;
}

/// Pools of one connection per server, so every borrower gets the same session.
async fn one_connection_pools(env: &TestEnv) -> (TenantPools, CatalogReader) {
    crate::pools::pools_of(env, 1, 1, Duration::from_secs(10)).await
}

async fn pid(c: &TenantConn) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// What the next borrower starts from, read before any statement of its own: the pool role,
/// the start-up search path, no open transaction. Returns that borrower's connection.
async fn next_borrower_clean(
    pools: &TenantPools,
    route: &TenantRoute,
    pool_role: &str,
    what: &str,
) -> TenantConn {
    let c = pools.get(route).await.expect("next borrower");
    let (user, path, in_tx) = c.session_state().await.expect("session state");
    assert_eq!(user, pool_role, "{what}: role left behind");
    assert_eq!(path, "pg_catalog", "{what}: search path left behind");
    assert!(!in_tx, "{what}: transaction left open");
    c
}

#[tokio::test]
async fn no_tenant_context_reaches_the_next_borrower() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "alpha"]);
    env.ok(&["tenant", "create", "bravo"]);
    let (pool_role, _) = pool_login(&env, "alpha").await;
    let (pools, reader) = one_connection_pools(&env).await;
    let (ra, rb) = (
        route_of(&reader, "alpha").await,
        route_of(&reader, "bravo").await,
    );
    let whoami = "select current_user::text, (select slug from tenant_profile)";

    let a = pools.get(&ra).await.expect("alpha");
    let session = pid(&a).await;
    let row = a.query_one(whoami, &[]).await.expect("alpha");
    assert_eq!(row.get::<_, String>(1), "alpha");
    drop(a);

    // The same text prepared under alpha's context, run in bravo's: bravo's rows.
    let b = next_borrower_clean(&pools, &rb, &pool_role, "after reads").await;
    assert_eq!(pid(&b).await, session, "one connection");
    let row = b.query_one(whoami, &[]).await.expect("bravo");
    assert_eq!(
        row.get::<_, String>(0),
        rb.placement.as_ref().expect("p").role
    );
    assert_eq!(row.get::<_, String>(1), "bravo");
    drop(b);

    // A failing statement: the borrower goes on in its context, the next one starts clean.
    let a = next_borrower_clean(&pools, &ra, &pool_role, "after bravo's reads").await;
    a.query("select 1 / 0 from tenant_profile", &[])
        .await
        .expect_err("division by zero");
    let row = a
        .query_one(whoami, &[])
        .await
        .expect("alpha after an error");
    assert_eq!(row.get::<_, String>(1), "alpha");
    a.query("select 1 / 0 from tenant_profile", &[])
        .await
        .expect_err("division by zero");
    drop(a);
    let mut a = next_borrower_clean(&pools, &ra, &pool_role, "after an error").await;

    // A transaction dropped uncommitted: rolled back, context gone, nothing written.
    {
        let tx = a.transaction().await.expect("tx");
        tx.execute(
            "insert into sites (code, name) values ('uncommitted', 'x')",
            &[],
        )
        .await
        .expect("insert");
    }
    drop(a);
    let a = next_borrower_clean(&pools, &ra, &pool_role, "after an abandoned transaction").await;
    let n: i64 = a
        .query_one("select count(*) from sites where code = 'uncommitted'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    drop(a);

    // A session-level SET run in the context survives COMMIT on the server: the clean-up
    // when the connection is given back removes it.
    let a = pools.get(&ra).await.expect("alpha");
    let alpha_schema = ra.placement.as_ref().expect("p").role.clone();
    a.batch_execute(&format!(
        "set search_path = {alpha_schema}; set role {alpha_schema}"
    ))
    .await
    .expect("session-level set");
    drop(a);
    let b = next_borrower_clean(&pools, &rb, &pool_role, "after a session-level SET").await;
    assert_eq!(pid(&b).await, session);
    let row = b.query_one(whoami, &[]).await.expect("bravo");
    assert_eq!(row.get::<_, String>(1), "bravo");
    drop(b);

    // A query cancelled by the server while it runs.
    let admin = env.server_admin().await;
    let a = pools.get(&ra).await.expect("alpha");
    let (cancelled, _) = tokio::join!(
        a.query("select pg_sleep(30) from tenant_profile", &[]),
        async {
            let running = within(Duration::from_secs(10), || async {
                admin
                    .query_one(
                        "select count(*) from pg_stat_activity
                          where pid = $1 and state = 'active' and query like '%pg_sleep(30)%'",
                        &[&session],
                    )
                    .await
                    .expect("activity")
                    .get::<_, i64>(0)
                    == 1
            })
            .await;
            assert!(running.is_some(), "the query never ran");
            admin
                .execute("select pg_cancel_backend($1)", &[&session])
                .await
                .expect("cancel");
        }
    );
    assert!(cancelled.is_err());
    drop(a);
    drop(next_borrower_clean(&pools, &ra, &pool_role, "after a cancelled query").await);

    // A future dropped while its statement runs (a request abandoned half-way): everything
    // was sent on its first poll, COMMIT included.
    let a = pools.get(&ra).await.expect("alpha");
    // Prepared first, so what the deadline cuts off is the pipelined statement itself.
    let sleep = a
        .prepare_cached("select pg_sleep(0.5) from tenant_profile")
        .await
        .expect("prepare");
    let abandoned = tokio::time::timeout(Duration::from_millis(100), a.query(&sleep, &[])).await;
    assert!(
        abandoned.is_err(),
        "the statement should still have been running"
    );
    drop(a);
    let b = next_borrower_clean(&pools, &rb, &pool_role, "after an abandoned statement").await;
    assert_eq!(pid(&b).await, session);
    env.cleanup().await;
}

#[tokio::test]
async fn a_borrows_reads_share_one_read_only_transaction_and_each_write_commits_on_its_own() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "alpha"]);
    let (pool_role, _) = pool_login(&env, "alpha").await;
    let (pools, reader) = one_connection_pools(&env).await;
    let ra = route_of(&reader, "alpha").await;
    let started = "select transaction_timestamp(), current_setting('transaction_read_only')";
    let begun =
        |r: tokio_postgres::Row| (r.get::<_, time::OffsetDateTime>(0), r.get::<_, String>(1));
    let sites = |code: &str| format!("select count(*) from sites where code = '{code}'");

    let a = pools.get(&ra).await.expect("alpha");
    let first = begun(a.query_one(started, &[]).await.expect("read"));
    let second = begun(a.query_one(started, &[]).await.expect("read"));
    assert_eq!(first.1, "on", "reads run read-only");
    assert_eq!(first.0, second.0, "two reads, one transaction");

    // A write commits on its own, and the reads after it are in a new transaction.
    a.execute("insert into sites (code, name) values ('w1', 'one')", &[])
        .await
        .expect("write");
    let third = begun(a.query_one(started, &[]).await.expect("read"));
    assert!(third.0 > second.0, "a new transaction after the write");
    // A statement that reads like a read but writes: refused read-only, run as a write.
    let disguised = "with w as (insert into sites (code, name) values ($1, 'two') returning code)
                     select code from w";
    let row = a
        .query_one(disguised, &[&"w2"])
        .await
        .expect("disguised write");
    assert_eq!(row.get::<_, String>(0), "w2");
    let row = a
        .query_one(disguised, &[&"w3"])
        .await
        .expect("again, as a write");
    assert_eq!(row.get::<_, String>(0), "w3");
    // An error after the writes undoes none of them.
    a.query("select 1 / 0 from tenant_profile", &[])
        .await
        .expect_err("division by zero");
    drop(a);

    let b = next_borrower_clean(&pools, &ra, &pool_role, "after reads and writes").await;
    for code in ["w1", "w2", "w3"] {
        let n: i64 = b.query_one(&sites(code), &[]).await.expect("count").get(0);
        assert_eq!(n, 1, "{code} was acknowledged and must stay written");
    }
    // Reads, then an explicit transaction: the read-only one ends first, the explicit one
    // writes in the tenant's context.
    let mut b = b;
    let before = begun(b.query_one(started, &[]).await.expect("read"));
    {
        let tx = b.transaction().await.expect("tx");
        let (at, read_only) = begun(tx.query_one(started, &[]).await.expect("in tx"));
        assert!(at > before.0 && read_only == "off", "{at} {read_only}");
        tx.execute("insert into sites (code, name) values ('w4', 'four')", &[])
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
    }
    let n: i64 = b.query_one(&sites("w4"), &[]).await.expect("count").get(0);
    assert_eq!(n, 1);
    // Ended on request (before a long wait on something else): no transaction open.
    b.end_reads().await.expect("end reads");
    let (_, _, in_tx) = b.session_state().await.expect("state");
    assert!(!in_tx, "end_reads leaves no transaction open");
    drop(b);
    env.cleanup().await;
}

#[tokio::test]
async fn a_pooled_tenant_always_uses_its_lane_and_lanes_share_no_connection() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    // The first tenant registers the server whose budget the pools read.
    env.ok(&["tenant", "create", "lane0"]);
    let (pools, reader) = crate::pools::pools_with(&env, 4, 1, Duration::from_secs(10), |s| {
        s.shared_lanes = 2;
        s.shared_lane_size = 1;
    })
    .await;
    // A tenant's lane is its id modulo the lanes (ids are random): create until each of the
    // two lanes has two tenants.
    let mut lanes: [Vec<TenantRoute>; 2] = Default::default();
    for i in 0..40 {
        if lanes.iter().all(|l| l.len() >= 2) {
            break;
        }
        let slug = format!("lane{i}");
        if i > 0 {
            env.ok(&["tenant", "create", &slug]);
        }
        let route = route_of(&reader, &slug).await;
        let lane = portico_tenant_runtime::pools::lane_of(route.tenant_id, 2) as usize;
        if lanes[lane].len() < 2 {
            lanes[lane].push(route);
        }
    }
    assert!(
        lanes.iter().all(|l| l.len() == 2),
        "40 random ids, one lane"
    );
    let mut held = Vec::new();
    for lane in &lanes {
        // A lane of one connection: its two tenants are served by the same one, in turn.
        let first = pools.get(&lane[0]).await.expect("first");
        let session = pid(&first).await;
        drop(first);
        let second = pools.get(&lane[1]).await.expect("second");
        assert_eq!(pid(&second).await, session, "one lane, one connection");
        held.push((session, second));
    }
    // Held at once: the other lane has a connection of its own.
    assert_ne!(held[0].0, held[1].0, "two lanes, one connection");
    drop(held);
    env.cleanup().await;
}

/// Every object of a tenant (tables, columns, constraints, indexes, triggers, functions,
/// ownership and grants), described with the tenant's schema, audit schema and role replaced by
/// fixed names: equal for a dedicated database and a pooled schema.
async fn objects(env: &TestEnv, slug: &str) -> Vec<String> {
    let p = env.platform().await;
    let target = p.tenant_target(slug).await.expect("target");
    let (client, role) = p.connect_as_admin(slug).await.expect("admin");
    let (schema, audit) = (target.schema().to_owned(), target.audit_schema());
    client
        .batch_execute(&format!("set search_path = {schema}, {audit}"))
        .await
        .expect("search path");
    let rows = client
        .query(
            "with ns as (select oid, nspname from pg_namespace where nspname = any($1))
             select format('relation %s.%s %s owner=%s acl=%s', n.nspname, c.relname, c.relkind,
                           pg_get_userbyid(c.relowner), c.relacl)
               from pg_class c join ns n on n.oid = c.relnamespace
             union all
             select format('column %s.%s %s notnull=%s default=%s identity=%s', c.relname,
                           a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                           pg_get_expr(d.adbin, d.adrelid), a.attidentity)
               from pg_attribute a join pg_class c on c.oid = a.attrelid
               join ns n on n.oid = c.relnamespace
               left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
              where a.attnum > 0 and not a.attisdropped
             union all
             select format('constraint %s %s', co.conname, pg_get_constraintdef(co.oid))
               from pg_constraint co join ns n on n.oid = co.connamespace
             union all
             select format('index %s', pg_get_indexdef(i.indexrelid))
               from pg_index i join pg_class c on c.oid = i.indexrelid
               join ns n on n.oid = c.relnamespace
             union all
             select format('trigger %s', pg_get_triggerdef(t.oid))
               from pg_trigger t join pg_class c on c.oid = t.tgrelid
               join ns n on n.oid = c.relnamespace where not t.tgisinternal
             union all
             select format('function %s.%s(%s) owner=%s definer=%s config=%s body=%s', n.nspname,
                           p.proname, pg_get_function_identity_arguments(p.oid),
                           pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig, p.prosrc)
               from pg_proc p join ns n on n.oid = p.pronamespace
             union all
             select format('schema %s owner=%s acl=%s', n.nspname, pg_get_userbyid(s.nspowner),
                           s.nspacl)
               from pg_namespace s join ns n on n.oid = s.oid",
            &[&vec![schema.clone(), audit.clone()]],
        )
        .await
        .expect("objects");
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            let line: String = r.get(0);
            let line = line
                .replace(&audit, "AUDIT")
                .replace("portico_audit", "AUDIT")
                .replace("\"AUDIT\"", "AUDIT")
                .replace(&format!("{schema}."), "TENANT.")
                .replace(&role, "OWNER")
                .replace("pg_database_owner", "OWNER");
            regex_lite_key(&line)
        })
        .collect();
    // `public` of a dedicated database carries PostgreSQL's own grants; its objects are what
    // matters, and both tiers revoke everything from PUBLIC there.
    out.retain(|l| !l.starts_with("schema OWNER ") && !l.starts_with("schema public "));
    out.sort();
    out
}

fn same_objects(pooled: &[String], dedicated: &[String]) {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    let (extra, missing) = (only(pooled, dedicated), only(dedicated, pooled));
    assert!(
        extra.is_empty() && missing.is_empty(),
        "only in the pooled schema: {extra:#?}\nonly in the dedicated database: {missing:#?}"
    );
}

/// The audit chain's advisory lock key differs by design (one per schema); its place in the
/// function body does not.
fn regex_lite_key(line: &str) -> String {
    match line.find("727368, ") {
        Some(at) => {
            let rest = &line[at + 8..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            format!("{}727368, KEY{}", &line[..at], &rest[digits..])
        }
        None => line.to_owned(),
    }
}

#[tokio::test]
async fn a_pooled_schema_holds_what_a_dedicated_database_holds_and_the_fleet_migrates_both() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "dedi", "--tier", "dedicated"]);
    env.ok(&["tenant", "create", "pool"]);
    let fresh = objects(&env, "dedi").await;
    assert!(fresh.len() > 100, "{fresh:?}");
    same_objects(&objects(&env, "pool").await, &fresh);

    // `pool2` rebuilt one schema behind (as the previous release provisioned it), beside the
    // others: `fleet migrate` takes it to the newest schema, the same objects again.
    env.ok(&["tenant", "create", "pool2"]);
    let previous = migrations::latest_version() - 1;
    let p = env.platform().await;
    let Target::Schema { schema, role } = p.tenant_target("pool2").await.expect("t") else {
        panic!("pool2 is pooled");
    };
    let t = env.json(&["tenant", "show", "pool2", "--json"]);
    let shared = t["placement"]["database"].as_str().expect("db");
    let mut admin = connect(&admin_url(shared)).await;
    admin
        .batch_execute(&format!(
            "drop schema {schema}_audit cascade; drop schema {schema} cascade;
             create schema {schema} authorization {role}"
        ))
        .await
        .expect("dropping pool2's schema");
    let old: Vec<_> = migrations::shipped()
        .into_iter()
        .take(usize::try_from(previous).expect("version"))
        .collect();
    let target = Target::Schema {
        schema: schema.clone(),
        role: role.clone(),
    };
    let m = migrations::migrate(&mut admin, &target, &old, Default::default())
        .await
        .expect("migrating to the previous schema");
    assert_eq!(m.after, previous);
    let tenant = p
        .catalog
        .tenant_by_slug("pool2")
        .await
        .expect("catalog")
        .expect("tenant");
    env.tenant_db("pool2")
        .await
        .execute(
            "insert into tenant_profile (tenant_id, slug, display_name) values ($1, 'pool2', 'p')",
            &[&tenant.id],
        )
        .await
        .expect("profile");
    env.catalog()
        .await
        .execute(
            "update tenants set schema_version = $1 where slug = 'pool2'",
            &[&previous],
        )
        .await
        .expect("catalog version");
    let status = env.json(&["fleet", "status", "--json"]);
    assert_eq!(status["by_version"][previous.to_string()], 1, "{status}");
    let out = env.ok(&["fleet", "migrate", "--json"]);
    assert!(out.contains("\"pool2\""), "{out}");
    let status = env.json(&["fleet", "status", "--json"]);
    assert!(
        status["by_version"].get(previous.to_string()).is_none(),
        "{status}"
    );
    assert_eq!(
        migrations::current_version_in(&admin, &target)
            .await
            .expect("version"),
        migrations::latest_version()
    );
    same_objects(&objects(&env, "pool2").await, &fresh);
    let v = env.json(&["audit", "verify", "pool2", "--json"]);
    assert_eq!(v["intact"], true, "{v}");
    env.cleanup().await;
}

#[tokio::test]
async fn pooled_tenants_created_at_once_share_one_new_database() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    let slugs = ["one-co", "two-co", "three-co", "four-co", "five-co"];
    // All at once, into a shared database none of them finds made: one creates it, the
    // others wait for it (PostgreSQL refuses concurrent creates of one database or role).
    std::thread::scope(|s| {
        let runs: Vec<_> = slugs
            .iter()
            .map(|slug| {
                let env = &env;
                s.spawn(move || env.run(&["tenant", "create", slug]))
            })
            .collect();
        for r in runs {
            let r = r.join().expect("thread");
            assert!(r.success, "{}", r.stderr);
        }
    });
    let mut databases: Vec<String> = slugs
        .iter()
        .map(|slug| {
            let t = env.json(&["tenant", "show", slug, "--json"]);
            assert_eq!(t["status"], "active", "{t}");
            t["placement"]["database"].as_str().expect("db").to_owned()
        })
        .collect();
    databases.dedup();
    assert_eq!(databases.len(), 1, "{databases:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_statement_prepared_before_a_migration_is_prepared_again_after_it() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    let t = env.json(&["tenant", "create", "alpha", "--json"]);
    let (pools, reader) = one_connection_pools(&env).await;
    let route = route_of(&reader, "alpha").await;
    let all = "select * from sites";
    let a = pools.get(&route).await.expect("alpha");
    let session = pid(&a).await;
    assert!(a.query(all, &[]).await.expect("before").is_empty());
    // Given back (a migration waits for the locks of a borrower's reads), the connection
    // keeps the statement prepared while a migration adds a column.
    drop(a);
    let schema = t["placement"]["schema"].as_str().expect("schema");
    connect(&admin_url(t["placement"]["database"].as_str().expect("db")))
        .await
        .batch_execute(&format!(
            "alter table {schema}.sites add column added_later int;
             insert into {schema}.sites (code, name) values ('hq', 'HQ')"
        ))
        .await
        .expect("migrating");
    let a = pools.get(&route).await.expect("alpha");
    assert_eq!(pid(&a).await, session, "one connection");
    let rows = a.query(all, &[]).await.expect("after the migration");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].columns().iter().any(|c| c.name() == "added_later"));
    drop(a);
    env.cleanup().await;
}
