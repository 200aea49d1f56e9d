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
    /// Serve the tenant runtime and the operator API over HTTP until SIGTERM or Ctrl-C.
    Serve {
        /// Listen address (default: PORTICO_LISTEN, else 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Metrics listen address, or `off` (default: PORTICO_METRICS_LISTEN, else 127.0.0.1:9464).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Serve only tenant hosts or only the operator host.
        #[arg(long, value_enum, default_value = "all")]
        only: crate::serve::ServeRole,
        /// Apply the control-plane migrations first (otherwise the catalog must already be
        /// at this release or the next: see `portico migrate`).
        #[arg(long)]
        migrate: bool,
    },
    /// Operators of the control plane: API tokens and the audit trail.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Tenants' tamper-evident audit logs: verify, export, anchor.
    #[command(subcommand)]
    Audit(crate::audit_cli::AuditCmd),
    /// Every tenant at once: schema migrations in waves, their ledger, feature rollouts.
    #[command(subcommand)]
    Fleet(crate::fleet_cli::FleetCmd),
    /// Deletion certificates: verify one offline.
    #[command(subcommand)]
    Certificate(crate::deletion_cli::CertificateCmd),
    /// Tenant exports: verify one offline; the platform's signing key.
    #[command(subcommand)]
    Export(crate::deletion_cli::ExportCmd),
}

#[derive(Subcommand)]
enum OperatorCmd {
    /// Operator API tokens.
    #[command(subcommand)]
    Token(OperatorTokenCmd),
    /// Requests waiting for a second operator (tenant deletions): list, approve, reject.
    #[command(subcommand)]
    Approvals(crate::deletion_cli::ApprovalsCmd),
    /// The newest operator audit entries.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OperatorTokenCmd {
    /// Create a token (printed once; only its hash is stored).
    Create {
        name: String,
        /// Lifetime, e.g. 30d or 12h (default: no expiry).
        #[arg(long)]
        expires_in: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke the active token with this name.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum TenantTokenCmd {
    /// Create an API token of a tenant (printed once; only its hash is stored, in the
    /// tenant's own database).
    Create {
        slug: String,
        #[arg(long)]
        name: String,
        /// A built-in (admin, member, accounting, technician) or custom role of the tenant.
        #[arg(long, default_value = "member")]
        role: String,
        /// Act for this user (by e-mail): the token has the user's role and sites, and stops
        /// working when the user is deactivated.
        #[arg(long)]
        user: Option<String>,
        /// Limit the token to this site (repeatable; default: every site).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Lifetime, e.g. 30d or 12h (default: no expiry).
        #[arg(long)]
        expires_in: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a tenant's API tokens (never their secrets).
    List {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a tenant's active token with this name.
    Revoke { slug: String, name: String },
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
        /// PEM file of the CA the server's certificate must chain to: every connection to the
        /// server then uses TLS, verifying the certificate and the URL's host name.
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
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
        /// `dedicated` (a database and login role of its own) or `pooled` (a schema in a
        /// shared database); default: the `default_tier` setting.
        #[arg(long, conflicts_with = "rollback")]
        tier: Option<String>,
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
    /// A tenant's API tokens.
    #[command(subcommand)]
    Token(TenantTokenCmd),
    /// A tenant's SSO connections and claimed e-mail domains.
    #[command(subcommand)]
    Sso(crate::identity_cli::SsoCmd),
    /// A tenant's users, invitations and sign-in events.
    #[command(subcommand)]
    User(crate::identity_cli::UserCmd),
    /// Bring a tenant's database to this binary's tenant schema (recorded as a run).
    Migrate {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a tenant online to another tier or server (or finish an interrupted move of it);
    /// --rollback undoes a move that has not switched yet.
    Move {
        slug: String,
        /// `dedicated` or `pooled` (default: the tenant's tier).
        #[arg(long, conflicts_with = "rollback")]
        to_tier: Option<String>,
        /// The database server to move to (default: the tenant's).
        #[arg(long, conflicts_with = "rollback")]
        to_server: Option<String>,
        /// Undo the tenant's unfinished move.
        #[arg(long)]
        rollback: bool,
        #[arg(long)]
        json: bool,
    },
    /// Mark a tenant as a canary (migrated in the first wave of every fleet run), or not.
    Canary {
        slug: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// A tenant's feature flags.
    #[command(subcommand)]
    Feature(crate::fleet_cli::TenantFeatureCmd),
    /// Ask for a tenant's deletion (acting as the operator whose token is in
    /// PORTICO_OPERATOR_TOKEN); another operator must approve it. Refused while documents are
    /// under retention or legal hold, unless --override-retention says why.
    Delete {
        slug: String,
        #[arg(long)]
        reason: String,
        /// Grace period in days before the purge (at least the deletion_grace setting).
        #[arg(long)]
        grace_days: Option<u32>,
        /// Delete although documents are under retention or legal hold, for this reason
        /// (shown to the approver).
        #[arg(long)]
        override_retention: Option<String>,
        /// Export the tenant to this age recipient (age1…) before the purge; the certificate
        /// names the export's manifest hash. Also allows deleting retained documents.
        #[arg(long)]
        export_first: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Bring back a tenant approved for deletion, during its grace period.
    Restore {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Purge every tenant whose grace period is over, and finish interrupted purges (for
    /// cron; `portico serve` does it too).
    PurgeDue {
        #[arg(long)]
        json: bool,
    },
    /// Export a tenant: one snapshot of its tables and every document version's content, in
    /// an archive encrypted to an age recipient, with a signed manifest.
    Export {
        slug: String,
        /// The archive to write (must not exist; written as FILE.partial until complete).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The age X25519 recipient (age1…) the archive is encrypted to.
        #[arg(long, conflicts_with = "plaintext")]
        recipient: Option<String>,
        /// Write the archive unencrypted (must be asked for).
        #[arg(long)]
        plaintext: bool,
        /// Replace personal data by consistent pseudonyms and leave out credentials,
        /// sessions, tokens and the audit log: for test environments.
        #[arg(long)]
        anonymize: bool,
        #[arg(long)]
        json: bool,
    },
    /// Import an export as a new tenant (or finish an interrupted import of it); the
    /// archive is verified first. `tenant create --rollback NEW` undoes an unfinished import.
    Import {
        file: std::path::PathBuf,
        /// The new tenant's slug.
        #[arg(long)]
        slug: String,
        /// The recipient's age identity file, for an encrypted archive.
        #[arg(long)]
        identity: Option<std::path::PathBuf>,
        /// The key the manifest must be signed by (default: the key the archive names).
        #[arg(long)]
        public_key: Option<String>,
        /// Display name (default: the exported tenant's).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        #[arg(long)]
        db_server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print (or write) a purged tenant's signed deletion certificate.
    Certificate {
        slug: String,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// Entry point of the `portico` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Serve { .. }));
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

/// Commands log errors only; `serve` logs requests (`info`), as JSON unless stderr is a
/// terminal. `PORTICO_LOG` overrides the filter.
fn init_tracing(serving: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info" } else { "error" };
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if serving && !std::io::stderr().is_terminal() {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// `30d`, `12h`, `90m`… as an expiry instant from now.
fn expiry(expires_in: Option<&str>) -> Result<Option<time::OffsetDateTime>, PlatformError> {
    let Some(s) = expires_in else { return Ok(None) };
    let d = humantime::parse_duration(s)
        .ok()
        .filter(|d| !d.is_zero())
        .and_then(|d| time::Duration::try_from(d).ok())
        .ok_or_else(|| {
            PlatformError::InvalidInput(format!(
                "--expires-in '{s}' is not a positive duration (for example 30d or 12h)"
            ))
        })?;
    time::OffsetDateTime::now_utc()
        .checked_add(d)
        .map(Some)
        .ok_or_else(|| PlatformError::InvalidInput(format!("--expires-in '{s}' is too far away")))
}

fn print_secret(what: &str, secret: &secrecy::SecretString) {
    use secrecy::ExposeSecret;
    println!("{what}; it is shown only this once:");
    println!("{}", secret.expose_secret());
}

async fn platform(migrate: bool) -> anyhow::Result<Platform> {
    let settings = Settings::load().map_err(PlatformError::from)?;
    Ok(Platform::connect(settings, migrate).await?)
}

pub(crate) fn slug(s: &str) -> Result<Slug, PlatformError> {
    Ok(Slug::parse(s)?)
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
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
            ca_file,
        }) => {
            let name = DbServerName::parse(&name).map_err(PlatformError::from)?;
            let ca = ca_file
                .map(|path| {
                    std::fs::read_to_string(&path).map_err(|e| {
                        PlatformError::InvalidInput(format!(
                            "cannot read --ca-file {}: {e}",
                            path.display()
                        ))
                    })
                })
                .transpose()?;
            let p = platform(false).await?;
            let (s, info) =
                db_servers::add_with_ca(&p, &name, &url, max_connections, ca.as_deref()).await?;
            println!(
                "registered database server '{}' ({}, PostgreSQL {}, budget {} connections{})",
                s.name,
                s.url,
                info.version,
                s.max_connections,
                if s.tls { ", TLS" } else { "" }
            );
        }
        Command::DbServer(DbServerCmd::List { json: as_json }) => {
            let p = platform(false).await?;
            let servers = db_servers::list(&p).await?;
            if as_json {
                json(&servers)?;
            } else {
                print_server_table(&servers);
            }
        }
        Command::Tenant(cmd) => tenant(cmd).await?,
        Command::Serve {
            listen,
            metrics_listen,
            only,
            migrate,
        } => serve(listen, metrics_listen, only, migrate).await?,
        Command::Operator(cmd) => operator(cmd).await?,
        Command::Fleet(cmd) => crate::fleet_cli::run(&platform(false).await?, cmd).await?,
        Command::Certificate(cmd) => crate::deletion_cli::verify_certificate(cmd)?,
        Command::Export(crate::deletion_cli::ExportCmd::PublicKey) => {
            crate::deletion_cli::public_key(&platform(false).await?).await?
        }
        Command::Export(crate::deletion_cli::ExportCmd::Verify {
            file,
            identity,
            public_key,
            json: as_json,
        }) => {
            if !crate::deletion_cli::verify_export(file, identity, public_key, as_json)? {
                // The problems are printed; a broken archive is the command's answer.
                std::process::exit(1);
            }
        }
        Command::Audit(cmd) => {
            let p = platform(false).await?;
            if !crate::audit_cli::run(&p, cmd).await? {
                // The report is printed; a broken chain is the command's answer, not a crash.
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

async fn serve(
    listen: Option<std::net::SocketAddr>,
    metrics_listen: Option<String>,
    only: crate::serve::ServeRole,
    migrate: bool,
) -> anyhow::Result<()> {
    use crate::serve::{Application, ServeOptions};
    let mut settings = Settings::load().map_err(PlatformError::from)?;
    if let Some(addr) = listen {
        settings.runtime.listen = addr;
    }
    if let Some(m) = metrics_listen {
        settings.runtime.metrics_listen = match m.as_str() {
            "off" => None,
            s => Some(s.parse().map_err(|_| {
                PlatformError::InvalidInput(format!(
                    "--metrics-listen '{s}' is not an address like 127.0.0.1:9464 (or off)"
                ))
            })?),
        };
    }
    let app = Application::build(
        settings,
        ServeOptions {
            role: only,
            migrate,
        },
    )
    .await?;
    println!("listening on http://{}", app.local_addr()?);
    if let Some(m) = app.metrics_addr() {
        println!("metrics on http://{m}/metrics");
    }
    app.run_until_stopped(async {
        crate::demo::shutdown_signal().await;
        eprintln!("shutting down: draining in-flight requests");
    })
    .await?;
    eprintln!("stopped");
    Ok(())
}

async fn operator(cmd: OperatorCmd) -> anyhow::Result<()> {
    match cmd {
        OperatorCmd::Approvals(cmd) => {
            crate::deletion_cli::approvals(&platform(false).await?, cmd).await?
        }
        OperatorCmd::Token(OperatorTokenCmd::Create {
            name,
            expires_in,
            json: as_json,
        }) => {
            let expires_at = expiry(expires_in.as_deref())?;
            let p = platform(false).await?;
            let (token, secret) = p.catalog.create_operator_token(&name, expires_at).await?;
            if as_json {
                use secrecy::ExposeSecret;
                let mut v = serde_json::to_value(&token)?;
                v["token"] = secret.expose_secret().into();
                json(&v)?;
            } else {
                print_secret(&format!("created operator token '{}'", token.name), &secret);
            }
        }
        OperatorCmd::Token(OperatorTokenCmd::List { json: as_json }) => {
            let p = platform(false).await?;
            let all = p.catalog.list_operator_tokens().await?;
            if as_json {
                json(&all)?;
            } else {
                print_token_table(all.iter().map(|t| {
                    (
                        t.name.as_str(),
                        "operator",
                        t.created_at,
                        t.expires_at,
                        t.revoked_at,
                    )
                }));
            }
        }
        OperatorCmd::Token(OperatorTokenCmd::Revoke { name }) => {
            let p = platform(false).await?;
            let t = p.catalog.revoke_operator_token(&name).await?;
            println!("revoked operator token '{}'", t.name);
        }
        OperatorCmd::Audit {
            limit,
            json: as_json,
        } => {
            let p = platform(false).await?;
            let entries = p.catalog.audit_entries(i64::from(limit)).await?;
            if as_json {
                json(&entries)?;
            } else {
                for e in entries {
                    println!(
                        "{}  {:<10} {:<16} {:<24} {:<9} {:<15} {}",
                        e.at.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        e.actor,
                        e.action,
                        e.target.as_deref().unwrap_or("-"),
                        e.outcome,
                        e.client_ip.as_deref().unwrap_or("-"),
                        e.request_id
                    );
                }
            }
        }
    }
    Ok(())
}

async fn tenant_token(cmd: TenantTokenCmd) -> anyhow::Result<()> {
    use portico_tenant_runtime::store::audit::EventType;
    use portico_tenant_runtime::store::tokens;
    match cmd {
        TenantTokenCmd::Create {
            slug: s,
            name,
            role,
            user,
            sites,
            expires_in,
            json: as_json,
        } => {
            let slug = slug(&s)?;
            let role = crate::identity_cli::role(&role)?;
            let expires_at = expiry(expires_in.as_deref())?;
            let p = platform(false).await?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let user_id = match &user {
                None => None,
                Some(email) => {
                    let found: Vec<_> = portico_tenant_runtime::store::users::list(&client)
                        .await
                        .map_err(PlatformError::from)?
                        .into_iter()
                        .filter(|u| u.active && u.email.eq_ignore_ascii_case(email))
                        .collect();
                    match found.as_slice() {
                        [u] => Some(u.id),
                        [] => {
                            return Err(PlatformError::InvalidInput(format!(
                                "tenant '{slug}' has no active user '{email}'"
                            ))
                            .into());
                        }
                        _ => {
                            return Err(PlatformError::InvalidInput(format!(
                                "several users of tenant '{slug}' have the e-mail '{email}'"
                            ))
                            .into());
                        }
                    }
                }
            };
            let sites = (!sites.is_empty()).then_some(sites);
            let (token, secret) =
                tokens::create_scoped(&client, &name, role, expires_at, user_id, sites)
                    .await
                    .map_err(PlatformError::from)?;
            token_event(
                &client,
                EventType::TokenCreated,
                &token.name,
                token.role.as_str(),
            )
            .await?;
            if as_json {
                use secrecy::ExposeSecret;
                let mut v = serde_json::to_value(&token)?;
                v["token"] = secret.expose_secret().into();
                json(&v)?;
            } else {
                print_secret(
                    &format!(
                        "created {} token '{}' of tenant '{slug}'",
                        token.role.as_str(),
                        token.name
                    ),
                    &secret,
                );
            }
        }
        TenantTokenCmd::List {
            slug: s,
            json: as_json,
        } => {
            let slug = slug(&s)?;
            let p = platform(false).await?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let all = tokens::list(&client).await.map_err(PlatformError::from)?;
            if as_json {
                json(&all)?;
            } else {
                print_token_table(all.iter().map(|t| {
                    (
                        t.name.as_str(),
                        t.role.as_str(),
                        t.created_at,
                        t.expires_at,
                        t.revoked_at,
                    )
                }));
            }
        }
        TenantTokenCmd::Revoke { slug: s, name } => {
            let slug = slug(&s)?;
            let p = platform(false).await?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let t = tokens::revoke(&client, &name)
                .await
                .map_err(PlatformError::from)?;
            token_event(&client, EventType::TokenRevoked, &t.name, t.role.as_str()).await?;
            println!("revoked token '{}' of tenant '{slug}'", t.name);
        }
    }
    Ok(())
}

/// Records a token change in the tenant's audit log (the CLI is the actor).
async fn token_event(
    client: &portico_tenant_runtime::pools::TenantConn,
    event_type: portico_tenant_runtime::store::audit::EventType,
    name: &str,
    role: &str,
) -> anyhow::Result<()> {
    use portico_tenant_runtime::store::audit;
    let mut e = audit::Event::new(event_type, "cli", true);
    e.target = Some(name);
    e.details = serde_json::json!({ "role": role });
    audit::record(client, &e)
        .await
        .map_err(PlatformError::from)?;
    Ok(())
}

type TokenLine<'a> = (
    &'a str,
    &'a str,
    time::OffsetDateTime,
    Option<time::OffsetDateTime>,
    Option<time::OffsetDateTime>,
);

fn print_token_table<'a>(tokens: impl Iterator<Item = TokenLine<'a>>) {
    let when = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<[String; 5]> = tokens
        .map(|(name, role, created, expires, revoked)| {
            [
                name.to_owned(),
                role.to_owned(),
                when(Some(created)),
                when(expires),
                when(revoked),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no tokens");
        return;
    }
    print_table(&["NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"], &rows);
}

async fn tenant(cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create {
            slug: s,
            name,
            domains,
            db_server,
            tier,
            rollback,
            json: as_json,
        } => {
            let slug = slug(&s)?;
            let tier = tier
                .map(|t| t.parse::<crate::catalog::Tier>())
                .transpose()
                .map_err(PlatformError::InvalidInput)?;
            if rollback {
                let p = platform(false).await?;
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
            let p = platform(false).await?;
            let t = tenants::create(
                &p,
                CreateTenant {
                    slug,
                    display_name: name,
                    domains,
                    db_server,
                    tier,
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
            let p = platform(false).await?;
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
            let p = platform(false).await?;
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
            let p = platform(false).await?;
            print_status(&tenants::suspend(&p, slug(&s)?.as_str()).await?, as_json)?;
        }
        TenantCmd::Resume {
            slug: s,
            json: as_json,
        } => {
            let p = platform(false).await?;
            print_status(&tenants::resume(&p, slug(&s)?.as_str()).await?, as_json)?;
        }
        TenantCmd::Token(cmd) => tenant_token(cmd).await?,
        TenantCmd::Sso(cmd) => crate::identity_cli::sso(&platform(false).await?, cmd).await?,
        TenantCmd::User(cmd) => crate::identity_cli::user(&platform(false).await?, cmd).await?,
        TenantCmd::Migrate { slug, json } => {
            crate::fleet_cli::tenant_migrate(&platform(false).await?, &slug, json).await?
        }
        TenantCmd::Move {
            slug: s,
            to_tier,
            to_server,
            rollback,
            json: as_json,
        } => {
            let slug = slug(&s)?;
            let p = platform(false).await?;
            let view = if rollback {
                crate::moves::rollback_move(&p, &slug).await?
            } else {
                let to_tier = to_tier
                    .map(|t| t.parse::<crate::catalog::Tier>())
                    .transpose()
                    .map_err(PlatformError::InvalidInput)?;
                let to_server = to_server
                    .map(|n| DbServerName::parse(&n))
                    .transpose()
                    .map_err(PlatformError::from)?;
                crate::moves::move_tenant(
                    &p,
                    crate::moves::MoveTenant {
                        slug,
                        to_tier,
                        to_server,
                    },
                )
                .await?
            };
            if as_json {
                json(&view)?;
            } else if view.status == "rolled_back" {
                println!(
                    "undid the move of '{}': it stays {} on '{}'",
                    view.slug, view.from.tier, view.from.db_server
                );
            } else {
                println!(
                    "moved '{}' from {} on '{}' to {} on '{}': {} rows copied and verified, writes frozen for {} ms",
                    view.slug,
                    view.from.tier,
                    view.from.db_server,
                    view.to.tier,
                    view.to.db_server,
                    view.rows_copied.unwrap_or(0),
                    view.write_freeze_ms.unwrap_or(0)
                );
            }
        }
        TenantCmd::Canary { slug, state } => {
            crate::fleet_cli::tenant_canary(&platform(false).await?, &slug, state == "on").await?
        }
        TenantCmd::Feature(cmd) => {
            crate::fleet_cli::tenant_feature(&platform(false).await?, cmd).await?
        }
        TenantCmd::Delete {
            slug,
            reason,
            grace_days,
            override_retention,
            export_first,
            json: as_json,
        } => {
            let req = crate::deletion::DeletionRequest {
                reason,
                grace_days,
                override_retention,
                export_first,
            };
            crate::deletion_cli::delete(&platform(false).await?, &slug, req, as_json).await?
        }
        TenantCmd::Restore {
            slug,
            json: as_json,
        } => crate::deletion_cli::restore(&platform(false).await?, &slug, as_json).await?,
        TenantCmd::PurgeDue { json: as_json } => {
            crate::deletion_cli::purge_due(&platform(false).await?, as_json).await?
        }
        TenantCmd::Export {
            slug,
            out,
            recipient,
            plaintext,
            anonymize,
            json: as_json,
        } => {
            if recipient.is_none() && !plaintext {
                return Err(PlatformError::InvalidInput(
                    "an export is encrypted: give --recipient age1… (or say --plaintext to write it unencrypted)".into(),
                )
                .into());
            }
            crate::deletion_cli::export(
                &platform(false).await?,
                &slug,
                out,
                recipient,
                anonymize,
                as_json,
            )
            .await?
        }
        TenantCmd::Import {
            file,
            slug: s,
            identity,
            public_key,
            name,
            tier,
            db_server,
            json: as_json,
        } => {
            let req = crate::import::ImportRequest {
                file,
                identities: identity
                    .as_deref()
                    .map(crate::export::read_identities)
                    .transpose()?
                    .unwrap_or_default(),
                public_key: public_key
                    .as_deref()
                    .map(portico_core::signing::PublicKey::parse)
                    .transpose()
                    .map_err(|e| PlatformError::InvalidInput(format!("--public-key: {e}")))?,
                slug: slug(&s)?,
                display_name: name,
                tier: tier
                    .map(|t| t.parse::<crate::catalog::Tier>())
                    .transpose()
                    .map_err(PlatformError::InvalidInput)?,
                db_server: db_server
                    .map(|n| DbServerName::parse(&n))
                    .transpose()
                    .map_err(PlatformError::from)?,
            };
            let p = platform(false).await?;
            let r = Box::pin(crate::import::import(&p, req)).await?;
            if as_json {
                json(&r)?;
            } else {
                println!(
                    "imported '{}' (exported from '{}', {}) as tenant '{}': {} rows, {} document versions; signed by {}",
                    r.source_slug,
                    r.source_slug,
                    r.source_tenant_id,
                    r.tenant.slug,
                    r.rows,
                    r.documents,
                    r.signed_by
                );
            }
        }
        TenantCmd::Certificate { slug, out } => {
            crate::deletion_cli::certificate(&platform(false).await?, &slug, out).await?
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
    if let Some(m) = &t.open_move {
        println!(
            "  move:           {} (run {}){}; `portico tenant move {}` finishes it, `--rollback` undoes it",
            m.status,
            m.run_id,
            if t.write_frozen {
                ", writes frozen"
            } else {
                ""
            },
            t.slug
        );
    }
    if let Some(d) = &t.deletion {
        let text = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
        println!(
            "  deletion:       {} (asked by {}, approved by {}; restorable until {})",
            text("status"),
            text("requested_by"),
            text("approved_by"),
            text("grace_until")
        );
    }
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
