//! The `portico` command line. Parses arguments (clap), runs one command against the control
//! plane, prints human output (or `--json` on read commands), and turns any error into a single
//! `error: …` line on stderr with a non-zero exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portico_core::{DbServerName, Hostname, Settings, Slug};

use crate::context::Platform;
use crate::db_servers::{self, DbServerView};
use crate::error::PlatformError;
use crate::tenants::{self, CreateTenant, TenantView};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "Portico: multi-tenant B2B customer portals (control plane)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the control-plane database migrations.
    Migrate,
    /// Database servers that host tenant databases.
    #[command(subcommand)]
    DbServer(DbServerCmd),
    /// Tenants: create, inspect, suspend, resume.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Run the control plane on embedded defaults (throwaway PostgreSQL, file storage, local key).
    Demo,
}

#[derive(Subcommand)]
enum DbServerCmd {
    /// Register a database server (checked for reachability and privileges first).
    Add {
        name: String,
        /// Admin URL, postgres://user:password@host:port/database (or PORTICO_DB_SERVER_URL).
        #[arg(long, env = "PORTICO_DB_SERVER_URL", hide_env_values = true)]
        url: String,
        /// Connection budget for this server (default: the server's max_connections).
        #[arg(long)]
        max_connections: Option<u32>,
    },
    /// List registered database servers.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant (or finish an interrupted create of it); --rollback undoes an unfinished one.
    Create {
        slug: String,
        /// Display name (default: the slug).
        #[arg(long, conflicts_with = "rollback")]
        name: Option<String>,
        /// Custom domain (repeatable); recorded unverified.
        #[arg(long = "domain", conflicts_with = "rollback")]
        domains: Vec<String>,
        /// Database server to place the tenant on (default: the least loaded).
        #[arg(long, conflicts_with = "rollback")]
        db_server: Option<String>,
        /// Remove everything an unfinished create left behind.
        #[arg(long)]
        rollback: bool,
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Suspend an active tenant.
    Suspend {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a suspended tenant.
    Resume {
        slug: String,
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the `portico` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", portico_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn platform(migrate: bool) -> anyhow::Result<Platform> {
    let settings = Settings::load().map_err(PlatformError::from)?;
    Ok(Platform::connect(settings, migrate).await?)
}

fn slug(s: &str) -> Result<Slug, PlatformError> {
    Ok(Slug::parse(s)?)
}

fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            platform(true).await?;
            println!("control-plane database is up to date");
        }
        Command::Demo => crate::demo::run().await?,
        Command::DbServer(DbServerCmd::Add {
            name,
            url,
            max_connections,
        }) => {
            let name = DbServerName::parse(&name).map_err(PlatformError::from)?;
            let p = platform(true).await?;
            let (s, info) = db_servers::add(&p, &name, &url, max_connections).await?;
            println!(
                "registered database server '{}' ({}, PostgreSQL {}, budget {} connections)",
                s.name, s.url, info.version, s.max_connections
            );
        }
        Command::DbServer(DbServerCmd::List { json: as_json }) => {
            let p = platform(true).await?;
            let servers = db_servers::list(&p).await?;
            if as_json {
                json(&servers)?;
            } else {
                print_server_table(&servers);
            }
        }
        Command::Tenant(cmd) => tenant(cmd).await?,
    }
    Ok(())
}

async fn tenant(cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create {
            slug: s,
            name,
            domains,
            db_server,
            rollback,
            json: as_json,
        } => {
            let slug = slug(&s)?;
            if rollback {
                let p = platform(true).await?;
                let report = tenants::rollback(&p, &slug).await?;
                if as_json {
                    json(&report)?;
                } else {
                    println!(
                        "rolled back tenant '{}' ({}): database, role, key, {} object(s) and catalog rows removed",
                        report.slug, report.id, report.objects_deleted
                    );
                }
                return Ok(());
            }
            let domains = domains
                .iter()
                .map(|d| Hostname::parse(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(PlatformError::from)?;
            let db_server = db_server
                .map(|n| DbServerName::parse(&n))
                .transpose()
                .map_err(PlatformError::from)?;
            let p = platform(true).await?;
            let t = tenants::create(
                &p,
                CreateTenant {
                    slug,
                    display_name: name,
                    domains,
                    db_server,
                },
            )
            .await?;
            if as_json {
                json(&t)?;
            } else {
                println!("created tenant '{}' ({})", t.slug, t.id);
                print_tenant(&t);
            }
        }
        TenantCmd::List { json: as_json } => {
            let p = platform(true).await?;
            let all = tenants::list(&p).await?;
            if as_json {
                json(&all)?;
            } else {
                print_tenant_table(&all);
            }
        }
        TenantCmd::Show {
            slug: s,
            json: as_json,
        } => {
            let p = platform(true).await?;
            let t = tenants::show(&p, slug(&s)?.as_str()).await?;
            if as_json {
                json(&t)?;
            } else {
                print_tenant(&t);
            }
        }
        TenantCmd::Suspend {
            slug: s,
            json: as_json,
        } => {
            let p = platform(true).await?;
            print_status(&tenants::suspend(&p, slug(&s)?.as_str()).await?, as_json)?;
        }
        TenantCmd::Resume {
            slug: s,
            json: as_json,
        } => {
            let p = platform(true).await?;
            print_status(&tenants::resume(&p, slug(&s)?.as_str()).await?, as_json)?;
        }
    }
    Ok(())
}

fn print_status(t: &TenantView, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        json(t)
    } else {
        println!("tenant '{}' is {}", t.slug, t.status);
        Ok(())
    }
}

fn primary_domain(t: &TenantView) -> &str {
    t.domains
        .iter()
        .find(|d| d.is_primary)
        .map_or("-", |d| d.hostname.as_str())
}

pub(crate) fn print_tenant_table(all: &[TenantView]) {
    if all.is_empty() {
        println!("no tenants");
        return;
    }
    let rows: Vec<[String; 6]> = all
        .iter()
        .map(|t| {
            [
                t.slug.clone(),
                t.status.clone(),
                primary_domain(t).to_owned(),
                t.placement
                    .as_ref()
                    .map_or("-".into(), |p| p.db_server.clone()),
                t.schema_version.map_or("-".into(), |v| v.to_string()),
                t.id.to_string(),
            ]
        })
        .collect();
    print_table(
        &["SLUG", "STATUS", "DOMAIN", "DB SERVER", "SCHEMA", "ID"],
        &rows,
    );
}

fn print_server_table(all: &[DbServerView]) {
    if all.is_empty() {
        println!("no database servers registered (tenants go to the control-plane server)");
        return;
    }
    let rows: Vec<[String; 4]> = all
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.url.clone(),
                s.max_connections.to_string(),
                s.tenants.to_string(),
            ]
        })
        .collect();
    print_table(&["NAME", "URL", "MAX CONNECTIONS", "TENANTS"], &rows);
}

fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(crate) fn print_tenant(t: &TenantView) {
    println!("tenant {}", t.slug);
    println!("  id:             {}", t.id);
    println!("  name:           {}", t.display_name);
    println!("  status:         {}", t.status);
    for d in &t.domains {
        let mut notes = vec![d.kind.as_str()];
        if d.is_primary {
            notes.push("primary");
        }
        if !d.verified {
            notes.push("unverified");
        }
        println!("  domain:         {} ({})", d.hostname, notes.join(", "));
    }
    if let Some(p) = &t.placement {
        println!("  db server:      {}", p.db_server);
        println!("  database:       {}", p.database);
        println!("  role:           {}", p.role);
    }
    println!("  storage prefix: {}", t.storage_prefix);
    println!("  key:            {}", t.key_id.as_deref().unwrap_or("-"));
    println!(
        "  schema version: {}",
        t.schema_version.map_or("-".into(), |v| v.to_string())
    );
    if let Some(run) = t.provisioning.as_ref().filter(|r| r.status != "succeeded") {
        {
            println!("  provisioning:   {} (run {})", run.status, run.run_id);
            for s in &run.steps {
                println!(
                    "    {:<9} {:<8} attempts {}{}",
                    s.step,
                    s.state,
                    s.attempts,
                    s.error
                        .as_deref()
                        .map(|e| format!("  {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
}
