//! Move benchmark: a pooled tenant with 100,000 tickets moves to a dedicated database on a
//! second PostgreSQL cluster while clients read and write it through the tenant runtime (in
//! process, HTTP/1.1 over loopback).
//!
//! Two throwaway clusters with PostgreSQL's default `max_connections` (100): `a` holds the
//! tenant (pooled, beside a few neighbours in its shared database), `b` receives it. Load:
//! `PORTICO_BENCH_READERS` clients reading `GET /api/v1/tickets?limit=20` and
//! `PORTICO_BENCH_WRITERS` clients creating tickets (`POST /api/v1/tickets`, a fresh
//! `Idempotency-Key` each), as fast as answers come.
//!
//! Printed, against the targets of the issue:
//! - the write freeze: catalog `frozen_at → switched_at` (target ≤ 5 s), and as clients saw it
//!   (first to last `503 tenant_moving`); its ratio to the 5 s target;
//! - reads during the move by status (target: every one 200), and read throughput during the
//!   move against the same load's throughput in a baseline window of the same length measured
//!   just before, in the same run;
//! - writes by status, and every acknowledged (201) ticket looked up in the destination
//!   afterwards (target: none missing).
//!
//! Run: `./infra/bench.sh moves` (or `cargo bench --workspace --bench moves`).
//! Knobs: `PORTICO_BENCH_ROWS` (default 100000), `PORTICO_BENCH_READERS` (4),
//! `PORTICO_BENCH_WRITERS` (2).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Target, env_usize, provision_in};
use portico_core::DbServerName;
use portico_platform::Platform;
use portico_platform::catalog::Tier;
use portico_platform::moves::{self, MoveTenant};
use portico_platform::pgcluster::PgCluster;
use serde_json::json;

const FREEZE_TARGET: Duration = Duration::from_secs(5);

/// Reads answered in the baseline window.
const BASELINE_READS: u64 = 2_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = tokio::task::spawn_blocking(|| PgCluster::start_with(100)).await??;
    let b = tokio::task::spawn_blocking(|| PgCluster::start_with(100)).await??;
    let result = run(&a, &b).await;
    tokio::task::spawn_blocking(move || a.stop()).await??;
    tokio::task::spawn_blocking(move || b.stop()).await??;
    result
}

async fn run(a: &PgCluster, b: &PgCluster) -> anyhow::Result<()> {
    let rows = env_usize("PORTICO_BENCH_ROWS", 100_000).max(1);
    let readers = env_usize("PORTICO_BENCH_READERS", 4).max(1);
    let writers = env_usize("PORTICO_BENCH_WRITERS", 2).max(1);
    let data = tempfile::tempdir()?;
    let settings = common::bench_settings(a, data.path()).await?;
    let platform = Arc::new(Platform::connect(settings.clone(), true).await?);
    for (name, cluster) in [("a", a), ("b", b)] {
        portico_platform::db_servers::add(
            &platform,
            &DbServerName::parse(name)?,
            &cluster.url("postgres"),
            Some(80),
        )
        .await?;
    }
    let targets = provision_in(&platform, "mv", 4, "a", Some(Tier::Pooled)).await?;
    let target = targets[0].clone();
    // The tenant's data, written as the tenant (its role and schema).
    let conn = platform.connect_as_tenant(&target.slug).await?;
    conn.execute(
        "insert into tickets (id, title, description, created_by)
         select gen_random_uuid(), 'Ticket ' || i, repeat('Leaks since Monday. ', 5), 'bench'
           from generate_series(1, $1::int8) as i",
        &[&i64::try_from(rows)?],
    )
    .await?;
    conn.execute("analyze tickets", &[]).await?;
    drop(conn);
    // Writers act for a user (tickets need one): an admin user's token.
    let writer_token = {
        use portico_tenant_runtime::store::{roles::RoleName, tokens, users};
        let conn = platform.connect_as_tenant(&target.slug).await?;
        let user = users::create_local(
            &conn,
            "writer@bench.example",
            RoleName::parse("admin").ok_or_else(|| anyhow::anyhow!("role"))?,
            "$argon2id$v=19$m=19456,t=2,p=1$bm90LXVzZWQ$bm90LXVzZWQtbm90LXVzZWQtbm90LXVzZWQ",
        )
        .await?;
        let (_, token) = tokens::create_scoped(
            &conn,
            "writer",
            RoleName::parse("admin").ok_or_else(|| anyhow::anyhow!("role"))?,
            None,
            Some(user),
            None,
        )
        .await?;
        secrecy::ExposeSecret::expose_secret(&token).to_owned()
    };

    let (addr, server) = common::serve_tenant_hosts(&settings).await?;
    // Warm the tenant's route and pool: until both kinds of request have been answered.
    let warm = Load::start(addr, &target, &writer_token, readers, writers);
    warm.until(50, 5).await?;
    warm.stop().await?;

    println!(
        "move benchmark: pooled tenant with {rows} tickets, server a -> dedicated on server b, {readers} readers + {writers} writers"
    );
    // Baseline: the same load, no move, until it has answered as many reads as the move window
    // typically sees (both are rated per second).
    let baseline = Load::start(addr, &target, &writer_token, readers, writers);
    baseline.until(BASELINE_READS, 0).await?;
    let base = baseline.stop().await?;

    let load = Load::start(addr, &target, &writer_token, readers, writers);
    // Writes are landing when the move starts, so the freeze meets running writes.
    load.until(0, 20).await?;
    let t = Instant::now();
    let view = moves::move_tenant(
        &platform,
        MoveTenant {
            slug: portico_core::Slug::parse(&target.slug)?,
            to_tier: Some(Tier::Dedicated),
            to_server: Some(DbServerName::parse("b")?),
        },
    )
    .await?;
    let move_time = t.elapsed();
    // Writes land again, in the destination, before the window closes.
    let (_, written) = *load.progress.borrow();
    load.until(0, written + 20).await?;
    let during = load.stop().await?;
    server.abort();
    anyhow::ensure!(view.status == "succeeded", "the move ended {}", view.status);

    // Every acknowledged write is in the destination.
    let mut acked: Vec<uuid::Uuid> = base.created.clone();
    acked.extend(&during.created);
    let conn = platform.connect_as_tenant(&target.slug).await?;
    let found: i64 = conn
        .query_one("select count(*) from tickets where id = any($1)", &[&acked])
        .await?
        .get(0);
    let total: i64 = conn
        .query_one("select count(*) from tickets", &[])
        .await?
        .get(0);
    let freeze = Duration::from_millis(view.write_freeze_ms.unwrap_or(0).unsigned_abs());
    let steps: Vec<String> = view
        .steps
        .iter()
        .map(|s| {
            let ms = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => (b - a).whole_milliseconds(),
                _ => -1,
            };
            format!("{} {ms} ms", s.step)
        })
        .collect();
    println!(
        "    move: {:.2} s in all ({}), {} rows copied and verified",
        move_time.as_secs_f64(),
        steps.join(", "),
        view.rows_copied.unwrap_or(0)
    );
    println!(
        "    write freeze (catalog, frozen -> switched) {:.2} s = {:.2}x of the 5 s target (target <= 1.00x)",
        freeze.as_secs_f64(),
        freeze.as_secs_f64() / FREEZE_TARGET.as_secs_f64()
    );
    if let (Some(first), Some(last)) = (during.first_moving, during.last_moving) {
        println!(
            "    write freeze as clients saw it (first to last 503 tenant_moving): {:.2} s",
            (last - first).as_secs_f64()
        );
    }
    let failed_reads: u64 = during
        .reads
        .iter()
        .filter(|(k, _)| k.as_str() != "200")
        .map(|(_, v)| v)
        .sum();
    let base_rate = base.reads.values().sum::<u64>() as f64 / base.elapsed.as_secs_f64();
    let move_rate = during.reads.values().sum::<u64>() as f64 / during.elapsed.as_secs_f64();
    println!(
        "    reads during the move: {:?}; {failed_reads} failed (target 0); {:.0} reads/s vs {:.0} reads/s baseline = {:.2}x",
        during.reads,
        move_rate,
        base_rate,
        move_rate / base_rate
    );
    println!(
        "    writes during the move: {:?}; baseline window: {:?}",
        during.writes, base.writes
    );
    println!(
        "    acknowledged writes present afterwards: {found} of {} (target: all; {} lost); tickets now {total}",
        acked.len(),
        acked.len() as i64 - found
    );
    Ok(())
}

/// What one load window saw.
#[derive(Default)]
struct Seen {
    reads: BTreeMap<String, u64>,
    writes: BTreeMap<String, u64>,
    /// Tickets whose create was acknowledged (201).
    created: Vec<uuid::Uuid>,
    first_moving: Option<Instant>,
    last_moving: Option<Instant>,
    elapsed: Duration,
}

struct Load {
    done: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<tokio::task::JoinHandle<Seen>>,
    /// Reads answered 200 and writes answered 201 so far.
    progress: tokio::sync::watch::Receiver<(u64, u64)>,
}

fn key(status: u16, body: &serde_json::Value) -> String {
    if status < 300 {
        status.to_string()
    } else {
        format!("{status} {}", body["code"].as_str().unwrap_or("-"))
    }
}

impl Load {
    fn start(
        addr: std::net::SocketAddr,
        target: &Target,
        writer_token: &str,
        readers: usize,
        writers: usize,
    ) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(readers + writers)
            .build()
            .expect("client");
        let mut workers = Vec::new();
        let (progress_tx, progress) = tokio::sync::watch::channel((0u64, 0u64));
        let progress_tx = Arc::new(progress_tx);
        for w in 0..readers + writers {
            let (http, done, host) = (http.clone(), done.clone(), target.host.clone());
            let progress_tx = progress_tx.clone();
            let write = w >= readers;
            let token = if write {
                writer_token.to_owned()
            } else {
                target.token.clone()
            };
            workers.push(tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut n = 0u64;
                while !done.load(Ordering::Acquire) {
                    n += 1;
                    let request = if write {
                        http.post(format!("http://{addr}/api/v1/tickets"))
                            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                            .json(&json!({"title": format!("Written {w}-{n}")}))
                    } else {
                        http.get(format!("http://{addr}/api/v1/tickets?limit=20"))
                    };
                    let k = match request
                        .header("host", &host)
                        .bearer_auth(&token)
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            if write
                                && status == 201
                                && let Some(id) = body["id"].as_str().and_then(|s| s.parse().ok())
                            {
                                seen.created.push(id);
                            }
                            if body["code"] == "tenant_moving" {
                                let now = Instant::now();
                                seen.first_moving.get_or_insert(now);
                                seen.last_moving = Some(now);
                            }
                            match (write, status) {
                                (false, 200) => progress_tx.send_modify(|p| p.0 += 1),
                                (true, 201) => progress_tx.send_modify(|p| p.1 += 1),
                                _ => {}
                            }
                            key(status, &body)
                        }
                        Err(e) => format!("transport: {e}"),
                    };
                    let counts = if write {
                        &mut seen.writes
                    } else {
                        &mut seen.reads
                    };
                    *counts.entry(k).or_default() += 1;
                }
                seen
            }));
        }
        Self {
            done,
            started: Instant::now(),
            workers,
            progress,
        }
    }

    /// Waits until at least `reads` reads and `writes` writes have succeeded (an error if that
    /// takes a minute: something is broken, not slow).
    async fn until(&self, reads: u64, writes: u64) -> anyhow::Result<()> {
        let mut rx = self.progress.clone();
        let reached = rx.wait_for(|(r, w)| *r >= reads && *w >= writes);
        match tokio::time::timeout(Duration::from_secs(60), reached).await {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!("the load never reached {reads} reads and {writes} writes"),
        }
    }

    async fn stop(self) -> anyhow::Result<Seen> {
        self.done.store(true, Ordering::Release);
        let elapsed = self.started.elapsed();
        let mut all = Seen {
            elapsed,
            ..Seen::default()
        };
        for w in self.workers {
            let s = w.await?;
            for (k, v) in s.reads {
                *all.reads.entry(k).or_default() += v;
            }
            for (k, v) in s.writes {
                *all.writes.entry(k).or_default() += v;
            }
            all.created.extend(s.created);
            all.first_moving = match (all.first_moving, s.first_moving) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            all.last_moving = match (all.last_moving, s.last_moving) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(all)
    }
}
