//! Suspend and resume, concurrent creates of one slug, and the catalog's records of a run.

use crate::support::{Backend, TestEnv};

#[tokio::test]
async fn suspend_and_resume() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let t = env.json(&["tenant", "suspend", "acme", "--json"]);
    assert_eq!(t["status"], "suspended");
    // Suspending twice is a no-op, resuming a suspended tenant works, resuming twice too.
    assert_eq!(
        env.json(&["tenant", "suspend", "acme", "--json"])["status"],
        "suspended"
    );
    env.run(&["tenant", "create", "--rollback", "acme"])
        .assert_error("suspended");
    assert_eq!(
        env.json(&["tenant", "resume", "acme", "--json"])["status"],
        "active"
    );
    assert_eq!(
        env.json(&["tenant", "resume", "acme", "--json"])["status"],
        "active"
    );
    let human = env.ok(&["tenant", "suspend", "acme"]);
    assert_eq!(human.trim(), "tenant 'acme' is suspended");
    let list = env.ok(&["tenant", "list"]);
    assert!(
        list.contains("acme") && list.contains("suspended"),
        "{list}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_run_records_every_step() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let t = env.json(&["tenant", "create", "acme", "--json"]);
    let steps = t["provisioning"]["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s["step"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["key", "role", "database", "storage", "activate"]);
    for s in steps {
        assert_eq!(s["state"], "done");
        assert_eq!(s["attempts"], 1);
        assert!(s["started_at"].is_string() && s["finished_at"].is_string());
    }
    env.cleanup().await;
}

/// Several processes creating the same slug at once end with one tenant, fully provisioned.
#[tokio::test]
async fn concurrent_creates_of_one_slug_make_one_tenant() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["migrate"]);
    let children: Vec<_> = (0..4)
        .map(|_| {
            env.command()
                .args(["tenant", "create", "racer"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outcomes: Vec<_> = children
        .into_iter()
        .map(|c| crate::support::Run::from(c.wait_with_output().expect("wait")))
        .collect();
    let winners = outcomes.iter().filter(|r| r.success).count();
    assert!(winners >= 1, "no create succeeded");
    for r in outcomes.iter().filter(|r| !r.success) {
        // A loser either found the slug taken by the finished winner or waited too long.
        assert!(
            r.stderr.contains("already taken") || r.stderr.contains("another process"),
            "{}",
            r.stderr
        );
    }
    env.assert_provisioned("racer").await;
    assert_eq!(env.tenant_count().await, 1);
    env.cleanup().await;
}

/// The template database is rebuilt when it is missing, and copies carry the current schema.
#[tokio::test]
async fn template_is_built_on_demand() {
    let server = crate::support::TestEnv::new(Backend::FileLocal).await;
    let name = portico_provisioning::database::ensure_template(
        &server.server(),
        &server.server_admin().await,
    )
    .await
    .expect("template");
    assert_eq!(name, portico_provisioning::migrations::template_name());
    let admin = crate::support::connect(&crate::support::admin_url("postgres")).await;
    let row = admin
        .query_one(
            "select datistemplate, datallowconn, pg_get_userbyid(datdba) from pg_database where datname = $1",
            &[&name],
        )
        .await
        .expect("template row");
    assert!(row.get::<_, bool>(0));
    assert!(!row.get::<_, bool>(1), "nobody may connect to the template");
    assert_eq!(
        row.get::<_, String>(2),
        "postgres",
        "the template is owned by the admin"
    );
    server.cleanup().await;
}

/// Builders whose admin sessions are in different databases of one cluster (as the
/// control-plane server's and a registered server's are) still build a template one at a
/// time: advisory locks are per database, so the lock lives in `postgres`. Without that, the
/// builders create the same database at once and all but one fail.
#[tokio::test]
async fn template_builders_in_different_databases_exclude_each_other() {
    let env = crate::support::TestEnv::new(Backend::FileLocal).await;
    let server = env.server();
    let name = format!("portico_race_tpl_{}", uuid::Uuid::new_v4().simple());
    let mut admins = Vec::new();
    for _ in 0..2 {
        admins.push(crate::support::connect(&crate::support::admin_url("postgres")).await);
        admins.push(crate::support::connect(&env.catalog_url()).await);
    }
    let shipped = portico_provisioning::migrations::shipped();
    let builds = admins.iter().map(|admin| {
        portico_provisioning::database::ensure_template_named(
            &server, admin, &name, &shipped, false,
        )
    });
    for (i, r) in futures_util::future::join_all(builds)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(r.is_ok(), "builder {i}: {:?}", r.err());
    }
    let root = crate::support::connect(&crate::support::admin_url("postgres")).await;
    let found: Vec<String> = root
        .query(
            "select datname from pg_database where datname like $1 || '%'",
            &[&name],
        )
        .await
        .expect("databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        found,
        std::slice::from_ref(&name),
        "one template, no half-built copy"
    );
    for stmt in [
        format!("alter database {name} with is_template false"),
        format!("drop database {name}"),
    ] {
        root.batch_execute(&stmt)
            .await
            .expect("drop the test template");
    }
    env.cleanup().await;
}
