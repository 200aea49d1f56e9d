//! The per-tenant pools in process: a connection is the tenant's own (role and database), no
//! session state survives from one borrower to the next, and eviction closes connections.

use std::time::Duration;

use portico_tenant_runtime::catalog::CatalogReader;
use portico_tenant_runtime::pools::{
    FLOOD_FACTOR, OTHERS_WINDOW, OWN_WAIT, PoolSettings, TenantPools,
};

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
            pooled_budget_percent: 50,
            shared_lanes: 1,
            shared_lane_size: 1000,
            own_wait: OWN_WAIT,
            flood_connections: 1,
            others_window: OTHERS_WINDOW,
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
    let pid: i32 = backend_pid(&conn).await;
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
    assert_ne!(backend_pid(&conn).await, pid);
    drop(conn);
    drop(pools);
    env.cleanup().await;
}

/// Pools with a budget of `size` connections per server in this instance, waiting `wait` for
/// a connection.
pub(crate) async fn pools_of(
    env: &TestEnv,
    size: i32,
    per_tenant: u32,
    wait: Duration,
) -> (TenantPools, CatalogReader) {
    pools_with(env, size, per_tenant, wait, |_| {}).await
}

/// [`pools_of`] with some of its settings changed by `tweak`.
pub(crate) async fn pools_with(
    env: &TestEnv,
    size: i32,
    per_tenant: u32,
    wait: Duration,
    tweak: impl FnOnce(&mut PoolSettings),
) -> (TenantPools, CatalogReader) {
    let reader = CatalogReader::new(
        sqlx::PgPool::connect(&env.catalog_url())
            .await
            .expect("catalog"),
    );
    let max_connections: i32 = env
        .catalog()
        .await
        .query_one("select max(max_connections) from db_servers", &[])
        .await
        .expect("budget")
        .get(0);
    let mut settings = PoolSettings {
        max_open_tenants: 10,
        per_tenant,
        wait,
        instances: u32::try_from(max_connections / size).expect("instances"),
        pooled_budget_percent: 50,
        shared_lanes: 1,
        shared_lane_size: 1000,
        own_wait: OWN_WAIT,
        flood_connections: 1,
        others_window: OTHERS_WINDOW,
    };
    tweak(&mut settings);
    let pools = TenantPools::new(env.keyring().await, settings);
    (pools, reader)
}

pub(crate) async fn route_of(
    reader: &CatalogReader,
    slug: &str,
) -> portico_tenant_runtime::catalog::TenantRoute {
    reader
        .route_for_host(&host_of(slug))
        .await
        .expect("resolve")
        .expect("route")
}

/// How long the budget tests wait before a `Busy` they expect.
const SHORT: Duration = Duration::from_millis(300);

/// The PostgreSQL backend serving a borrowed connection.
async fn backend_pid(c: &portico_tenant_runtime::pools::TenantConn) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

fn busy<T>(r: Result<T, portico_tenant_runtime::error::RuntimeError>) -> bool {
    matches!(r, Err(portico_tenant_runtime::error::RuntimeError::Busy))
}

#[tokio::test]
async fn one_pooled_tenant_cannot_take_the_shared_pool_and_dedicated_pools_keep_to_their_share() {
    let env = TestEnv::pooled(Backend::FileLocal).await;
    for slug in ["alpha", "bravo"] {
        env.ok(&["tenant", "create", slug]);
    }
    for slug in ["dee1", "dee2"] {
        env.ok(&["tenant", "create", slug, "--tier", "dedicated"]);
    }
    // Budget 4 per server here: the dedicated share is 2 while a shared pool is open.
    let (pools, reader) = pools_of(&env, 4, 2, SHORT).await;
    let (alpha, bravo) = (
        route_of(&reader, "alpha").await,
        route_of(&reader, "bravo").await,
    );
    let (d1, d2) = (
        route_of(&reader, "dee1").await,
        route_of(&reader, "dee2").await,
    );

    // alpha may hold two connections of the shared pool, not three; bravo still gets one.
    let a1 = pools.get(&alpha).await.expect("alpha 1");
    let a2 = pools.get(&alpha).await.expect("alpha 2");
    assert!(busy(pools.get(&alpha).await), "alpha took a third share");
    let b1 = pools.get(&bravo).await.expect("bravo, beside a busy alpha");
    drop((a1, a2, b1));

    // Dedicated pools together hold at most 2 of the 4 while the shared pool is open, even
    // with permits free: d2 waits for d1's connection to go idle, then takes it over.
    let x1 = pools.get(&d1).await.expect("d1 1");
    let x2 = pools.get(&d1).await.expect("d1 2");
    assert!(
        busy(pools.get(&d2).await),
        "dedicated pools went past their share"
    );
    let shared_still = pools
        .get(&alpha)
        .await
        .expect("the pooled tier keeps its share");
    drop(shared_still);
    drop(x2);
    let y1 = pools.get(&d2).await.expect("d2 after d1 gave one back");
    drop((x1, y1));

    // Without a shared pool on the server, dedicated tenants may use the whole budget.
    let (only_dedicated, reader) = pools_of(&env, 4, 2, SHORT).await;
    let held = [
        only_dedicated.get(&d1).await.expect("d1 1"),
        only_dedicated.get(&d1).await.expect("d1 2"),
        only_dedicated.get(&d2).await.expect("d2 1"),
        only_dedicated.get(&d2).await.expect("d2 2"),
    ];
    drop(held);
    drop(reader);
    env.cleanup().await;
}

#[tokio::test]
async fn a_busy_pool_waits_for_its_own_connection_rather_than_take_another_pools() {
    let env = TestEnv::new(Backend::FileLocal).await;
    for slug in ["busy", "idle"] {
        env.ok(&["tenant", "create", slug]);
    }
    // Waits long enough that only the condition below ends them.
    let long = Duration::from_secs(30);
    let (pools, reader) = pools_with(&env, 2, 2, long, |s| s.own_wait = long).await;
    let (busy, idle) = (
        route_of(&reader, "busy").await,
        route_of(&reader, "idle").await,
    );
    // The budget (2) is spent: one connection of `busy` in use, one of `idle` idle.
    let b1 = pools.get(&busy).await.expect("busy");
    let busy_pid = backend_pid(&b1).await;
    let i1 = pools.get(&idle).await.expect("idle");
    let idle_pid = backend_pid(&i1).await;
    drop(i1);
    pools.settled().await;
    // A second request of `busy` waits for busy's own connection…
    let second = {
        let (pools, busy) = (pools.clone(), busy.clone());
        tokio::spawn(async move {
            let c = pools.get(&busy).await.expect("busy, again");
            backend_pid(&c).await
        })
    };
    let waiting = within(Duration::from_secs(10), || async {
        pools.stats().iter().map(|s| s.waiting_own).sum::<usize>() == 1
    })
    .await;
    assert!(waiting.is_some(), "the busy pool did not wait for its own");
    // …and gets it when it comes back; `idle` keeps its connection.
    drop(b1);
    assert_eq!(second.await.expect("task"), busy_pid);
    let i2 = pools.get(&idle).await.expect("idle, again");
    assert_eq!(
        backend_pid(&i2).await,
        idle_pid,
        "idle's connection was taken"
    );
    drop(i2);
    env.cleanup().await;
}

#[tokio::test]
async fn a_flooding_tenant_holds_fewer_connections_while_another_tenant_uses_the_server() {
    let env = TestEnv::new(Backend::FileLocal).await;
    for slug in ["flood", "quiet"] {
        env.ok(&["tenant", "create", slug]);
    }
    // 2 connections per tenant, so a flood is more than 8 requests at once; a request not
    // admitted within 500 ms is refused as busy.
    let per_tenant = 2;
    let flood_demand = per_tenant * FLOOD_FACTOR;
    // Another tenant's use counts for a minute here, so a slow machine does not end it
    // between the steps below.
    let (pools, reader) = pools_with(&env, 20, per_tenant, Duration::from_millis(500), |s| {
        s.flood_connections = 1;
        s.others_window = Duration::from_secs(60);
    })
    .await;
    let (flood, quiet) = (
        route_of(&reader, "flood").await,
        route_of(&reader, "quiet").await,
    );
    // `waiters` more requests of `flood` while it holds all its connections, then one of them
    // given back: every waiter's outcome, in the order they end.
    let queue_then_give_one_back = async |waiters: u32| {
        let mut held = Vec::new();
        for _ in 0..per_tenant {
            held.push(pools.get(&flood).await.expect("flood"));
        }
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..waiters {
            let (pools, flood, done) = (pools.clone(), flood.clone(), done.clone());
            tokio::spawn(async move {
                let _ = done.send(pools.get(&flood).await.map(|_| ()));
            });
        }
        let queued = within(Duration::from_secs(10), || async {
            pools.admission(flood.tenant_id).await == (per_tenant, waiters)
        })
        .await;
        assert!(queued.is_some(), "the flood's requests did not queue");
        held.pop();
        let mut outcomes = Vec::new();
        for _ in 0..waiters {
            outcomes.push(!busy(finished.recv().await.expect("a waiter")));
        }
        outcomes
    };
    // Alone on the server, a flood has all of its connections: each one given back goes to a
    // waiting request at once.
    let alone = queue_then_give_one_back(flood_demand).await;
    assert!(
        alone.iter().all(|ok| *ok),
        "alone, the flood was refused: {alone:?}"
    );
    // Beside another tenant that has just used the server, a busy tenant that is no flood
    // (more requests than connections, not more than the flood threshold) keeps them…
    drop(pools.get(&quiet).await.expect("quiet"));
    let busy_tenant = queue_then_give_one_back(flood_demand - per_tenant).await;
    assert!(
        busy_tenant[0],
        "a busy tenant was held back beside another: {busy_tenant:?}"
    );
    // …and a flood is held to one connection: with one still in use, no waiting request is
    // admitted, and the first to end does so by its time-out (once enough have given up, the
    // rest are no flood any more and may be admitted).
    drop(pools.get(&quiet).await.expect("quiet, again"));
    let beside = queue_then_give_one_back(flood_demand).await;
    assert!(
        !beside[0],
        "beside another tenant, the flood got a second connection: {beside:?}"
    );
    // The other tenant is never held back by the flood's gate.
    drop(pools.get(&quiet).await.expect("quiet, during the flood"));
    env.cleanup().await;
}

#[tokio::test]
async fn requests_that_follow_each_other_reuse_one_connection_while_it_is_cleaned() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "steady"]);
    env.ok(&["tenant", "create", "shared", "--tier", "pooled"]);
    // The wait for a connection being cleaned is long enough that only its return ends it.
    let long = Duration::from_secs(30);
    let (pools, reader) = pools_with(&env, 10, 5, long, |s| s.own_wait = long).await;
    for slug in ["steady", "shared"] {
        let route = route_of(&reader, slug).await;
        let mut pids = std::collections::BTreeSet::new();
        // Each borrow is given back (its clean-up starts) just before the next one is asked.
        for _ in 0..20 {
            let c = pools.get(&route).await.expect("connection");
            let pid: i32 = backend_pid(&c).await;
            pids.insert(pid);
        }
        pools.settled().await;
        assert_eq!(
            pids.len(),
            1,
            "{slug}: one connection per request: {pids:?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_dedicated_pool_with_steady_traffic_keeps_its_last_connection() {
    let env = TestEnv::new(Backend::FileLocal).await;
    for slug in ["steady", "other", "third"] {
        env.ok(&["tenant", "create", slug]);
    }
    let (pools, reader) = pools_of(&env, 3, 2, SHORT).await;
    let steady = route_of(&reader, "steady").await;
    let (other, third) = (
        route_of(&reader, "other").await,
        route_of(&reader, "third").await,
    );
    // `steady` has steady traffic; its one idle connection is the least recently used one on
    // the server, `third`'s is newer.
    let mut pid = 0;
    for _ in 0..40 {
        let c = pools.get(&steady).await.expect("steady");
        pid = backend_pid(&c).await;
    }
    drop(pools.get(&third).await.expect("third"));
    pools.settled().await;
    let o1 = pools.get(&other).await.expect("other 1");
    // The budget (3) is full: `other` takes over an idle connection — `third`'s, not the
    // older one the steady pool keeps.
    let o2 = pools.get(&other).await.expect("other 2");
    let c = pools.get(&steady).await.expect("steady");
    assert_eq!(
        backend_pid(&c).await,
        pid,
        "the steady pool's connection was reclaimed"
    );
    drop(c);
    pools.settled().await;
    // With no other idle connection left, even the steady pool's last one serves a waiter.
    let t = pools
        .get(&third)
        .await
        .expect("third, from the steady pool's connection");
    assert_ne!(backend_pid(&t).await, pid);
    drop((o1, o2, t));

    // The sweep closes every idle connection past its limit (zero here) but the one a pool
    // with steady traffic keeps: its most recently used.
    let (a, b) = (
        pools.get(&steady).await.expect("steady a"),
        pools.get(&steady).await.expect("steady b"),
    );
    let (pa, pb) = (backend_pid(&a).await, backend_pid(&b).await);
    drop(a);
    drop(b);
    drop(pools.get(&other).await.expect("other"));
    pools.settled().await;
    let idle = |pools: &portico_tenant_runtime::pools::TenantPools| -> u64 {
        pools.stats().iter().map(|s| s.idle as u64).sum()
    };
    assert!(idle(&pools) >= 3, "idle before the sweep: {}", idle(&pools));
    pools.sweep_idle_since(std::time::Duration::ZERO).await;
    assert_eq!(
        idle(&pools),
        1,
        "only the steady pool's last connection is left"
    );
    let c = pools.get(&steady).await.expect("steady after the sweep");
    let kept = backend_pid(&c).await;
    assert!(
        kept == pb || kept == pa,
        "the steady pool kept one of its own"
    );
    assert_eq!(kept, pb, "the one it kept is its most recently used");
    drop(c);
    env.cleanup().await;
}
