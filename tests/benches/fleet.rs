//! Fleet benchmarks M5 and M6, on a throwaway PostgreSQL cluster with PostgreSQL's default
//! `max_connections` (100), embedded backends, the product's own code in process.
//!
//! - **M5**: 1,000 tenants one tenant schema behind are migrated by the fleet procedure
//!   (`fleet::migrate_fleet`, what `portico fleet migrate` runs) at `--concurrency C` while a
//!   load generator reads `GET /api/v1/tenant` from all of them through the tenant runtime at
//!   a steady rate. The baseline, in the same run under the same load: the same tenants
//!   migrated one after another (the same procedure at concurrency 1), by a migration of the
//!   same shape. Ratio fleet /
//!   sequential wall time (target ≤ 0.4×). Every read answer is counted by status: only `200`
//!   or `503 tenant_upgrading` may appear (target: no other answer), and the count of the
//!   latter is printed.
//!
//!   The two migrations are synthetic, added to the shipped set in the harness (this binary
//!   ships none beyond the tenants' schema): each adds a table and a nullable column to
//!   `tickets`, the shape every expand-only release migration has.
//! - **M6**: over the same 1,000 tenants, now up to date: `fleet::status` (what `portico
//!   fleet status` prints) and a no-op `fleet::migrate_fleet` with the shipped set (what a
//!   `portico fleet migrate` of this binary does): wall time each (target ≤ 2 s), against one
//!   catalog round trip measured in the same run.
//!
//! Run: `./infra/bench.sh fleet` (or `cargo bench --workspace --bench fleet`).
//! Knobs: `PORTICO_BENCH_TENANTS` (default 1000), `PORTICO_BENCH_FLEET_CONCURRENCY` (default 8),
//! `PORTICO_BENCH_CONCURRENCY` (readers, default 8), `PORTICO_BENCH_READ_RATE` (reads per
//! second in all, default 200).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Target, env_usize, provision};
use portico_core::DbServerName;
use portico_platform::Platform;
use portico_platform::fleet::{self, FleetOptions, MigrationSet, Quiet, StopSignal};
use portico_platform::pgcluster::PgCluster;
use portico_provisioning::migrations::{self, LockPolicy, Migration};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start_with(100)).await??;
    let result = run(&cluster).await;
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    result
}

/// The shipped migrations plus `extra` synthetic ones of the expand-only shape.
fn set_with(extra: usize) -> anyhow::Result<MigrationSet> {
    let mut all = migrations::shipped();
    let latest = migrations::latest_version();
    for i in 1..=extra {
        let v = latest + i as i32;
        all.push(Migration::unapplied(
            &format!("V{v}__bench_release_{i}"),
            &format!(
                "create table bench_release_{i} (id bigint not null constraint bench_release_{i}_pkey primary key, note text);
                 alter table tickets add column bench_note_{i} text;"
            ),
        )?);
    }
    Ok(MigrationSet {
        migrations: Arc::new(all),
        policy: LockPolicy::default(),
    })
}

async fn run(cluster: &PgCluster) -> anyhow::Result<()> {
    let n = env_usize("PORTICO_BENCH_TENANTS", 1000).max(10);
    let concurrency = env_usize("PORTICO_BENCH_FLEET_CONCURRENCY", 8).max(1);
    let readers = env_usize("PORTICO_BENCH_CONCURRENCY", 8).max(1);
    let rate = env_usize("PORTICO_BENCH_READ_RATE", 200).max(1);
    let data = tempfile::tempdir()?;
    let settings = common::bench_settings(cluster, data.path()).await?;
    let platform = Arc::new(Platform::connect(settings.clone(), true).await?);
    // The runtime's share of the server: 60 of its 100 connections. The rest is for the
    // migrations (admin connections, `concurrency` at a time), the catalog and superuser slots.
    portico_platform::db_servers::add(
        &platform,
        &DbServerName::parse("fleet")?,
        &cluster.url("postgres"),
        Some(60),
    )
    .await?;
    println!("fleet benchmark: provisioning {n} tenants (embedded backends)…");
    let started = Instant::now();
    let targets = provision(&platform, "fleet", n, "fleet").await?;
    println!("  provisioned in {:.0} s", started.elapsed().as_secs_f64());

    let one = set_with(1)?;
    let two = set_with(2)?;
    let options = |c: usize| FleetOptions {
        concurrency: c,
        ..FleetOptions::default()
    };
    let (addr, server) = common::serve_tenant_hosts(&settings).await?;
    let targets = Arc::new(targets);

    // The same steady read load (`rate` requests per second over every tenant, as customers
    // would send them) during both measurements.
    // Baseline: one after another.
    let load = Load::start(addr, targets.clone(), readers, rate);
    let t = Instant::now();
    let base = fleet::migrate_fleet(
        &platform,
        options(1),
        false,
        &one,
        "bench",
        &Quiet,
        &StopSignal::default(),
    )
    .await?;
    let sequential = t.elapsed();
    let base_reads = load.stop().await?;
    let base_run = base
        .run
        .ok_or_else(|| anyhow::anyhow!("the baseline migrated nothing"))?;
    anyhow::ensure!(
        base_run.succeeded == n as i64,
        "baseline: {} of {n} tenants migrated ({:?})",
        base_run.succeeded,
        base_run.error
    );

    // M5: the fleet, at `concurrency`.
    let load = Load::start(addr, targets.clone(), readers, rate);
    let t = Instant::now();
    let m5 = fleet::migrate_fleet(
        &platform,
        options(concurrency),
        false,
        &two,
        "bench",
        &Quiet,
        &StopSignal::default(),
    )
    .await?;
    let parallel = t.elapsed();
    let reads = load.stop().await?;
    server.abort();
    let m5_run = m5
        .run
        .ok_or_else(|| anyhow::anyhow!("M5 migrated nothing"))?;
    let upgrading = reads.get("503 tenant_upgrading").copied().unwrap_or(0);
    let bad: u64 = reads
        .iter()
        .filter(|(k, _)| k.as_str() != "200" && k.as_str() != "503 tenant_upgrading")
        .map(|(_, v)| v)
        .sum();
    println!(
        "M5 fleet migration of {n} tenants one schema behind, under {rate} reads/s over all of them"
    );
    println!(
        "    one after another: {:7.2} s ({:.1} ms per tenant)   reads {base_reads:?}",
        sequential.as_secs_f64(),
        sequential.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "    fleet, concurrency {concurrency}: {:7.2} s ({} succeeded, {} failed)",
        parallel.as_secs_f64(),
        m5_run.succeeded,
        m5_run.failed
    );
    println!(
        "    ratio fleet / one after another {:.2}x (target <= 0.40x)",
        parallel.as_secs_f64() / sequential.as_secs_f64()
    );
    println!(
        "    reads during the fleet run: {} answered 200, {upgrading} answered 503 tenant_upgrading, {bad} other (target 0): {reads:?}",
        reads.get("200").copied().unwrap_or(0)
    );

    // M6: status and a no-op migrate over the up-to-date fleet.
    let t = Instant::now();
    let _: i64 = sqlx::query_scalar("select count(*) from tenants")
        .fetch_one(platform.catalog.pool())
        .await?;
    let round_trip = t.elapsed();
    let t = Instant::now();
    let st = fleet::status(&platform).await?;
    let status_time = t.elapsed();
    let t = Instant::now();
    let noop = fleet::migrate_fleet(
        &platform,
        options(concurrency),
        false,
        &MigrationSet::default(),
        "bench",
        &Quiet,
        &StopSignal::default(),
    )
    .await?;
    let noop_time = t.elapsed();
    anyhow::ensure!(noop.run.is_none(), "the no-op run migrated something");
    println!(
        "M6 over {} up-to-date tenants ({:?} by schema version)",
        st.tenants, st.by_version
    );
    println!(
        "    fleet status {:7.1} ms (target <= 2000 ms)   no-op fleet migrate {:7.1} ms (target <= 2000 ms)",
        status_time.as_secs_f64() * 1000.0,
        noop_time.as_secs_f64() * 1000.0
    );
    println!(
        "    against one catalog round trip ({:.2} ms): status {:.0}x, no-op migrate {:.0}x",
        round_trip.as_secs_f64() * 1000.0,
        status_time.as_secs_f64() / round_trip.as_secs_f64(),
        noop_time.as_secs_f64() / round_trip.as_secs_f64()
    );
    Ok(())
}

/// A steady read load: `readers` workers sharing `rate` requests per second, each request
/// `GET /api/v1/tenant` of the next tenant in turn; every answer counted by status and code (a
/// 200 carrying another tenant's profile counts as an error).
struct Load {
    done: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Load {
    fn start(
        addr: std::net::SocketAddr,
        targets: Arc<Vec<Target>>,
        readers: usize,
        rate: usize,
    ) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(readers)
            .build()
            .expect("client");
        let period = Duration::from_secs_f64(readers as f64 / rate as f64);
        let workers = (0..readers)
            .map(|w| {
                let (http, targets, done) = (http.clone(), targets.clone(), done.clone());
                tokio::spawn(async move {
                    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = w;
                    while !done.load(Ordering::Acquire) {
                        tick.tick().await;
                        let t: &Target = &targets[i % targets.len()];
                        i += readers;
                        let key = match http
                            .get(format!("http://{addr}/api/v1/tenant"))
                            .header("host", &t.host)
                            .bearer_auth(&t.token)
                            .send()
                            .await
                        {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body: serde_json::Value = r.json().await.unwrap_or_default();
                                match status {
                                    200 if body["slug"] == t.slug.as_str() => "200".to_owned(),
                                    200 => "200 WRONG TENANT".to_owned(),
                                    s => format!("{s} {}", body["code"].as_str().unwrap_or("-")),
                                }
                            }
                            Err(e) => format!("transport: {e}"),
                        };
                        *counts.entry(key).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        Self { done, workers }
    }

    async fn stop(self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.done.store(true, Ordering::Release);
        let mut all = BTreeMap::new();
        for w in self.workers {
            for (k, v) in w.await? {
                *all.entry(k).or_default() += v;
            }
        }
        Ok(all)
    }
}
