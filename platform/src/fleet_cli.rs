//! `portico fleet …` and `portico tenant migrate|canary|feature …`: schema migrations across
//! the fleet, their ledger, and feature flags.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use clap::Subcommand;
use uuid::Uuid;

use crate::context::Platform;
use crate::error::PlatformError;
use crate::fleet::{self, FleetOptions, MigrationSet, Progress, StopSignal, TenantResult};

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Bring every tenant database to this binary's tenant schema: a canary wave, then the
    /// rest, resumable (run it again after an interruption).
    Migrate {
        /// Only tenants on this database server.
        #[arg(long)]
        server: Option<String>,
        /// Tenants migrated at once (each server gets its share).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Tenants in the canary wave, besides those flagged with `tenant canary`.
        #[arg(long, default_value_t = 0)]
        canary: usize,
        /// Failed tenants tolerated before the run stops.
        #[arg(long, default_value_t = 0)]
        max_failures: usize,
        /// Show the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON line per tenant result, then a summary line.
        #[arg(long)]
        json: bool,
    },
    /// Tenants by schema version, by server and by status; the last run.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Migration runs, newest first.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One migration run.
    #[command(subcommand)]
    Run(RunCmd),
    /// Fleet-wide feature flags.
    #[command(subcommand)]
    Feature(FleetFeatureCmd),
}

#[derive(Subcommand)]
pub enum RunCmd {
    /// A run and every tenant's result in it.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum FleetFeatureCmd {
    /// Enable a flag for P percent of tenants (stable by tenant id: raising P only adds
    /// tenants); `--clear` removes the rollout. Tenants' own settings win.
    Set {
        flag: String,
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        percent: Option<i32>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand)]
pub enum TenantFeatureCmd {
    /// Turn a flag on or off for a tenant, or `default` to follow the rollout again.
    Set {
        slug: String,
        flag: String,
        #[arg(value_parser = ["on", "off", "default"])]
        state: String,
    },
    /// Every flag as the tenant has it, and why.
    List {
        slug: String,
        #[arg(long)]
        json: bool,
    },
}

/// `tenant migrate <slug>`.
pub async fn tenant_migrate(p: &Platform, slug: &str, as_json: bool) -> anyhow::Result<()> {
    let (run, r) = fleet::migrate_tenant(p, slug, &MigrationSet::default(), &cli_actor()).await?;
    if as_json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_result(&r);
    }
    if r.state == "failed" {
        anyhow::bail!(
            "tenant '{slug}' was not migrated (run {}): {}",
            run.run_id,
            r.error.unwrap_or_default()
        );
    }
    Ok(())
}

/// `tenant canary <slug> on|off`.
pub async fn tenant_canary(p: &Platform, slug: &str, on: bool) -> anyhow::Result<()> {
    fleet::set_canary(p, slug, on).await?;
    println!(
        "tenant '{slug}' is {} canary",
        if on { "a" } else { "no longer a" }
    );
    Ok(())
}

pub async fn tenant_feature(p: &Platform, cmd: TenantFeatureCmd) -> anyhow::Result<()> {
    let (views, as_json) = match cmd {
        TenantFeatureCmd::Set { slug, flag, state } => {
            let enabled = match state.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            };
            (
                crate::features::set_for_tenant(p, &slug, &flag, enabled).await?,
                false,
            )
        }
        TenantFeatureCmd::List { slug, json } => {
            (crate::features::list_for_tenant(p, &slug).await?, json)
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        for v in views {
            println!(
                "{:<20} {:<4} ({})",
                v.name,
                if v.enabled { "on" } else { "off" },
                serde_json::to_value(v.source)?.as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub async fn run(p: &Platform, cmd: FleetCmd) -> anyhow::Result<()> {
    match cmd {
        FleetCmd::Migrate {
            server,
            concurrency,
            canary,
            max_failures,
            dry_run,
            json,
        } => {
            let options = FleetOptions {
                server,
                concurrency,
                canary,
                max_failures,
            };
            migrate(p, options, dry_run, json).await
        }
        FleetCmd::Status { json } => {
            let st = fleet::status(p).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!(
                "{} tenants; this binary ships tenant schema {} and serves {} and newer",
                st.tenants, st.latest_version, st.minimum_version
            );
            println!("by schema version:");
            for (v, n) in &st.by_version {
                println!("  {v:<8} {n}");
            }
            println!("by server (tenants, behind):");
            for (s, c) in &st.by_server {
                println!("  {s:<20} {:>6} {:>6}", c.tenants, c.behind);
            }
            println!("by status:");
            for (s, n) in &st.by_status {
                println!("  {s:<12} {n}");
            }
            match &st.last_run {
                Some(r) => print_summary(r),
                None => println!("no fleet run yet"),
            }
            Ok(())
        }
        FleetCmd::Runs { limit, json } => {
            let runs = fleet::runs(p, limit.clamp(1, 1000)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else if runs.is_empty() {
                println!("no migration runs");
            } else {
                for r in &runs {
                    print_summary(r);
                }
            }
            Ok(())
        }
        FleetCmd::Run(RunCmd::Show { id, json }) => {
            let run = Uuid::parse_str(&id)
                .map_err(|_| PlatformError::InvalidInput(format!("'{id}' is not a run id")))?;
            let summary = fleet::run_summary(p, run).await?.ok_or_else(|| {
                PlatformError::InvalidInput(format!(
                    "no migration run {run} (see `portico fleet runs`)"
                ))
            })?;
            let tenants = fleet::tenant_results(p, run).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"run": summary, "tenants": tenants})
                    )?
                );
            } else {
                print_summary(&summary);
                for t in &tenants {
                    print_result(t);
                }
            }
            Ok(())
        }
        FleetCmd::Feature(FleetFeatureCmd::Set {
            flag,
            percent,
            clear,
        }) => {
            let percent = if clear { None } else { percent };
            crate::features::set_rollout(p, &flag, percent).await?;
            match percent {
                Some(pc) => println!("feature '{flag}' rolled out to {pc}% of tenants"),
                None => println!("feature '{flag}' rollout cleared"),
            }
            Ok(())
        }
    }
}

async fn migrate(
    p: &Platform,
    options: FleetOptions,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let stop = StopSignal::default();
    // Ctrl-C: in-flight tenants finish, the rest stay pending; the same command resumes.
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "stopping: finishing the tenants in flight (run the same command to resume)"
                );
                stop.stop();
            }
        })
    };
    let progress = Printer::new(as_json);
    let outcome = fleet::migrate_fleet(
        p,
        options,
        dry_run,
        &MigrationSet::default(),
        &cli_actor(),
        &progress,
        &stop,
    )
    .await;
    watcher.abort();
    progress.finish();
    let outcome = outcome?;
    if as_json {
        if dry_run {
            for t in &outcome.plan {
                println!("{}", serde_json::to_string(t)?);
            }
        }
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"summary": outcome}))?
        );
    } else if dry_run {
        println!(
            "dry run: {} tenant(s) would be migrated, {} are up to date",
            outcome.plan.iter().filter(|t| t.state == "pending").count(),
            outcome.up_to_date
        );
        for t in &outcome.plan {
            print_result(t);
        }
    } else {
        match &outcome.run {
            Some(r) => {
                if outcome.resumed {
                    println!("resumed run {}", r.run_id);
                }
                print_summary(r);
            }
            None => println!(
                "nothing to do: all {} tenant(s) are at tenant schema {} or newer",
                outcome.up_to_date,
                portico_provisioning::migrations::latest_version()
            ),
        }
    }
    if let Some(r) = &outcome.run
        && r.status != "succeeded"
    {
        anyhow::bail!(
            "run {} {}: {}",
            r.run_id,
            r.status,
            r.error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

/// Who started a run from the command line (for the ledger and the operator audit).
fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

fn print_summary(r: &fleet::RunSummary) {
    println!(
        "run {} ({}) {} → schema {}: {} tenants, {} succeeded, {} failed, {} skipped, {} pending{}",
        r.run_id,
        r.kind,
        r.status,
        r.target_version,
        r.tenants,
        r.succeeded,
        r.failed,
        r.skipped,
        r.pending,
        r.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
}

fn print_result(t: &TenantResult) {
    let v = |x: Option<i32>| x.map_or("-".into(), |v| v.to_string());
    println!(
        "{:<24} {:<12} {:<9} wave {} schema {} → {} attempts {} {}{}",
        t.slug,
        t.server,
        t.state,
        t.wave,
        v(t.version_before),
        v(t.version_after),
        t.attempts,
        t.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
        t.error
            .as_deref()
            .map(|e| format!(" — {e}"))
            .unwrap_or_default()
    );
}

/// Progress on a terminal (a bar: done/failed/remaining, rate, ETA), or JSON lines.
struct Printer {
    json: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
    failed: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self {
            json,
            bar: Mutex::new(None),
            failed: Default::default(),
            started: Instant::now(),
        }
    }

    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(bar) = b.take()
        {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Printer {
    fn started(&self, run: Uuid, total: u64, done: u64) {
        if self.json || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} done, {msg} ({per_sec}, ETA {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(done);
        bar.set_message(format!("0 failed, run {run}"));
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }

    fn result(&self, r: &TenantResult) {
        if self.json {
            if let Ok(line) = serde_json::to_string(r) {
                println!("{line}");
            }
            return;
        }
        let failed = if r.state == "failed" {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1
        } else {
            self.failed.load(std::sync::atomic::Ordering::Relaxed)
        };
        if let Ok(b) = self.bar.lock()
            && let Some(bar) = b.as_ref()
        {
            bar.inc(1);
            let remaining = bar.length().unwrap_or(0).saturating_sub(bar.position());
            bar.set_message(format!("{failed} failed, {remaining} remaining"));
            if r.state == "failed" {
                bar.println(format!(
                    "{} failed: {}",
                    r.slug,
                    r.error.as_deref().unwrap_or_default()
                ));
            }
            return;
        }
        // Not a terminal: one line per failure only.
        if r.state == "failed" {
            eprintln!(
                "{} failed after {:.1}s of the run: {}",
                r.slug,
                self.started.elapsed().as_secs_f64(),
                r.error.as_deref().unwrap_or_default()
            );
        }
    }
}
