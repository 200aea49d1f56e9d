//! Provisioning benchmark: median time of a full `tenant create` (catalog records, key, role,
//! database from the template, storage prefix, activation) against the median of a bare
//! `CREATE DATABASE … TEMPLATE … STRATEGY WAL_LOG` from the same template, measured
//! interleaved in the same run on the same throwaway PostgreSQL cluster. Prints the ratio.
//!
//! Run: `./infra/bench.sh` (or `cargo bench --workspace --bench provisioning`).
//! `PORTICO_BENCH_ITERATIONS` sets the sample count (default 30). Backends: embedded
//! defaults (file storage, local key), so the figure is the control plane's own overhead.

use std::time::{Duration, Instant};

use portico_core::settings::DatabaseUrl;
use portico_core::{Hostname, Settings, Slug};
use portico_platform::Platform;
use portico_platform::pgcluster::PgCluster;
use portico_platform::tenants::{self, CreateTenant};
use portico_provisioning::DbServer;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // PORTICO_BENCH_TRACE=1 prints every span's busy/idle time (where a create spends it).
    if std::env::var("PORTICO_BENCH_TRACE").is_ok_and(|v| v == "1") {
        tracing_subscriber::fmt()
            .with_env_filter("portico=debug")
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .init();
    }
    let iterations: usize = std::env::var("PORTICO_BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
        .max(3);
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let result = run(&cluster, iterations).await;
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    result
}

async fn run(cluster: &PgCluster, iterations: usize) -> anyhow::Result<()> {
    let server = DbServer::from_url(&cluster.url("postgres"))?;
    let admin = server.admin().await?;
    admin.batch_execute("create database portico").await?;
    let data = tempfile::tempdir()?;
    let settings = Settings::embedded(
        DatabaseUrl::parse(&cluster.url("portico")).map_err(anyhow::Error::msg)?,
        Hostname::parse("portal.localhost")?,
        data.path(),
    );
    let platform = Platform::connect(settings, true).await?;
    let create = |slug: String| CreateTenant {
        slug: Slug::parse(&slug).expect("slug"),
        display_name: Some(format!("Bench {slug}")),
        domains: vec![],
        db_server: None,
        tier: None,
    };
    // Warm-up: builds the template, registers the default server, warms caches.
    for i in 0..3 {
        tenants::create(&platform, create(format!("warm-{i}"))).await?;
    }
    let template = portico_provisioning::migrations::template_name();

    let mut full = Vec::with_capacity(iterations);
    let mut bare = Vec::with_capacity(iterations);
    for i in 0..iterations {
        // Alternate the order so drift (autovacuum, checkpoints) hits both sides alike.
        let measure_bare = async {
            let start = Instant::now();
            admin
                .batch_execute(&format!(
                    "create database bare_{i} template {template} strategy wal_log"
                ))
                .await?;
            anyhow::Ok(start.elapsed())
        };
        if i % 2 == 0 {
            bare.push(measure_bare.await?);
            let start = Instant::now();
            tenants::create(&platform, create(format!("bench-{i}"))).await?;
            full.push(start.elapsed());
        } else {
            let start = Instant::now();
            tenants::create(&platform, create(format!("bench-{i}"))).await?;
            full.push(start.elapsed());
            bare.push(measure_bare.await?);
        }
    }
    let (full_p90, bare_p90) = (pct(&full, 0.9), pct(&bare, 0.9));
    let full_med = median(&mut full);
    let bare_med = median(&mut bare);
    let ratio = full_med.as_secs_f64() / bare_med.as_secs_f64();
    println!("provisioning benchmark ({iterations} iterations each, interleaved, same cluster)");
    println!(
        "  full tenant create               median {:8.2} ms   p90 {:8.2} ms",
        ms(full_med),
        ms(full_p90)
    );
    println!(
        "  bare CREATE DATABASE … WAL_LOG   median {:8.2} ms   p90 {:8.2} ms",
        ms(bare_med),
        ms(bare_p90)
    );
    println!("  ratio full/bare (median): {ratio:.2}x   (target <= 1.50x)");

    // Where a create spends its time, from the run records in the catalog.
    let catalog = server.admin_in("portico").await?;
    let rows = catalog
        .query(
            "with s as (
               select s.step, s.position,
                      extract(epoch from (s.finished_at - s.started_at)) * 1000 as ms
               from provisioning_steps s join provisioning_runs r on r.id = s.run_id
               join tenants t on t.id = r.tenant_id where t.slug like 'bench-%')
             select step, percentile_cont(0.5) within group (order by ms)::float8
             from s group by step, position order by position",
            &[],
        )
        .await?;
    let reserve = catalog
        .query_one(
            "select percentile_cont(0.5) within group (order by extract(epoch from
                 (s.started_at - r.started_at)) * 1000)::float8
             from provisioning_runs r join provisioning_steps s on s.run_id = r.id and s.step = 'key'
             join tenants t on t.id = r.tenant_id where t.slug like 'bench-%'",
            &[],
        )
        .await?;
    println!("  breakdown of a full create (medians, from the run records):");
    println!("    {:<10} {:8.2} ms", "reserve", reserve.get::<_, f64>(0));
    for row in rows {
        println!(
            "    {:<10} {:8.2} ms",
            row.get::<_, String>(0),
            row.get::<_, f64>(1)
        );
    }
    Ok(())
}
