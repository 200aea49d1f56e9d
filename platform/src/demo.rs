//! `portico demo`: the whole control plane on embedded defaults. Starts a throwaway PostgreSQL
//! cluster with the machine's binaries, uses `file://` storage and a `local` master key in a
//! temporary directory, provisions two demo tenants, gives `acme` an API token and a local
//! admin account, gives `globex` an OpenID Connect IdP (a real `oidc-provider` on loopback, when
//! Node.js is available), serves both over HTTP (as `portico serve` does), and cleans
//! everything up on Ctrl-C (or SIGTERM).

use anyhow::Context;
use portico_core::settings::DatabaseUrl;
use portico_core::{Hostname, Settings, Slug};
use sqlx::Connection;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portico_core::keys::random_bytes;
use portico_tenant_runtime::store::{self, roles::RoleName};
use secrecy::{ExposeSecret, SecretString};

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
        let (platform, data, app, idp) = tokio::select! {
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
        drop(idp);
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
/// token, a local account and an OIDC connection, and binds the HTTP server; returns the
/// platform, the data directory (removed when dropped), the server and the demo IdP process
/// (killed when dropped).
async fn setup(
    cluster: &PgCluster,
) -> anyhow::Result<(
    Platform,
    tempfile::TempDir,
    Application,
    Option<tokio::process::Child>,
)> {
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
    if settings.runtime.listen.port() == 0 {
        // Browsers are sent back to the portal (SSO, redirects), so the port must be known
        // before the server starts: take a free one now.
        let probe =
            std::net::TcpListener::bind(settings.runtime.listen).context("finding a free port")?;
        settings.runtime.listen = probe.local_addr().context("finding a free port")?;
    }
    settings.runtime.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    // Plain HTTP on *.localhost (browsers treat it as a secure context, so the `__Host-`
    // cookies work), and the demo IdP on loopback.
    settings.runtime.public_scheme = "http".into();
    settings.runtime.public_port = settings.runtime.listen.port();
    settings.runtime.sso_allow_loopback = true;
    // Uploads are scanned only when a clamd is configured; the demo must run without one.
    settings.runtime.clamd = match std::env::var("PORTICO_CLAMD") {
        Ok(v) => portico_core::settings::ClamdAddress::parse(&v).ok_or_else(|| {
            anyhow::anyhow!("PORTICO_CLAMD '{v}' is not unix:/path, tcp:host:port or none")
        })?,
        Err(_) => portico_core::settings::ClamdAddress::Disabled,
    };
    println!(
        "  PostgreSQL:  127.0.0.1:{} (password auth), cluster in {}",
        cluster.port(),
        cluster.dir().display()
    );
    println!("  storage:     file://{}/storage", data.path().display());
    println!(
        "  scanning:    {}",
        match &settings.runtime.clamd {
            portico_core::settings::ClamdAddress::Disabled =>
                "off (set PORTICO_CLAMD=unix:/path/to/clamd.sock to scan uploads)".to_owned(),
            other => format!("{other:?}"),
        }
    );
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
                tier: None,
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
    let (_, token) = store::tokens::create(&client, "demo", RoleName::admin(), None)
        .await
        .map_err(crate::PlatformError::from)?;
    let password = SecretString::from(URL_SAFE_NO_PAD.encode(random_bytes::<12>()));
    let pw = password.clone();
    let hash = tokio::task::spawn_blocking(move || store::users::hash_password(&pw))
        .await
        .context("hashing the demo password")?
        .map_err(crate::PlatformError::from)?;
    store::users::create_local(&client, DEMO_ADMIN, RoleName::admin(), &hash)
        .await
        .map_err(crate::PlatformError::from)?;
    let idp = demo_idp(&platform, &settings).await;
    let app = Application::build(
        settings.clone(),
        ServeOptions {
            role: ServeRole::All,
            migrate: true,
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
    println!(
        "  upload: curl -H 'Authorization: Bearer {}' -H 'Content-Type: application/pdf' --data-binary @invoice.pdf 'http://{acme}:{}/api/v1/documents?type=invoice&title=Invoice'",
        token.expose_secret(),
        addr.port()
    );
    let origin = |slug: &str| {
        let host = settings
            .base_domain
            .tenant_subdomain(&Slug::parse(slug).expect("a demo slug"));
        settings.runtime.public_origin(host.as_str())
    };
    println!(
        "  sign in (local account): {}/login  as {DEMO_ADMIN} / {}",
        origin("acme"),
        password.expose_secret()
    );
    match &idp {
        Some(_) => println!(
            "  sign in (OpenID Connect): {}/login  → 'demo-idp', any account name",
            origin("globex")
        ),
        None => println!("  (no OpenID Connect demo: Node.js and infra/idp were not found)"),
    }
    println!();
    Ok((platform, data, app, idp.map(|(child, _)| child)))
}

const DEMO_ADMIN: &str = "admin@acme.example";

/// Starts the test IdP of `infra/idp` (a real `oidc-provider`) for `globex` and adds it as the
/// OIDC connection `demo-idp`. `None`, with a note, when Node.js or the IdP is not available.
async fn demo_idp(
    platform: &Platform,
    settings: &Settings,
) -> Option<(tokio::process::Child, String)> {
    match try_demo_idp(platform, settings).await {
        Ok(v) => Some(v),
        Err(e) => {
            println!("  (skipping the OpenID Connect demo: {e:#})");
            None
        }
    }
}

async fn try_demo_idp(
    platform: &Platform,
    settings: &Settings,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/idp");
    anyhow::ensure!(dir.join("oidc-idp.mjs").exists(), "infra/idp not found");
    if !dir.join("node_modules").exists() {
        println!("installing the demo IdP (npm ci in infra/idp)…");
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .await
            .context("running npm")?;
        anyhow::ensure!(status.success(), "npm ci failed");
    }
    let globex = Slug::parse("globex")?;
    let host = settings.base_domain.tenant_subdomain(&globex);
    let redirect = format!(
        "{}/sso/oidc/demo-idp/callback",
        settings.runtime.public_origin(host.as_str())
    );
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<24>());
    let clients = serde_json::json!([{
        "client_id": "globex-portal", "client_secret": secret, "redirect_uris": [redirect],
    }]);
    let mut child = tokio::process::Command::new("node")
        .arg("oidc-idp.mjs")
        .current_dir(&dir)
        .env("OIDC_IDP_CLIENTS", clients.to_string())
        .env("OIDC_IDP_EMAIL_DOMAIN", "globex.example")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    let stdout = child.stdout.take().context("IdP output")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .context("the IdP did not start in 20 s")??
        .context("the IdP exited")?;
    // Keep reading so the IdP never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let info: serde_json::Value = serde_json::from_str(&first).context("IdP start line")?;
    let issuer = info["issuer"].as_str().context("issuer")?.to_owned();
    let client = platform.connect_as_tenant("globex").await?;
    let (tenant, key) = platform.tenant_key("globex").await?;
    let fetcher =
        portico_tenant_runtime::identity::fetch::Fetcher::new(settings.runtime.sso_allow_loopback);
    portico_tenant_runtime::identity::admin::create(
        &client,
        &platform.keyring,
        tenant,
        &key,
        &fetcher,
        portico_tenant_runtime::identity::admin::NewConnection::Oidc {
            name: "demo-idp".into(),
            issuer: issuer.clone(),
            client_id: "globex-portal".into(),
            client_secret: SecretString::from(secret),
            default_role: Some(RoleName::member()),
            map_claim: vec!["groups:admins=admin".into()],
        },
    )
    .await
    .map_err(crate::PlatformError::from)?;
    println!("  demo IdP:    {issuer} (oidc-provider from infra/idp)");
    Ok((child, issuer))
}
