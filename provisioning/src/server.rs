//! Administrative connections to a database server (one registered in the catalog, or the
//! control-plane server itself).

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, Config, NoTls};

use crate::{ProvisionError, pg_err};

/// The oldest PostgreSQL that has `CREATE DATABASE … STRATEGY WAL_LOG`.
pub const MIN_SERVER_VERSION_NUM: i32 = 150000;

/// An administrative connection from a server's pool. Session state must not be left on it
/// (the provisioning code sets none outside transactions, and unlocks what it locks).
pub type AdminClient = deadpool_postgres::Object;

/// Admin connections kept per server: provisioning runs one statement at a time, so a few are
/// plenty, and they spare each run the cost of new connections.
const ADMIN_POOL_SIZE: usize = 4;

/// A database server reached through its admin URL. The URL's password stays inside the
/// tokio-postgres `Config`, whose `Debug` output redacts it. Cloning shares the admin pool.
#[derive(Clone)]
pub struct DbServer {
    config: Config,
    label: String,
    pool: Pool,
    /// TLS to the server, verified against its registered CA (`None`: plain TCP).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl std::fmt::Debug for DbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbServer({})", self.label)
    }
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub max_connections: i32,
}

impl DbServer {
    pub fn from_url(url: &str) -> Result<Self, ProvisionError> {
        Self::from_url_with_ca(url, None)
    }

    /// A server reached over TLS when `ca_pem` names the CA its certificate must chain to
    /// (`portico_core::pgtls`).
    pub fn from_url_with_ca(url: &str, ca_pem: Option<&str>) -> Result<Self, ProvisionError> {
        let mut config = Config::from_str(url).map_err(|_| {
            ProvisionError::InvalidUrl(
                "expected postgres://user:password@host:port/database".into(),
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(ProvisionError::InvalidUrl("the URL names no host".into()));
        }
        if config.get_user().is_none() {
            return Err(ProvisionError::InvalidUrl("the URL names no user".into()));
        }
        config.application_name("portico-provisioning");
        config.connect_timeout(std::time::Duration::from_secs(10));
        let label = portico_core::settings::redact_url(url);
        let tls = ca_pem
            .map(portico_core::pgtls::connector)
            .transpose()
            .map_err(|e| ProvisionError::InvalidUrl(e.to_string()))?;
        if tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(ADMIN_POOL_SIZE)
            .build()
            .map_err(|e| ProvisionError::InvalidUrl(format!("cannot set up a pool: {e}")))?;
        Ok(Self {
            config,
            label,
            pool,
            tls,
        })
    }

    /// `user@host:port/db`, without credentials.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A connection failure, with the server's own message (never the URL or a password).
    fn unreachable(&self, e: &tokio_postgres::Error) -> ProvisionError {
        let message = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => match std::error::Error::source(e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
        };
        ProvisionError::Unreachable {
            server: self.label.clone(),
            message,
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn connect_config(&self, config: &Config) -> Result<Client, ProvisionError> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) = config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| self.unreachable(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "provisioning connection closed with an error");
                    }
                });
                Ok(client)
            }
            None => {
                let (client, connection) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.unreachable(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "provisioning connection closed with an error");
                    }
                });
                Ok(client)
            }
        }
    }

    /// A pooled connection to the maintenance database as the admin user.
    pub async fn admin(&self) -> Result<AdminClient, ProvisionError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.unreachable(&e),
            other => ProvisionError::Unreachable {
                server: self.label.clone(),
                message: other.to_string(),
            },
        })
    }

    /// Runs `body` holding the session advisory lock `key` (hashed) of the cluster. Advisory
    /// locks are per database, and admin sessions of one cluster may sit in different ones, so
    /// the lock is taken in the cluster's `postgres` maintenance database — in `fallback`'s
    /// only when that cannot be reached. Released when `body` is done (or with the session).
    pub async fn cluster_locked<T>(
        &self,
        fallback: &Client,
        key: &str,
        body: impl std::future::Future<Output = Result<T, ProvisionError>>,
    ) -> Result<T, ProvisionError> {
        let maintenance = self.admin_in("postgres").await.ok();
        let locker: &Client = maintenance.as_ref().unwrap_or(fallback);
        locker
            .execute("select pg_advisory_lock(hashtext($1))", &[&key])
            .await
            .map_err(|e| pg_err("taking a cluster lock", e))?;
        let result = body.await;
        let _ = locker
            .execute("select pg_advisory_unlock(hashtext($1))", &[&key])
            .await;
        result
    }

    /// A connection to `database` as the admin user.
    pub async fn admin_in(&self, database: &str) -> Result<Client, ProvisionError> {
        let mut config = self.config.clone();
        config.dbname(database);
        self.connect_config(&config).await
    }

    /// A connection to `database` as `user` with `password` (a tenant role).
    pub async fn connect_as(
        &self,
        database: &str,
        user: &str,
        password: &str,
    ) -> Result<Client, ProvisionError> {
        let mut config = self.config.clone();
        config.dbname(database).user(user).password(password);
        self.connect_config(&config).await
    }

    /// Connects, and checks that the server can host tenants: PostgreSQL 15 or newer, and an
    /// admin user allowed to create databases and roles.
    pub async fn check(&self) -> Result<ServerInfo, ProvisionError> {
        let client = self.admin().await?;
        self.check_on(&client).await
    }

    /// [`DbServer::check`] on an already open admin connection.
    pub async fn check_on(&self, client: &Client) -> Result<ServerInfo, ProvisionError> {
        let row = client
            .query_one(
                "select current_setting('server_version_num')::int4,
                        current_setting('server_version'),
                        current_setting('max_connections')::int4,
                        r.rolsuper, r.rolcreatedb, r.rolcreaterole
                   from pg_roles r where r.rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| pg_err("checking the database server", e))?;
        let version_num: i32 = row.get(0);
        let unsuitable = |message: String| ProvisionError::Unsuitable {
            server: self.label.clone(),
            message,
        };
        if version_num < MIN_SERVER_VERSION_NUM {
            return Err(unsuitable(format!(
                "PostgreSQL {} is too old; 15 or newer is required",
                row.get::<_, String>(1)
            )));
        }
        let (superuser, createdb, createrole): (bool, bool, bool) =
            (row.get(3), row.get(4), row.get(5));
        if !(superuser || (createdb && createrole)) {
            return Err(unsuitable(
                "the admin user needs CREATEDB and CREATEROLE (or superuser)".into(),
            ));
        }
        Ok(ServerInfo {
            version: row.get(1),
            max_connections: row.get(2),
        })
    }
}
