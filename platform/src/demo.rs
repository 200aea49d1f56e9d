//! `portico demo`: the whole control plane on embedded defaults. Starts a throwaway PostgreSQL
//! cluster with the machine's binaries, uses `file://` storage and a `local` master key in a
//! temporary directory, provisions two demo tenants, prints them, and cleans everything up on
//! Ctrl-C (or SIGTERM).

use anyhow::Context;
use portico_core::settings::DatabaseUrl;
use portico_core::{Hostname, Settings, Slug};
use sqlx::Connection;

use crate::cli::{print_tenant, print_tenant_table};
use crate::context::Platform;
use crate::pgcluster::PgCluster;
use crate::tenants::{self, CreateTenant};

pub async fn run() -> anyhow::Result<()> {
    // Listen for Ctrl-C and SIGTERM before anything else: a signal that arrives while the
    // cluster starts or tenants are provisioned ends the setup and still cleans up, and one that
    // arrives right after "demo ready" cannot slip past a listener not yet in place.
    let mut shutdown = Shutdown::listen().context("installing signal handlers")?;
    println!("portico demo: starting a throwaway PostgreSQL cluster…");
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .context("starting PostgreSQL")??;
    let outcome = async {
        let (platform, data) = tokio::select! {
            r = setup(&cluster) => r?,
            () = shutdown.requested() => {
                println!("interrupted during setup");
                return Ok(());
            }
        };
        println!("demo ready: two tenants provisioned. Press Ctrl-C to stop and clean up.");
        shutdown.requested().await;
        platform.catalog.pool().close().await;
        drop(data);
        anyhow::Ok(())
    }
    .await;
    println!("stopping PostgreSQL and removing the demo data…");
    let data = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .context("stopping PostgreSQL")?;
    outcome?;
    data?;
    println!("demo stopped cleanly");
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM listeners, registered once and up front.
struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn requested(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Creates the control-plane database, provisions the demo tenants and prints them; returns the
/// platform and the data directory (removed when dropped).
async fn setup(cluster: &PgCluster) -> anyhow::Result<(Platform, tempfile::TempDir)> {
    let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .context("connecting to the demo cluster")?;
    sqlx::query("create database portico")
        .execute(&mut admin)
        .await
        .context("creating the control-plane database")?;
    admin.close().await.ok();

    let data = tempfile::Builder::new()
        .prefix("portico-demo-")
        .tempdir()
        .context("creating the demo data directory")?;
    let base_domain = Hostname::parse(
        &std::env::var("PORTICO_BASE_DOMAIN").unwrap_or_else(|_| "portal.localhost".into()),
    )
    .context("PORTICO_BASE_DOMAIN")?;
    let database_url = DatabaseUrl::parse(&cluster.url("portico"))
        .map_err(|e| anyhow::anyhow!("demo database URL: {e}"))?;
    let settings = Settings::embedded(database_url, base_domain, data.path());
    println!(
        "  PostgreSQL:  127.0.0.1:{} (password auth), cluster in {}",
        cluster.port(),
        cluster.dir().display()
    );
    println!("  storage:     file://{}/storage", data.path().display());
    println!(
        "  keys:        local://{}/keys/master.key",
        data.path().display()
    );
    let platform = Platform::connect(settings, true).await?;

    let demo_tenants = [
        ("acme", "Acme Corporation", vec![]),
        (
            "globex",
            "Globex Industries",
            vec![Hostname::parse("portal.globex.example")?],
        ),
    ];
    for (slug, name, domains) in demo_tenants {
        println!("provisioning tenant '{slug}'…");
        tenants::create(
            &platform,
            CreateTenant {
                slug: Slug::parse(slug)?,
                display_name: Some(name.into()),
                domains,
                db_server: None,
            },
        )
        .await?;
    }
    println!();
    let all = tenants::list(&platform).await?;
    print_tenant_table(&all);
    for t in &all {
        println!();
        print_tenant(t);
    }
    println!();
    Ok((platform, data))
}
