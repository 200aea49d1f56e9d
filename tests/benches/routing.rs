//! Routing benchmarks M1–M3 and M8: the tenant runtime (`portico serve`'s `Application`, in process)
//! against baselines measured in the same run on the same throwaway PostgreSQL cluster, with
//! the same load generator (in this process, HTTP/1.1 keep-alive over loopback).
//!
//! - **M1** `GET /api/v1/tenant` spread uniformly over 100 warm tenants, vs the same handler
//!   (token check + profile read, the same store functions) served by a bare axum app from one
//!   fixed pool to one tenant database. Throughput ratio (target ≥ 0.85) and p99 ratio
//!   (target ≤ 1.25). Baseline and routed rounds are interleaved.
//! - **M2** 1,000 *pooled* tenants, Zipf-distributed access (s = 1.0), on a server whose
//!   budget is 80 connections, served by two instances (each with half the budget) that
//!   requests alternate between. Throughput vs M1's routed throughput (target ≥ 0.6); every
//!   answer is counted by status and code (a 200 carrying another tenant's profile counts as
//!   an error), and the PostgreSQL log is searched for "too many clients" (target: none).
//! - **M2m** the same budget over a mixed fleet: the 20 hottest ranks are dedicated tenants,
//!   the other 980 pooled (target ≥ 0.6).
//! - **M2d** the same with 1,000 dedicated tenants (a database each): ratio and connection
//!   opens per request (no target: the reason the pooled tier exists).
//! - **M3** the first request to a cold tenant (host not cached, no pool) vs one measured
//!   connection set-up as that tenant's role plus 3× the warm median of the same tenant
//!   (target ≤ 1.0); **M3p** the same for pooled tenants (their shared pool already open).
//!
//! - **M8** noisy neighbour: one tenant flooding at full concurrency while a quiet tenant on
//!   the same server and tier is measured by 2 clients, against the quiet tenant alone: its
//!   p99 ratio (target ≤ 1.5), for each tier.
//!
//! A diagnostic line under M1 runs the routed server with all load on one tenant and a tenant
//! pool as large as the baseline's, to separate the routing layer's own cost from the cost of
//! spreading load over 100 databases. M1 and M2 also print how many connections the runtime
//! opened during the measured rounds.
//!
//! Run: `./infra/bench.sh routing` (or `cargo bench --workspace --bench routing`).
//! Knobs: `PORTICO_BENCH_TENANTS` (M2 tenant count, default 1000), `PORTICO_BENCH_SECONDS`
//! (per round, default 5), `PORTICO_BENCH_CONCURRENCY` (default 32),
//! `PORTICO_BENCH_M2_POOL_SIZE` (M2's per-tenant pool size, default the product's default),
//! `PORTICO_BENCH_FLOOD_CONNECTIONS` (the `flood_connections` setting, default the product's),
//! `PORTICO_BENCH_PARTS` (which parts run, see [`Parts`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use portico_core::DbServerName;
use portico_platform::Platform;
use portico_platform::pgcluster::PgCluster;
use portico_platform::serve::{Application, ServeOptions, ServeRole};
use portico_tenant_runtime::store::{profile, tokens};
use secrecy::ExposeSecret;

#[path = "common/mod.rs"]
mod common;
use common::{Target, env_usize, provision, provision_in};

/// A small xorshift generator for picking tenants (not for anything secret).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a worker picks the next target.
#[derive(Clone)]
enum Pick {
    Uniform(usize),
    Zipf(Arc<Vec<f64>>),
}

impl Pick {
    fn zipf(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Self::Zipf(Arc::new(cdf))
    }
    fn pick(&self, rng: &mut Rng) -> usize {
        match self {
            Self::Uniform(n) => (rng.next() % *n as u64) as usize,
            Self::Zipf(cdf) => {
                let u = rng.unit();
                cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
            }
        }
    }
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    other: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn merge(&mut self, o: Outcome) {
        self.ok += o.ok;
        for (k, v) in o.other {
            *self.other.entry(k).or_default() += v;
        }
        self.latencies.extend(o.latencies);
        self.elapsed += o.elapsed;
    }
}

/// Runs `concurrency` workers for `duration`, each sending requests to the given servers in
/// turn; every 200 answer is checked to be the profile of the tenant whose host was asked.
async fn load(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    targets: Arc<Vec<Target>>,
    pick: Pick,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    load_with(http, addrs, targets, pick, concurrency, duration, false).await
}

/// [`load`]; with `affinity`, each tenant always goes to the same server (as the
/// `hash $host consistent` upstream in infra/nginx does) instead of alternating.
async fn load_with(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    targets: Arc<Vec<Target>>,
    pick: Pick,
    concurrency: usize,
    duration: Duration,
    affinity: bool,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, targets, pick) = (http.clone(), targets.clone(), pick.clone());
        let urls: Vec<String> = addrs
            .iter()
            .map(|a| format!("http://{a}/api/v1/tenant"))
            .collect();
        workers.push(tokio::spawn(async move {
            let seed = (w as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
            let mut out = Outcome::default();
            let mut turn = w;
            while Instant::now() < deadline {
                let index = pick.pick(&mut rng);
                let t = &targets[index];
                turn += 1;
                let url = &urls[if affinity { index } else { turn } % urls.len()];
                let start = Instant::now();
                let resp = http
                    .get(url)
                    .header("host", &t.host)
                    .bearer_auth(&t.token)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        if body["slug"] == t.slug.as_str() {
                            out.ok += 1;
                            out.latencies.push(start.elapsed());
                        } else {
                            *out.other.entry("200 WRONG TENANT".into()).or_default() += 1;
                        }
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let key = format!("{status} {}", body["code"].as_str().unwrap_or("-"));
                        *out.other.entry(key).or_default() += 1;
                    }
                    Err(e) => *out.other.entry(format!("transport: {e}")).or_default() += 1,
                }
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for w in workers {
        let o = w.await.expect("worker");
        total.ok += o.ok;
        for (k, v) in o.other {
            *total.other.entry(k).or_default() += v;
        }
        total.latencies.extend(o.latencies);
    }
    total.elapsed = started.elapsed();
    total
}

async fn metrics_text(http: &reqwest::Client, addr: SocketAddr) -> String {
    match http.get(format!("http://{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of a counter's samples in Prometheus text.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start_with(700)).await??;
    let result = run(&cluster).await;
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    result
}

/// Which parts run: `PORTICO_BENCH_PARTS`, a comma-separated list of `M1`, `M2`, `M3`, `M8`
/// and `Opens` (default: all). M2 brings M1 with it (its ratios are against M1's routed
/// throughput). Without M2, 40 tenants of each tier are provisioned instead of 1,000.
struct Parts(Option<Vec<String>>);

impl Parts {
    fn from_env() -> Self {
        Self(std::env::var("PORTICO_BENCH_PARTS").ok().map(|s| {
            s.split(',')
                .map(|p| p.trim().to_ascii_uppercase())
                .filter(|p| !p.is_empty())
                .collect()
        }))
    }
    fn has(&self, part: &str) -> bool {
        let part = part.to_ascii_uppercase();
        match &self.0 {
            None => true,
            Some(list) => list.contains(&part) || (part == "M1" && list.iter().any(|p| p == "M2")),
        }
    }
}

async fn run(cluster: &PgCluster) -> anyhow::Result<()> {
    let parts = Parts::from_env();
    let m2_tenants = if parts.has("M2") {
        env_usize("PORTICO_BENCH_TENANTS", 1000).max(200)
    } else {
        40
    };
    let seconds = env_usize("PORTICO_BENCH_SECONDS", 5).max(1) as u64;
    let concurrency = env_usize("PORTICO_BENCH_CONCURRENCY", 32).max(1);
    let round = Duration::from_secs(seconds);

    let data = tempfile::tempdir()?;
    let mut settings = common::bench_settings(cluster, data.path()).await?;
    settings.runtime.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    if let Ok(n) = std::env::var("PORTICO_BENCH_FLOOD_CONNECTIONS") {
        settings.runtime.flood_connections = n.parse()?;
    }
    let platform = Arc::new(Platform::connect(settings.clone(), true).await?);
    // M1's tenants on a server with room for all of them; M2's on one with a budget of 80.
    let url = cluster.url("postgres");
    // M1 measures routing on warm tenants: its server's budget (400) never constrains 100
    // tenants at this concurrency. M2 measures the budget: 80 connections for 1,000 tenants.
    for (name, budget) in [("m1", 400), ("m2", 80)] {
        portico_platform::db_servers::add(
            &platform,
            &DbServerName::parse(name)?,
            &url,
            Some(budget),
        )
        .await?;
    }
    let m1_tenants = if parts.has("M1") { 100 } else { 0 };
    println!(
        "routing benchmark: provisioning {m1_tenants} + {m2_tenants} dedicated + {m2_tenants} pooled tenants (embedded backends)…"
    );
    let provision_started = Instant::now();
    let m1 = provision(&platform, "mone", m1_tenants, "m1").await?;
    let m2 = provision(&platform, "mtwo", m2_tenants, "m2").await?;
    let pooled = provision_in(
        &platform,
        "mpool",
        m2_tenants,
        "m2",
        Some(portico_platform::catalog::Tier::Pooled),
    )
    .await?;
    println!(
        "  provisioned in {:.0} s",
        provision_started.elapsed().as_secs_f64()
    );

    let app = Application::build(
        settings.clone(),
        ServeOptions {
            role: ServeRole::Tenant,
            migrate: true,
        },
    )
    .await?;
    let addr = app.local_addr()?;
    let metrics_addr = app.metrics_addr().expect("metrics address");
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;
    let admin = {
        let (client, conn) = cluster
            .url("postgres")
            .parse::<tokio_postgres::Config>()?
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Arc::new(client)
    };

    let m3 = if parts.has("M3") {
        progress("M3");
        Some(m3_cold(cluster, &platform, &settings, &http, &m2, &pooled).await?)
    } else {
        None
    };
    let m1r = if parts.has("M1") {
        progress("M1");
        Some(
            m1_rounds(
                &platform,
                &settings,
                &http,
                addr,
                metrics_addr,
                &m1,
                concurrency,
                round,
            )
            .await?,
        )
    } else {
        None
    };
    let m2r = if parts.has("M2") {
        Some(
            m2_rounds(
                cluster,
                &platform,
                &settings,
                &http,
                metrics_addr,
                admin.clone(),
                &m2,
                &pooled,
                concurrency,
                round,
            )
            .await?,
        )
    } else {
        None
    };
    let opens = if parts.has("Opens") {
        progress("Opens");
        Some(opens(cluster, &admin).await?)
    } else {
        None
    };
    let m8 = if parts.has("M8") {
        progress("M8");
        Some(m8_rounds(&http, addr, &m2, &pooled, concurrency, round).await)
    } else {
        None
    };
    server.abort();

    println!();
    println!(
        "routing benchmark ({concurrency} concurrent clients, {seconds} s rounds, loopback, same cluster)"
    );
    if let Some(M1Result {
        base,
        routed,
        opened,
        single,
    }) = &m1r
    {
        println!(
            "M1  GET /api/v1/tenant over 100 warm tenants vs one fixed pool to one database (4 interleaved rounds each)"
        );
        for (label, out) in [("baseline", base), ("routed", routed)] {
            println!(
                "    {label:<9} {:9.0} req/s   p50 {:6.2} ms   p99 {:6.2} ms   errors {:?}",
                out.rps(),
                ms(out.pct(0.5)),
                ms(out.pct(0.99)),
                out.other
            );
        }
        println!(
            "    throughput ratio {:.2}x (target >= 0.85x)   p99 ratio {:.2}x (target <= 1.25x)   connections opened {}",
            routed.rps() / base.rps(),
            routed.pct(0.99).as_secs_f64() / base.pct(0.99).as_secs_f64(),
            opened
        );
        println!(
            "    (diagnostic) routed, all load on one tenant, tenant pool of 12 like the baseline's: {:9.0} req/s   p99 {:6.2} ms   ratio {:.2}x   errors {:?}",
            single.rps(),
            ms(single.pct(0.99)),
            single.rps() / base.rps(),
            single.other
        );
    }
    if let (Some(m1r), Some(m2r)) = (&m1r, &m2r) {
        let routed = &m1r.routed;
        println!(
            "M2  {} tenants, Zipf s=1.0, server budget 80 connections shared by two instances (2 rounds each)",
            m2.len()
        );
        for (label, r) in &m2r.results {
            let what = match *label {
                "M2" => "pooled   ",
                "M2m" => "mixed    ",
                _ => "dedicated",
            };
            let target = match *label {
                "M2d" => "(no target)",
                _ => "(target >= 0.60x)",
            };
            println!(
                "    {label:<4}{what} {:9.0} req/s   p50 {:6.2} ms   p99 {:6.2} ms   non-200 {:?}",
                r.out.rps(),
                ms(r.out.pct(0.5)),
                ms(r.out.pct(0.99)),
                r.out.other
            );
            println!(
                "        vs M1 routed {:.2}x {target}   max runtime connections seen {}   connections opened {} ({:.3} per request)",
                r.out.rps() / routed.rps(),
                r.max_open,
                r.opened,
                r.opened / (r.out.ok.max(1) as f64)
            );
        }
        println!(
            "    \"too many clients\" in the server log: {}",
            m2r.too_many
        );
        let affine = &m2r.affine;
        println!(
            "    M2d with host affinity (hash $host, as infra/nginx): {:9.0} req/s   p50 {:6.2} ms   p99 {:6.2} ms   non-200 {:?}   connections opened {}   vs M1 routed {:.2}x",
            affine.rps(),
            ms(affine.pct(0.5)),
            ms(affine.pct(0.99)),
            affine.other,
            m2r.opened_affine,
            affine.rps() / routed.rps()
        );
    }
    if let Some((open_4096, open_low)) = opens {
        println!(
            "Opens  connection set-up with SCRAM at 4,096 iterations (before) {:6.2} ms   at {} (now) {:6.2} ms   ratio {:.2}x (medians of 50, interleaved)",
            ms(open_4096),
            portico_provisioning::scram::ROLE_ITERATIONS,
            ms(open_low),
            open_low.as_secs_f64() / open_4096.as_secs_f64()
        );
    }
    if let Some(m8) = &m8 {
        println!(
            "M8  noisy neighbour: one tenant flooding with {concurrency} clients, a quiet tenant of the same server and tier measured with 2"
        );
        for (tier, solo, noisy, flood) in m8 {
            println!(
                "    {tier:<9} quiet alone p99 {:6.2} ms   beside the flood p99 {:6.2} ms   ratio {:.2}x (target <= 1.50x)   flood {:7.0} req/s non-200 {:?}   quiet non-200 {:?}",
                ms(solo.pct(0.99)),
                ms(noisy.pct(0.99)),
                noisy.pct(0.99).as_secs_f64() / solo.pct(0.99).as_secs_f64(),
                flood.rps(),
                flood.other,
                noisy.other
            );
        }
    }
    if let Some(m3) = &m3 {
        let budget = m3.connect + m3.warm * 3;
        let budget_pooled = m3.connect + m3.warm_pooled * 3;
        println!(
            "M3  first request to a cold tenant ({} tenants, medians)",
            m3.count
        );
        println!(
            "    cold {:6.2} ms   connection set-up {:6.2} ms   warm p50 {:6.2} ms   bound (1 connect + 3x warm p50) {:6.2} ms",
            ms(m3.cold),
            ms(m3.connect),
            ms(m3.warm),
            ms(budget)
        );
        println!(
            "    ratio cold / bound {:.2}x (target <= 1.00x)",
            m3.cold.as_secs_f64() / budget.as_secs_f64()
        );
        for (label, f) in [
            ("a new database", &m3.fresh[0]),
            ("the same again", &m3.fresh[1]),
        ] {
            println!(
                "    (diagnostic) a fresh server process, {label}: connection set-up {:5.2} ms   first token check {:5.2} ms   first profile read {:5.2} ms   profile read again {:5.2} ms",
                ms(f[0]),
                ms(f[1]),
                ms(f[2]),
                ms(f[3])
            );
        }
        println!(
            "M3p first request to a cold pooled tenant ({} tenants, medians): cold {:6.2} ms   warm p50 {:6.2} ms   bound (1 connect + 3x warm p50) {:6.2} ms   ratio {:.2}x (target <= 1.00x)",
            m3.count,
            ms(m3.cold_pooled),
            ms(m3.warm_pooled),
            ms(budget_pooled),
            m3.cold_pooled.as_secs_f64() / budget_pooled.as_secs_f64()
        );
    }
    Ok(())
}

/// M3's medians.
struct M3Result {
    count: usize,
    cold: Duration,
    connect: Duration,
    warm: Duration,
    cold_pooled: Duration,
    warm_pooled: Duration,
    /// Per pass (a new database, then again): connection set-up, first token check, first
    /// profile read, profile read again.
    fresh: [[Duration; 4]; 2],
}

/// M3: the first request to each of 30 cold dedicated tenants (then one connection set-up as
/// its role, then 21 warm requests), and to 30 cold pooled tenants, on an instance of its own
/// (stopped afterwards, so its pools count against no later budget).
async fn m3_cold(
    cluster: &PgCluster,
    platform: &Platform,
    settings: &portico_core::Settings,
    http: &reqwest::Client,
    m2: &[Target],
    pooled: &[Target],
) -> anyhow::Result<M3Result> {
    let m3_app = Application::build(
        settings.clone(),
        ServeOptions {
            role: ServeRole::Tenant,
            migrate: true,
        },
    )
    .await?;
    let m3_addr = m3_app.local_addr()?;
    let (m3_stop, m3_stopped) = tokio::sync::oneshot::channel::<()>();
    let m3_server = tokio::spawn(m3_app.run_until_stopped(async {
        let _ = m3_stopped.await;
    }));
    let m3_count = 30.min(m2.len());
    let mut cold = Vec::new();
    let mut connect = Vec::new();
    let mut warm_p50 = Vec::new();
    for (i, t) in m2.iter().take(m3_count).enumerate() {
        let slug = format!("mtwo-{i}");
        anyhow::ensure!(slug == t.slug);
        let start = Instant::now();
        let r = http
            .get(format!("http://{m3_addr}/api/v1/tenant"))
            .header("host", &t.host)
            .bearer_auth(&t.token)
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == StatusCode::OK,
            "cold request failed: {}",
            r.status()
        );
        r.bytes().await?;
        cold.push(start.elapsed());
        // One connection set-up as the tenant's role (what a cold tenant must pay once).
        let cfg = role_config(cluster, platform, &slug).await?;
        let start = Instant::now();
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        let setup = start.elapsed();
        drop(client);
        let _ = conn.await;
        connect.push(setup);
        let mut warm = Vec::new();
        for _ in 0..21 {
            let start = Instant::now();
            let r = http
                .get(format!("http://{m3_addr}/api/v1/tenant"))
                .header("host", &t.host)
                .bearer_auth(&t.token)
                .send()
                .await?;
            r.bytes().await?;
            warm.push(start.elapsed());
        }
        warm.sort();
        warm_p50.push(warm[warm.len() / 2]);
    }
    // Diagnostic: what a fresh server process costs, on 6 more cold tenants, each connected to
    // twice (first to a database no process has served yet, then again): connection set-up,
    // the token check and the profile read as the first statements of the process, and the
    // profile read again. Per pass, medians in ms.
    let mut fresh: [[Vec<Duration>; 4]; 2] = Default::default();
    for t in m2.iter().skip(m3_count).take(6) {
        let mut cfg = role_config(cluster, platform, &t.slug).await?;
        cfg.options(format!(
            "-c search_path={}",
            portico_tenant_runtime::conn::DEDICATED_SEARCH_PATH
        ));
        for pass in &mut fresh {
            let start = Instant::now();
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            let conn = tokio::spawn(conn);
            pass[0].push(start.elapsed());
            let digest = vec![0u8; 32];
            let start = Instant::now();
            client.query_opt(tokens::AUTHENTICATE, &[&digest]).await?;
            pass[1].push(start.elapsed());
            for into in [2, 3] {
                let start = Instant::now();
                client.query_one(profile::GET, &[]).await?;
                pass[into].push(start.elapsed());
            }
            drop(client);
            let _ = conn.await;
        }
    }
    // The same for pooled tenants: cold ones meet a shared pool that is already open.
    let mut cold_pooled = Vec::new();
    let mut warm_pooled = Vec::new();
    for t in pooled.iter().take(m3_count) {
        let url = format!("http://{m3_addr}/api/v1/tenant");
        let mut times = Vec::new();
        for _ in 0..22 {
            let start = Instant::now();
            let r = http
                .get(&url)
                .header("host", &t.host)
                .bearer_auth(&t.token)
                .send()
                .await?;
            anyhow::ensure!(
                r.status() == StatusCode::OK,
                "pooled request: {}",
                r.status()
            );
            r.bytes().await?;
            times.push(start.elapsed());
        }
        cold_pooled.push(times[0]);
        let mut warm = times.split_off(1);
        warm.sort();
        warm_pooled.push(warm[warm.len() / 2]);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // A graceful stop closes its keep-alive connections, so its pools really go away.
    let _ = m3_stop.send(());
    m3_server.await??;
    Ok(M3Result {
        count: m3_count,
        cold: med(&mut cold),
        connect: med(&mut connect),
        warm: med(&mut warm_p50),
        cold_pooled: med(&mut cold_pooled),
        warm_pooled: med(&mut warm_pooled),
        fresh: fresh.map(|mut pass| [0, 1, 2, 3].map(|i| med(&mut pass[i]))),
    })
}

/// Where `slug`'s tenant lives.
async fn placement_of(
    platform: &Platform,
    slug: &str,
) -> anyhow::Result<portico_platform::catalog::PlacementRow> {
    let tenant = platform
        .catalog
        .tenant_by_slug(slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant {slug}"))?;
    platform
        .catalog
        .placement(tenant.tenant_id())
        .await?
        .ok_or_else(|| anyhow::anyhow!("tenant {slug} has no placement"))
}

/// A connection set-up to `slug`'s own database as its own role (a dedicated tenant).
async fn role_config(
    cluster: &PgCluster,
    platform: &Platform,
    slug: &str,
) -> anyhow::Result<tokio_postgres::Config> {
    let placement = placement_of(platform, slug).await?;
    let password = platform.tenant_role_password(slug).await?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(cluster.port())
        .dbname(&placement.database_name)
        .user(&placement.role_name)
        .password(password.expose_secret());
    Ok(cfg)
}

/// M1's outcomes: baseline, routed, connections the runtime opened meanwhile, and the
/// single-tenant diagnostic.
struct M1Result {
    base: Outcome,
    routed: Outcome,
    opened: f64,
    single: Outcome,
}

/// M1: interleaved rounds, baseline and routed; then the single-tenant diagnostic.
#[allow(clippy::too_many_arguments)]
async fn m1_rounds(
    platform: &Platform,
    settings: &portico_core::Settings,
    http: &reqwest::Client,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    m1: &[Target],
    concurrency: usize,
    round: Duration,
) -> anyhow::Result<M1Result> {
    let baseline_addr = baseline(platform, &m1[0]).await?;
    let m1_targets = Arc::new(m1.to_vec());
    let baseline_targets = Arc::new(vec![m1[0].clone()]);
    // Warm every pool and cache.
    load(
        http,
        &[addr],
        m1_targets.clone(),
        Pick::Uniform(m1.len()),
        concurrency,
        Duration::from_secs(2),
    )
    .await;
    load(
        http,
        &[baseline_addr],
        baseline_targets.clone(),
        Pick::Uniform(1),
        concurrency,
        Duration::from_secs(1),
    )
    .await;
    let opened_before_m1 = counter(
        &metrics_text(http, metrics_addr).await,
        "portico_pool_connections_opened_total",
    );
    let (base_addrs, routed_addrs) = ([baseline_addr], [addr]);
    let run_base = || {
        load(
            http,
            &base_addrs,
            baseline_targets.clone(),
            Pick::Uniform(1),
            concurrency,
            round,
        )
    };
    let run_routed = || {
        load(
            http,
            &routed_addrs,
            m1_targets.clone(),
            Pick::Uniform(m1.len()),
            concurrency,
            round,
        )
    };
    let (mut routed, mut base) = (Outcome::default(), Outcome::default());
    for r in 0..4 {
        if r % 2 == 0 {
            base.merge(run_base().await);
            routed.merge(run_routed().await);
        } else {
            routed.merge(run_routed().await);
            base.merge(run_base().await);
        }
    }
    let opened = counter(
        &metrics_text(http, metrics_addr).await,
        "portico_pool_connections_opened_total",
    ) - opened_before_m1;
    // Diagnostic: a routed instance whose tenant pool is as large as the baseline's pool, with
    // all load on one tenant (another than the baseline's: the role's connection limit is 20).
    // It separates the routing layer's own cost from that of spreading load over 100 databases.
    let diag_targets = Arc::new(vec![m1[1].clone()]);
    let mut wide = settings.clone();
    wide.runtime.tenant_pool_size = 12;
    wide.runtime.metrics_listen = None;
    let wide_app = Application::build(
        wide,
        ServeOptions {
            role: ServeRole::Tenant,
            migrate: true,
        },
    )
    .await?;
    let wide_addr = wide_app.local_addr()?;
    let (wide_stop, wide_stopped) = tokio::sync::oneshot::channel::<()>();
    let wide_server = tokio::spawn(wide_app.run_until_stopped(async {
        let _ = wide_stopped.await;
    }));
    load(
        http,
        &[wide_addr],
        diag_targets.clone(),
        Pick::Uniform(1),
        concurrency,
        Duration::from_secs(1),
    )
    .await;
    let single = load(
        http,
        &[wide_addr],
        diag_targets.clone(),
        Pick::Uniform(1),
        concurrency,
        round,
    )
    .await;
    let _ = wide_stop.send(());
    wide_server.await??;
    Ok(M1Result {
        base,
        routed,
        opened,
        single,
    })
}

/// M2's outcomes: each Zipf run, M2d again with host affinity, and the server log's
/// "too many clients" count.
struct M2Result {
    results: Vec<(&'static str, ZipfResult)>,
    affine: Outcome,
    opened_affine: f64,
    too_many: usize,
}

/// M2 (pooled), M2m (mixed), M2d (dedicated): Zipf over 1,000 tenants, budget 80, served by
/// two instances (each with half of every budget) that requests alternate between; then M2d
/// again with host affinity.
#[allow(clippy::too_many_arguments)]
async fn m2_rounds(
    cluster: &PgCluster,
    platform: &Platform,
    settings: &portico_core::Settings,
    http: &reqwest::Client,
    metrics_addr: SocketAddr,
    admin: Arc<tokio_postgres::Client>,
    m2: &[Target],
    pooled: &[Target],
    concurrency: usize,
    round: Duration,
) -> anyhow::Result<M2Result> {
    let mut shared = settings.clone();
    shared.runtime.instances = 2;
    shared.runtime.metrics_listen = None;
    if let Ok(n) = std::env::var("PORTICO_BENCH_M2_POOL_SIZE") {
        shared.runtime.tenant_pool_size = n.parse()?;
    }
    let mut m2_servers = Vec::new();
    let mut m2_addrs = Vec::new();
    for _ in 0..2 {
        let app = Application::build(
            shared.clone(),
            ServeOptions {
                role: ServeRole::Tenant,
                migrate: true,
            },
        )
        .await?;
        m2_addrs.push(app.local_addr()?);
        m2_servers.push(tokio::spawn(app.run_until_stopped(std::future::pending())));
    }
    let zipf = Pick::zipf(m2.len(), 1.0);
    let mut databases: Vec<String> = Vec::new();
    for t in m2.iter().chain(pooled) {
        databases.push(placement_of(platform, &t.slug).await?.database_name);
    }
    databases.sort();
    databases.dedup();
    let mixed: Vec<Target> = m2
        .iter()
        .take(20)
        .chain(pooled.iter().take(m2.len() - 20))
        .cloned()
        .collect();
    let runs = [
        ("M2", Arc::new(pooled.to_vec())),
        ("M2m", Arc::new(mixed)),
        ("M2d", Arc::new(m2.to_vec())),
    ];
    let mut results: Vec<(&str, ZipfResult)> = Vec::new();
    for (label, targets) in runs {
        progress(label);
        let r = zipf_rounds(
            http,
            &m2_addrs,
            targets,
            &zipf,
            concurrency,
            round,
            metrics_addr,
            admin.clone(),
            databases.clone(),
        )
        .await;
        results.push((label, r));
    }
    // M2d again with host affinity.
    let m2_targets = Arc::new(m2.to_vec());
    load_with(
        http,
        &m2_addrs,
        m2_targets.clone(),
        zipf.clone(),
        concurrency,
        Duration::from_secs(2),
        true,
    )
    .await;
    let opened_before_affinity = counter(
        &metrics_text(http, metrics_addr).await,
        "portico_pool_connections_opened_total",
    );
    let mut affine = Outcome::default();
    for _ in 0..2 {
        affine.merge(
            load_with(
                http,
                &m2_addrs,
                m2_targets.clone(),
                zipf.clone(),
                concurrency,
                round,
                true,
            )
            .await,
        );
    }
    let opened_affine = counter(
        &metrics_text(http, metrics_addr).await,
        "portico_pool_connections_opened_total",
    ) - opened_before_affinity;
    let log = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
    let too_many = log.matches("too many clients").count()
        + log
            .matches("remaining connection slots are reserved")
            .count();
    for s in m2_servers {
        s.abort();
    }
    Ok(M2Result {
        results,
        affine,
        opened_affine,
        too_many,
    })
}

/// Connection opens: a role whose SCRAM verifier names PostgreSQL's default 4,096 iterations
/// (what tenant roles had before) vs one at ours, interleaved; medians of 50.
async fn opens(
    cluster: &PgCluster,
    admin: &tokio_postgres::Client,
) -> anyhow::Result<(Duration, Duration)> {
    let open_password = "bench-open-password-0123456789abcdef";
    for (role, verifier) in [
        (
            "bench_open_4096",
            postgres_protocol::password::scram_sha_256(open_password.as_bytes()),
        ),
        (
            "bench_open_low",
            portico_provisioning::scram::role_verifier(open_password.as_bytes()),
        ),
    ] {
        admin
            .batch_execute(&format!(
                "drop role if exists {role}; create role {role} login password '{verifier}'"
            ))
            .await?;
    }
    let (mut open_4096, mut open_low) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        for (role, into) in [
            ("bench_open_4096", &mut open_4096),
            ("bench_open_low", &mut open_low),
        ] {
            let mut cfg: tokio_postgres::Config = cluster.url("postgres").parse()?;
            cfg.user(role).password(open_password);
            let started = Instant::now();
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            let took = started.elapsed();
            let conn = tokio::spawn(conn);
            drop(client);
            let _ = conn.await;
            into.push(took);
        }
    }
    open_4096.sort();
    open_low.sort();
    Ok((open_4096[open_4096.len() / 2], open_low[open_low.len() / 2]))
}

/// M8: one tenant floods at full concurrency while a quiet tenant of the same server, in the
/// same tier, is measured (2 clients); against the quiet tenant measured alone. Per tier:
/// (tier, quiet alone, quiet beside the flood, the flood).
async fn m8_rounds(
    http: &reqwest::Client,
    addr: SocketAddr,
    m2: &[Target],
    pooled: &[Target],
    concurrency: usize,
    round: Duration,
) -> Vec<(&'static str, Outcome, Outcome, Outcome)> {
    let mut m8 = Vec::new();
    for (tier, flood, quiet) in [
        ("pooled", &pooled[0], &pooled[1]),
        ("dedicated", &m2[0], &m2[1]),
    ] {
        let quiet_t = Arc::new(vec![quiet.clone()]);
        let flood_t = Arc::new(vec![flood.clone()]);
        let one = [addr];
        load(
            http,
            &one,
            quiet_t.clone(),
            Pick::Uniform(1),
            2,
            Duration::from_secs(1),
        )
        .await;
        let solo = load(http, &one, quiet_t.clone(), Pick::Uniform(1), 2, round).await;
        let flooder = {
            let http = http.clone();
            tokio::spawn(async move {
                load(
                    &http,
                    &[addr],
                    flood_t,
                    Pick::Uniform(1),
                    concurrency,
                    round + Duration::from_secs(1),
                )
                .await
            })
        };
        let noisy = load(http, &one, quiet_t, Pick::Uniform(1), 2, round).await;
        let flood_out = flooder.await.expect("flood");
        m8.push((tier, solo, noisy, flood_out));
    }
    m8
}

/// One Zipf measurement: the outcome, the most runtime connections seen on the server at
/// once, and the connections the runtime opened meanwhile.
struct ZipfResult {
    out: Outcome,
    max_open: i64,
    opened: f64,
}

/// A warm-up round, then two measured rounds of Zipf load over `targets`, sampling the
/// runtime's connections to `databases` every 50 ms.
/// Which part runs now, on stderr (the figures come at the end, on stdout): the run is long,
/// and a profiler can be aimed at one part.
fn progress(part: &str) {
    eprintln!("routing benchmark: {part} …");
}

#[allow(clippy::too_many_arguments)]
async fn zipf_rounds(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    targets: Arc<Vec<Target>>,
    zipf: &Pick,
    concurrency: usize,
    round: Duration,
    metrics_addr: SocketAddr,
    sampler_db: Arc<tokio_postgres::Client>,
    databases: Vec<String>,
) -> ZipfResult {
    load(
        http,
        addrs,
        targets.clone(),
        zipf.clone(),
        concurrency,
        Duration::from_secs(2),
    )
    .await;
    let opened_before = counter(
        &metrics_text(http, metrics_addr).await,
        "portico_pool_connections_opened_total",
    );
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut max = 0i64;
            let mut period = tokio::time::interval(Duration::from_millis(50));
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                period.tick().await;
                if let Ok(row) = sampler_db
                    .query_one(
                        "select count(*) from pg_stat_activity
                          where application_name = 'portico-runtime' and datname = any($1)",
                        &[&databases],
                    )
                    .await
                {
                    max = max.max(row.get::<_, i64>(0));
                }
            }
            max
        })
    };
    let mut out = Outcome::default();
    for _ in 0..2 {
        out.merge(
            load(
                http,
                addrs,
                targets.clone(),
                zipf.clone(),
                concurrency,
                round,
            )
            .await,
        );
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let max_open = sampler.await.unwrap_or(-1);
    let opened = counter(
        &metrics_text(http, metrics_addr).await,
        "portico_pool_connections_opened_total",
    ) - opened_before;
    ZipfResult {
        out,
        max_open,
        opened,
    }
}

#[derive(Clone)]
struct Baseline {
    pool: deadpool_postgres::Pool,
    tenant: portico_core::TenantId,
    key: portico_core::keys::TenantKeyRef,
}

/// The baseline: the same handler (token check and profile read through the same store
/// functions) in a bare axum app, from one fixed pool (same recycling) to one tenant database.
async fn baseline(platform: &Platform, tenant: &Target) -> anyhow::Result<SocketAddr> {
    let slug = tenant.slug.as_str();
    let t = platform
        .catalog
        .tenant_by_slug(slug)
        .await?
        .expect("tenant");
    let placement = platform
        .catalog
        .placement(t.tenant_id())
        .await?
        .expect("placement");
    let server = platform
        .catalog
        .db_server_by_id(placement.db_server_id)
        .await?
        .expect("server");
    let mut cfg: tokio_postgres::Config = server.display_url.parse()?;
    let password = platform.tenant_role_password(slug).await?;
    cfg.dbname(&placement.database_name)
        .user(&placement.role_name)
        .password(password.expose_secret())
        .options(format!(
            "-c search_path={}",
            portico_tenant_runtime::conn::DEDICATED_SEARCH_PATH
        ));
    let manager = deadpool_postgres::Manager::from_config(
        cfg.clone(),
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Clean,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        // Under the tenant role's CONNECTION LIMIT (20).
        .max_size(env_usize("PORTICO_BENCH_CONCURRENCY", 32).clamp(1, 12))
        .build()?;
    let app = axum::Router::new()
        .route("/api/v1/tenant", axum::routing::get(baseline_handler))
        .with_state(Baseline {
            pool,
            tenant: t.tenant_id(),
            key: portico_core::keys::TenantKeyRef::new(t.key_id.clone().unwrap_or_default()),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

async fn baseline_handler(
    State(b): State<Baseline>,
    headers: HeaderMap,
) -> axum::response::Response {
    let Some(digest) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| tokens::presented_digest(tokens::TOKEN_PREFIX, t))
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Ok(conn) = b.pool.get().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let conn = portico_tenant_runtime::pools::TenantConn::borrowed(conn, b.tenant, b.key.clone());
    match tokens::authenticate(&conn, &digest).await {
        Ok(Some(_)) => {}
        _ => return StatusCode::UNAUTHORIZED.into_response(),
    }
    match profile::get(&conn).await {
        Ok(p) => Json(p).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
