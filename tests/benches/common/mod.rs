//! What the benchmarks share: knobs from the environment, and provisioning tenants with a
//! token each.

#![allow(dead_code)]

use std::sync::Arc;

use portico_core::{DbServerName, Slug};
use portico_platform::Platform;
use portico_platform::tenants::{self, CreateTenant};
use portico_tenant_runtime::store::tokens;
use secrecy::ExposeSecret;

pub const BASE: &str = "portal.localhost";

/// Settings of a control plane on `cluster` (catalog database `portico`, created here) with
/// embedded backends under `data`, serving on a free loopback port without metrics or rate
/// limits, for up to 2,000 open tenants.
pub async fn bench_settings(
    cluster: &portico_platform::pgcluster::PgCluster,
    data: &std::path::Path,
) -> anyhow::Result<portico_core::Settings> {
    portico_provisioning::DbServer::from_url(&cluster.url("postgres"))?
        .admin()
        .await?
        .batch_execute("create database portico")
        .await?;
    let mut settings = portico_core::Settings::embedded(
        portico_core::settings::DatabaseUrl::parse(&cluster.url("portico"))
            .map_err(anyhow::Error::msg)?,
        portico_core::Hostname::parse(BASE)?,
        data,
    );
    settings.runtime.listen = ([127, 0, 0, 1], 0).into();
    settings.runtime.metrics_listen = None;
    settings.runtime.rate_limit_per_ip = 0;
    settings.runtime.rate_limit_per_tenant = 0;
    settings.runtime.max_open_tenants = 2000;
    Ok(settings)
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A tenant the load generators call: its host and a token.
#[derive(Clone)]
pub struct Target {
    pub slug: String,
    pub host: String,
    pub token: String,
}

/// Creates `n` tenants `<prefix>-<i>` on server `server`, a few at a time, each with a token.
pub async fn provision(
    platform: &Arc<Platform>,
    prefix: &str,
    n: usize,
    server: &str,
) -> anyhow::Result<Vec<Target>> {
    provision_in(platform, prefix, n, server, None).await
}

/// [`provision`] on a given tier (`None`: the `default_tier` setting).
pub async fn provision_in(
    platform: &Arc<Platform>,
    prefix: &str,
    n: usize,
    server: &str,
    tier: Option<portico_platform::catalog::Tier>,
) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (platform, prefix, server) =
                (platform.clone(), prefix.to_owned(), server.to_owned());
            tasks.push(tokio::spawn(async move {
                let slug = format!("{prefix}-{i}");
                tenants::create(
                    &platform,
                    CreateTenant {
                        slug: Slug::parse(&slug)?,
                        display_name: Some(format!("Bench {slug}")),
                        domains: vec![],
                        db_server: Some(DbServerName::parse(&server)?),
                        tier,
                    },
                )
                .await?;
                let client = platform.connect_as_tenant(&slug).await?;
                let (_, token) = tokens::create(
                    &client,
                    "bench",
                    portico_tenant_runtime::store::roles::RoleName::member(),
                    None,
                )
                .await?;
                anyhow::Ok(Target {
                    host: format!("{slug}.{BASE}"),
                    slug: slug.clone(),
                    token: token.expose_secret().to_owned(),
                })
            }));
        }
        for t in tasks {
            out.push(t.await??);
        }
    }
    Ok(out)
}

/// A `portico serve` for tenant hosts only, on `settings` (catalog already migrated), running
/// until the returned task is aborted; and its address.
pub async fn serve_tenant_hosts(
    settings: &portico_core::Settings,
) -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<portico_platform::error::Result<()>>,
)> {
    use portico_platform::serve::{Application, ServeOptions, ServeRole};
    let app = Application::build(
        settings.clone(),
        ServeOptions {
            role: ServeRole::Tenant,
            migrate: false,
        },
    )
    .await?;
    let addr = app.local_addr()?;
    Ok((
        addr,
        tokio::spawn(app.run_until_stopped(std::future::pending::<()>())),
    ))
}
