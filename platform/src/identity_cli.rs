//! `portico tenant sso …` and `portico tenant user …`: a tenant's SSO connections, claimed
//! e-mail domains, users and invitations. Connections are stored in the tenant's own database,
//! through the same validation as the tenant admin API.

use clap::Subcommand;
use portico_core::Slug;
use portico_tenant_runtime::identity::admin::{self, NewConnection};
use portico_tenant_runtime::identity::fetch::Fetcher;
use portico_tenant_runtime::store::connections::{self, Protocol};
use portico_tenant_runtime::store::roles::RoleName;
use portico_tenant_runtime::store::{audit, users};
use secrecy::{ExposeSecret, SecretString};

use crate::cli::slug;
use crate::context::Platform;
use crate::error::PlatformError;

#[derive(Subcommand)]
pub enum SsoCmd {
    /// Add a SAML 2.0 connection. The IdP metadata must carry a signing certificate.
    AddSaml {
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(
            long,
            conflicts_with = "metadata_url",
            required_unless_present = "metadata_url"
        )]
        metadata_file: Option<std::path::PathBuf>,
        /// Fetched over HTTPS (size and time limited; never private addresses).
        #[arg(long)]
        metadata_url: Option<String>,
        /// Accept unsolicited (IdP-initiated) responses.
        #[arg(long)]
        allow_idp_initiated: bool,
        #[arg(long, default_value = "member", value_parser = ["admin", "member"])]
        default_role: String,
        /// GROUP=ROLE: users in GROUP (attribute `--group-attribute`) get ROLE.
        #[arg(long)]
        map_group: Vec<String>,
        #[arg(long, default_value = "groups")]
        group_attribute: String,
        /// The IdP verifies the e-mail addresses it asserts: use them as users' addresses
        /// (otherwise a SAML e-mail attribute is not used).
        #[arg(long)]
        email_authoritative: bool,
    },
    /// Add an OpenID Connect connection (discovery must answer with exactly this issuer).
    AddOidc {
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// A file holding the client secret (stored encrypted under the tenant's key).
        #[arg(long)]
        client_secret_file: std::path::PathBuf,
        #[arg(long, default_value = "member", value_parser = ["admin", "member"])]
        default_role: String,
        /// CLAIM:VALUE=ROLE (or VALUE=ROLE for the `groups` claim).
        #[arg(long)]
        map_claim: Vec<String>,
    },
    /// List a tenant's connections.
    List {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one connection, with the URLs to give the IdP.
    Show { slug: String, name: String },
    /// Remove a connection (its users' identities and sessions go with it).
    Remove { slug: String, name: String },
    /// Claim an e-mail domain for a connection (home-realm discovery on the login host).
    ClaimDomain {
        slug: String,
        connection: String,
        domain: String,
    },
    /// Release a claimed e-mail domain.
    UnclaimDomain { slug: String, domain: String },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Invite someone to a local account: prints a single-use link (valid 7 days).
    Invite {
        slug: String,
        email: String,
        #[arg(long, default_value = "member", value_parser = ["admin", "member"])]
        role: String,
        /// Limit the invited user to this site (repeatable; default: every site).
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// List a tenant's users.
    List {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Deactivate a user (by e-mail, or by user id for users without one): sign-in is refused
    /// and their sessions end at once.
    Deactivate {
        slug: String,
        /// The user's e-mail, or their id.
        #[arg(value_name = "EMAIL_OR_ID")]
        email: String,
    },
    /// A tenant's latest sign-in and security events.
    Events {
        slug: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn role(s: &str) -> Result<RoleName, PlatformError> {
    RoleName::parse(s).ok_or_else(|| PlatformError::InvalidInput(format!("unknown role '{s}'")))
}

fn read_file(path: &std::path::Path, what: &str) -> Result<String, PlatformError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        PlatformError::InvalidInput(format!("cannot read {what} {}: {e}", path.display()))
    })?;
    if meta.len() > 1 << 20 {
        return Err(PlatformError::InvalidInput(format!(
            "{what} {} is larger than 1 MiB",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| {
        PlatformError::InvalidInput(format!("cannot read {what} {}: {e}", path.display()))
    })
}

fn tenant_origin(p: &Platform, slug: &Slug) -> String {
    let host = p.settings.base_domain.tenant_subdomain(slug);
    p.settings.runtime.public_origin(host.as_str())
}

pub async fn sso(p: &Platform, cmd: SsoCmd) -> anyhow::Result<()> {
    let fetcher = Fetcher::new(p.settings.runtime.sso_allow_loopback);
    match cmd {
        SsoCmd::AddSaml {
            slug: s,
            name,
            metadata_file,
            metadata_url,
            allow_idp_initiated,
            default_role,
            map_group,
            group_attribute,
            email_authoritative,
        } => {
            let slug = slug(&s)?;
            let metadata_xml = metadata_file
                .map(|f| read_file(&f, "metadata file"))
                .transpose()?;
            let new = NewConnection::Saml {
                name,
                metadata_xml,
                metadata_url,
                allow_idp_initiated,
                default_role: Some(role(&default_role)?),
                map_group,
                group_attribute: Some(group_attribute),
                email_authoritative,
            };
            add(p, &slug, &fetcher, new).await
        }
        SsoCmd::AddOidc {
            slug: s,
            name,
            issuer,
            client_id,
            client_secret_file,
            default_role,
            map_claim,
        } => {
            let slug = slug(&s)?;
            let secret = read_file(&client_secret_file, "client secret file")?;
            let new = NewConnection::Oidc {
                name,
                issuer,
                client_id,
                client_secret: SecretString::from(secret.trim().to_owned()),
                default_role: Some(role(&default_role)?),
                map_claim,
            };
            add(p, &slug, &fetcher, new).await
        }
        SsoCmd::List { slug: s, json } => {
            let slug = slug(&s)?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let all = connections::list(&client)
                .await
                .map_err(PlatformError::from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("tenant '{slug}' has no SSO connections");
            } else {
                for c in all {
                    let detail = match &c.protocol {
                        Protocol::Saml(s) => s.idp_entity_id.clone(),
                        Protocol::Oidc(o) => o.issuer.clone(),
                    };
                    println!(
                        "{:<20} {:<5} {:<7} {detail}",
                        c.name,
                        c.protocol.kind(),
                        c.default_role.as_str()
                    );
                }
            }
            Ok(())
        }
        SsoCmd::Show { slug: s, name } => {
            let slug = slug(&s)?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let c = connections::by_name(&client, &name)
                .await
                .map_err(PlatformError::from)?
                .ok_or_else(|| {
                    PlatformError::InvalidInput(format!(
                        "tenant '{slug}' has no connection '{name}'"
                    ))
                })?;
            let origin = tenant_origin(p, &slug);
            let mut v = serde_json::to_value(&c)?;
            if let Some(cfg) = v.get_mut("protocol").and_then(|p| p.as_object_mut()) {
                cfg.remove("metadata_xml");
            }
            v["sign_in_url"] = format!("{origin}/sso/{name}/start").into();
            match c.protocol {
                Protocol::Saml(_) => {
                    v["sp_entity_id"] = format!("{origin}/sso/saml/{name}/metadata").into();
                    v["acs_url"] = format!("{origin}/sso/saml/{name}/acs").into();
                }
                Protocol::Oidc(_) => {
                    v["redirect_uri"] = format!("{origin}/sso/oidc/{name}/callback").into();
                }
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        SsoCmd::Remove { slug: s, name } => {
            let slug = slug(&s)?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            connections::remove(&client, &name)
                .await
                .map_err(PlatformError::from)?;
            record(
                &client,
                audit::EventType::SsoConnectionChanged,
                &name,
                "removed",
            )
            .await?;
            println!("removed SSO connection '{name}' of tenant '{slug}'");
            Ok(())
        }
        SsoCmd::ClaimDomain {
            slug: s,
            connection,
            domain,
        } => {
            let slug = slug(&s)?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            if connections::by_name(&client, &connection)
                .await
                .map_err(PlatformError::from)?
                .is_none()
            {
                return Err(PlatformError::InvalidInput(format!(
                    "tenant '{slug}' has no connection '{connection}'"
                ))
                .into());
            }
            p.claim_domain(slug.as_str(), &connection, &domain).await?;
            println!("'{domain}' now signs in through '{connection}' of tenant '{slug}'");
            Ok(())
        }
        SsoCmd::UnclaimDomain { slug: s, domain } => {
            let slug = slug(&s)?;
            p.unclaim_domain(slug.as_str(), &domain).await?;
            println!("released '{domain}' of tenant '{slug}'");
            Ok(())
        }
    }
}

async fn add(
    p: &Platform,
    slug: &Slug,
    fetcher: &Fetcher,
    new: NewConnection,
) -> anyhow::Result<()> {
    let client = p.connect_as_tenant(slug.as_str()).await?;
    let (tenant, key) = p.tenant_key(slug.as_str()).await?;
    let c = admin::create(&client, &p.keyring, tenant, &key, fetcher, new)
        .await
        .map_err(PlatformError::from)?;
    record(
        &client,
        audit::EventType::SsoConnectionChanged,
        &c.name,
        "created",
    )
    .await?;
    let origin = tenant_origin(p, slug);
    println!(
        "added {} connection '{}' to tenant '{slug}'",
        c.protocol.kind(),
        c.name
    );
    match c.protocol {
        Protocol::Saml(_) => {
            println!("SP metadata: {origin}/sso/saml/{}/metadata", c.name);
            println!("ACS URL:     {origin}/sso/saml/{}/acs", c.name);
        }
        Protocol::Oidc(_) => {
            println!("redirect URI: {origin}/sso/oidc/{}/callback", c.name);
        }
    }
    Ok(())
}

async fn record(
    client: &portico_tenant_runtime::pools::TenantConn,
    event: audit::EventType,
    target: &str,
    change: &str,
) -> anyhow::Result<()> {
    let mut e = audit::Event::new(event, "cli", true);
    e.target = Some(target);
    e.details = serde_json::json!({ "change": change });
    audit::record(client, &e)
        .await
        .map_err(PlatformError::from)?;
    Ok(())
}

pub async fn user(p: &Platform, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Invite {
            slug: s,
            email,
            role: r,
            sites,
        } => {
            let slug = slug(&s)?;
            let role = role(&r)?;
            let sites = (!sites.is_empty()).then_some(sites);
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let (inv, token) = users::invite(&client, &email, role.clone(), sites.as_deref())
                .await
                .map_err(PlatformError::from)?;
            record(
                &client,
                audit::EventType::UserInvited,
                &inv.email,
                role.as_str(),
            )
            .await?;
            println!(
                "invited {} ({}) to tenant '{slug}'; the link is valid until {} and works once:",
                inv.email,
                role.as_str(),
                inv.expires_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            );
            println!(
                "{}/invite/{}",
                tenant_origin(p, &slug),
                token.expose_secret()
            );
            Ok(())
        }
        UserCmd::List { slug: s, json } => {
            let slug = slug(&s)?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let all = users::list(&client).await.map_err(PlatformError::from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for u in all {
                    println!(
                        "{:<40} {:<7} {}",
                        u.email,
                        u.role.as_str(),
                        if u.active { "active" } else { "deactivated" }
                    );
                }
            }
            Ok(())
        }
        UserCmd::Deactivate { slug: s, email } => {
            let slug = slug(&s)?;
            let mut client = p.connect_as_tenant(slug.as_str()).await?;
            let done = match portico_tenant_runtime::ids::UserId::parse(&email) {
                Some(id) => vec![
                    users::deactivate_id(&mut client, id)
                        .await
                        .map_err(PlatformError::from)?,
                ],
                None => users::deactivate(&mut client, &email)
                    .await
                    .map_err(PlatformError::from)?,
            };
            record(
                &client,
                audit::EventType::UserDeactivated,
                &email,
                "deactivated",
            )
            .await?;
            println!(
                "deactivated {} user(s) '{email}' of tenant '{slug}'; their sessions are ended",
                done.len()
            );
            Ok(())
        }
        UserCmd::Events {
            slug: s,
            limit,
            json,
        } => {
            let slug = slug(&s)?;
            let client = p.connect_as_tenant(slug.as_str()).await?;
            let all = audit::latest(&client, limit.clamp(1, 10_000))
                .await
                .map_err(PlatformError::from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for e in all {
                    println!(
                        "{} {:<24} {:<8} {:<30} {} {}",
                        e.at.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        e.event_type,
                        e.outcome,
                        e.actor,
                        e.target.unwrap_or_default(),
                        e.reason.unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}
