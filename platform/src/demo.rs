//! `portico demo`: the whole control plane on embedded defaults. Starts a throwaway PostgreSQL
//! cluster with the machine's binaries, uses `file://` storage and a `local` master key in a
//! temporary directory, provisions two demo tenants, gives `acme` an API token, serves both
//! over HTTP (as `portico serve` does), and cleans everything up on Ctrl-C (or SIGTERM).

use anyhow::Context;
use portico_core::settings::DatabaseUrl;
use portico_core::{Hostname, Settings, Slug};
use sqlx::Connection;

use portico_tenant_runtime::store::{self, tokens::TokenRole};
use secrecy::ExposeSecret;

use crate::cli::{print_tenant, print_tenant_table};
use crate::context::Platform;
use crate::pgcluster::PgCluster;
use crate::serve::{Application, ServeOptions, ServeRole};
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
        let (platform, data, app) = tokio::select! {
            r = setup(&cluster) => r?,
            () = shutdown.requested() => {
                println!("interrupted during setup");
                return Ok(());
            }
        };
        println!("demo ready: two tenants provisioned. Press Ctrl-C to stop and clean up.");
        app.run_until_stopped(async move { shutdown.requested().await })
            .await?;
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

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    match Shutdown::listen() {
        Ok(mut s) => s.requested().await,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; stop the process with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
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

/// Creates the control-plane database, provisions the demo tenants, prints them, creates a
/// token and binds the HTTP server; returns the platform, the data directory (removed when
/// dropped) and the server.
async fn setup(cluster: &PgCluster) -> anyhow::Result<(Platform, tempfile::TempDir, Application)> {
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
    let mut settings = Settings::embedded(database_url, base_domain, data.path());
    settings.runtime.listen = match std::env::var("PORTICO_LISTEN") {
        Ok(l) => l.parse().map_err(|_| {
            anyhow::anyhow!("PORTICO_LISTEN '{l}' is not an address like 127.0.0.1:8080")
        })?,
        // The default port, unless something else has it: then any free one (printed below).
        Err(_) if std::net::TcpListener::bind(settings.runtime.listen).is_err() => {
            ([127, 0, 0, 1], 0).into()
        }
        Err(_) => settings.runtime.listen,
    };
    settings.runtime.metrics_listen = Some(([127, 0, 0, 1], 0).into());
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
    let platform = Platform::connect(settings.clone(), true).await?;

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

    let client = platform.connect_as_tenant("acme").await?;
    let (_, token) = store::tokens::create(&client, "demo", TokenRole::Admin, None)
        .await
        .map_err(crate::PlatformError::from)?;
    let app = Application::build(
        settings.clone(),
        ServeOptions {
            role: ServeRole::All,
        },
    )
    .await?;
    let addr = app.local_addr()?;
    let acme = settings.base_domain.tenant_subdomain(&Slug::parse("acme")?);
    println!(
        "serving on http://{addr} (metrics: http://{}/metrics)",
        app.metrics_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    println!(
        "  try:  curl -H 'Authorization: Bearer {}' http://{acme}:{}/api/v1/tenant",
        token.expose_secret(),
        addr.port()
    );
    println!(
        "        (*.localhost resolves to this machine; elsewhere add -H 'Host: {acme}' and use {addr})"
    );
    println!();
    Ok((platform, data, app))
}
