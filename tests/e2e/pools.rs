//! The per-tenant pools in process: a connection is the tenant's own (role and database), no
//! session state survives from one borrower to the next, and eviction closes connections.

use std::time::Duration;

use portico_tenant_runtime::catalog::CatalogReader;
use portico_tenant_runtime::pools::{PoolSettings, TenantPools};

use crate::support::{Backend, TestEnv, host_of, within};

#[tokio::test]
async fn pooled_connections_are_the_tenants_own_and_come_back_clean() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let acme = env.json(&["tenant", "create", "acme", "--json"]);
    let globex = env.json(&["tenant", "create", "globex", "--json"]);
    let reader = CatalogReader::new(
        sqlx::PgPool::connect(&env.catalog_url())
            .await
            .expect("catalog"),
    );
    let pools = TenantPools::new(
        env.keyring().await,
        PoolSettings {
            max_open_tenants: 10,
            per_tenant: 1,
            wait: Duration::from_secs(5),
            instances: 1,
        },
    );
    let route = |slug: &'static str| {
        let reader = reader.clone();
        async move {
            reader
                .route_for_host(&host_of(slug))
                .await
                .expect("resolve")
                .expect("a route")
        }
    };
    let (ra, rg) = (route("acme").await, route("globex").await);

    for (r, t) in [(&ra, &acme), (&rg, &globex)] {
        let conn = pools.get(r).await.expect("connection");
        let row = conn
            .query_one("select current_user::text, current_database()::text", &[])
            .await
            .expect("whoami");
        assert_eq!(
            row.get::<_, String>(0),
            t["placement"]["role"].as_str().unwrap()
        );
        assert_eq!(
            row.get::<_, String>(1),
            t["placement"]["database"].as_str().unwrap()
        );
        // The connection knows whose it is, and that tenant's key.
        assert_eq!(conn.tenant(), r.tenant_id);
        assert_eq!(
            Some(conn.key_ref().as_str()),
            r.placement.as_ref().map(|p| p.key_id.as_str())
        );
    }

    // Leave every kind of session state behind…
    let conn = pools.get(&ra).await.expect("connection");
    let pid: i32 = conn
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    conn.batch_execute(
        "set search_path = pg_catalog; set statement_timeout = 1234;
         create temp table scratch (a int); select pg_advisory_lock(42); listen somewhere",
    )
    .await
    .expect("dirtying the session");
    drop(conn);
    // …and the next borrower of the same connection (pool size 1) sees none of it.
    let conn = pools.get(&ra).await.expect("connection");
    let row = conn
        .query_one(
            "select pg_backend_pid(), current_setting('search_path'),
                    current_setting('statement_timeout'), to_regclass('pg_temp.scratch') is null,
                    (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()),
                    (select count(*) from pg_listening_channels())",
            &[],
        )
        .await
        .expect("session state");
    assert_eq!(
        row.get::<_, i32>(0),
        pid,
        "the pool should hand out the same connection"
    );
    assert_eq!(
        row.get::<_, String>(1),
        portico_tenant_runtime::conn::DEDICATED_SEARCH_PATH,
        "the search path pinned at connection start-up"
    );
    assert_eq!(
        row.get::<_, String>(2),
        "30s",
        "the role's own statement_timeout"
    );
    assert!(row.get::<_, bool>(3), "temp table survived");
    assert_eq!(row.get::<_, i64>(4), 0, "advisory lock survived");
    assert_eq!(row.get::<_, i64>(5), 0, "LISTEN survived");
    drop(conn);

    // Eviction closes the tenant's connections; the next request builds a new pool.
    let admin = env.server_admin().await;
    let db = acme["placement"]["database"].as_str().unwrap().to_owned();
    let open = |db: String| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "select count(*) from pg_stat_activity where datname = $1",
                    &[&db],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(open(db.clone()).await, 1);
    pools.evict(ra.tenant_id).await;
    assert!(
        within(Duration::from_secs(2), || async {
            open(db.clone()).await == 0
        })
        .await
        .is_some(),
        "evicted pool's connection stayed open"
    );
    let conn = pools.get(&ra).await.expect("a new pool");
    assert_ne!(
        conn.query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get::<_, i32>(0),
        pid
    );
    drop(conn);
    drop(pools);
    env.cleanup().await;
}
