//! Typed, layered settings: built-in defaults < `portico.toml` < `PORTICO_*` environment.
//!
//! Everything is validated here, at start-up; an invalid value fails with a message naming the
//! setting (`PORTICO_STORAGE (storage in portico.toml): …`). Secrets are held in
//! [`secrecy::SecretString`] so they never show up in `Debug` output or logs.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::ids::Hostname;

/// Setting keys read from the environment (as `PORTICO_<KEY>`) and from `portico.toml`.
const KEYS: &[&str] = &[
    "database_url",
    "base_domain",
    "storage",
    "s3_endpoint",
    "kms",
    "kms_endpoint",
    "tenant_connection_limit",
    "tenant_statement_timeout_ms",
    "default_tier",
    "pooled_tenants_per_database",
    "move_drain_ms",
    "deletion_grace",
    "export_dir",
    "export_retention",
    "operator_host",
    "listen",
    "metrics_listen",
    "trusted_proxies",
    "rate_limit_per_ip",
    "rate_limit_per_tenant",
    "anonymous_limit_per_ip",
    "anonymous_limit_per_tenant",
    "max_open_tenants",
    "tenant_pool_size",
    "pooled_budget_percent",
    "shared_pool_lanes",
    "shared_lane_size",
    "flood_connections",
    "pool_wait_ms",
    "runtime_instances",
    "request_timeout_ms",
    "body_limit_bytes",
    "tenant_cache_ttl_s",
    "login_host",
    "public_scheme",
    "public_port",
    "session_idle_s",
    "session_absolute_s",
    "sso_allow_loopback",
    "clamd",
    "max_upload_bytes",
    "upload_timeout_s",
    "data_key_ttl_s",
    "data_key_max_uses",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting {env} ({key} in portico.toml): {message}")]
    Invalid {
        env: String,
        key: &'static str,
        message: String,
    },
    #[error("cannot read settings: {0}")]
    Load(String),
}

/// A duration setting (`30d`, `720h`, `0s`) of at most ten years.
fn days_setting(key: &'static str, raw: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(raw.trim())
        .ok()
        .filter(|d| *d <= MAX_DURATION_SETTING)
        .ok_or_else(|| invalid(key, "must be a duration such as 30d or 720h, at most 3650d"))
}

fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        env: format!("PORTICO_{}", key.to_ascii_uppercase()),
        key,
        message: message.into(),
    }
}

/// `CONNECTION LIMIT` of each tenant role unless configured.
pub const DEFAULT_TENANT_CONNECTION_LIMIT: u32 = 20;
/// `statement_timeout` of each tenant role unless configured, in milliseconds.
pub const DEFAULT_TENANT_STATEMENT_TIMEOUT_MS: u32 = 30_000;

/// Raw layered values, before validation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    database_url: Option<String>,
    base_domain: String,
    storage: Option<String>,
    s3_endpoint: Option<String>,
    kms: Option<String>,
    kms_endpoint: Option<String>,
    tenant_connection_limit: i64,
    tenant_statement_timeout_ms: i64,
    default_tier: String,
    pooled_tenants_per_database: i64,
    move_drain_ms: i64,
    deletion_grace: String,
    export_dir: Option<String>,
    export_retention: String,
    operator_host: Option<String>,
    listen: String,
    metrics_listen: String,
    trusted_proxies: String,
    rate_limit_per_ip: i64,
    rate_limit_per_tenant: i64,
    anonymous_limit_per_ip: i64,
    anonymous_limit_per_tenant: i64,
    max_open_tenants: i64,
    tenant_pool_size: i64,
    pooled_budget_percent: i64,
    shared_pool_lanes: i64,
    shared_lane_size: i64,
    flood_connections: i64,
    pool_wait_ms: i64,
    runtime_instances: i64,
    request_timeout_ms: i64,
    body_limit_bytes: i64,
    tenant_cache_ttl_s: i64,
    login_host: Option<String>,
    public_scheme: String,
    public_port: i64,
    session_idle_s: i64,
    session_absolute_s: i64,
    sso_allow_loopback: bool,
    clamd: String,
    max_upload_bytes: i64,
    upload_timeout_s: i64,
    data_key_ttl_s: i64,
    data_key_max_uses: i64,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            database_url: None,
            base_domain: "portal.localhost".into(),
            storage: None,
            s3_endpoint: None,
            kms: None,
            kms_endpoint: None,
            tenant_connection_limit: DEFAULT_TENANT_CONNECTION_LIMIT.into(),
            tenant_statement_timeout_ms: DEFAULT_TENANT_STATEMENT_TIMEOUT_MS.into(),
            default_tier: "dedicated".into(),
            pooled_tenants_per_database: DEFAULT_POOLED_TENANTS_PER_DATABASE.into(),
            move_drain_ms: DEFAULT_MOVE_DRAIN_MS.into(),
            deletion_grace: DEFAULT_DELETION_GRACE.into(),
            export_dir: None,
            export_retention: DEFAULT_EXPORT_RETENTION.into(),
            operator_host: None,
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            trusted_proxies: String::new(),
            rate_limit_per_ip: 100,
            rate_limit_per_tenant: 1000,
            anonymous_limit_per_ip: 120,
            anonymous_limit_per_tenant: 1200,
            max_open_tenants: 1000,
            tenant_pool_size: 5,
            pooled_budget_percent: 25,
            shared_pool_lanes: 8,
            shared_lane_size: 2,
            flood_connections: 1,
            pool_wait_ms: 2000,
            runtime_instances: 1,
            request_timeout_ms: 30_000,
            body_limit_bytes: 1 << 20,
            tenant_cache_ttl_s: 30,
            login_host: None,
            public_scheme: "https".into(),
            public_port: 0,
            session_idle_s: 30 * 60,
            session_absolute_s: 12 * 3600,
            sso_allow_loopback: false,
            clamd: "unix:/var/run/clamav/clamd.ctl".into(),
            max_upload_bytes: 4 << 30,
            upload_timeout_s: 3600,
            data_key_ttl_s: 900,
            data_key_max_uses: 100_000,
        }
    }
}

/// Where uploads are scanned for malware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `unix:<path>`: clamd's local socket.
    Unix(std::path::PathBuf),
    /// `tcp:<host>:<port>`.
    Tcp(String),
    /// `none`: no scanning (the local demo only; every upload is recorded as unscanned).
    Disabled,
}

impl ClamdAddress {
    pub fn parse(s: &str) -> Option<Self> {
        if s == "none" {
            return Some(Self::Disabled);
        }
        if let Some(p) = s.strip_prefix("unix:") {
            return (!p.is_empty() && p.starts_with('/')).then(|| Self::Unix(p.into()));
        }
        let a = s.strip_prefix("tcp:")?;
        let (host, port) = a.rsplit_once(':')?;
        (!host.is_empty() && port.parse::<u16>().is_ok()).then(|| Self::Tcp(a.to_owned()))
    }
}

/// The control-plane database URL. `Debug` and `Display` show it without the password.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err("must be a postgres:// URL".into());
        }
        if url.host_str().is_none_or(str::is_empty) && !url.query().unwrap_or("").contains("host=")
        {
            return Err("must name a host".into());
        }
        Ok(Self(SecretString::from(s.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// `user@host:port/db` without the password: safe to print.
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose_secret())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// Strips the password from a URL and drops its query (which may carry one too).
pub fn redact_url(s: &str) -> String {
    match Url::parse(s) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let user = if u.username().is_empty() {
                String::new()
            } else {
                format!("{}@", u.username())
            };
            format!("{}://{user}{host}{port}{}", u.scheme(), u.path())
        }
        Err(_) => "<unparseable URL>".into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSettings {
    /// Embedded default: a directory on disk.
    File { root: PathBuf },
    /// S3 or an S3-compatible server (path-style addressing when an endpoint is given).
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<Url>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsSettings {
    /// Embedded default: a local master-key file wrapping one key per tenant.
    Local { master_key: PathBuf },
    /// AWS KMS or a KMS-compatible endpoint.
    Aws { endpoint: Option<Url> },
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub base_domain: Hostname,
    pub storage: StorageSettings,
    pub kms: KmsSettings,
    /// `CONNECTION LIMIT` given to every tenant role.
    pub tenant_connection_limit: u32,
    /// `statement_timeout` given to every tenant role, in milliseconds.
    pub tenant_statement_timeout_ms: u32,
    /// The tier of a tenant created without `--tier`: `dedicated` (a database and login role
    /// of its own: PostgreSQL authentication separates it) or `pooled` (a schema of a shared
    /// database: thousands of tenants on a few connections, separated by role switching).
    pub default_tier: DefaultTier,
    /// Most pooled tenants placed in one shared database.
    pub pooled_tenants_per_database: u32,
    /// How long a tenant move waits after switching before it drops the source, so that
    /// requests already running there (on instances that have not yet heard of the switch)
    /// finish.
    pub move_drain: Duration,
    /// How long a tenant approved for deletion stays restorable before it is purged: the
    /// default and the shortest a deletion request may ask for (it may ask for longer).
    pub deletion_grace: Duration,
    /// Where exports made by the control plane (operator API, `export_first`) are written.
    pub export_dir: PathBuf,
    /// How long an archive made through the operator API is kept before it is deleted.
    pub export_retention: Duration,
    /// What `portico serve` needs: listen addresses, limits, pools.
    pub runtime: RuntimeSettings,
}

/// Settings of the HTTP runtime (`portico serve`).
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// The host name of the operator API (default `admin.<base_domain>`).
    pub operator_host: Hostname,
    pub listen: SocketAddr,
    /// Where `/metrics` is served; `None` (`off`) serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests per second per client IP (bursts up to the same number); 0 turns it off.
    pub rate_limit_per_ip: u32,
    /// Requests per second per tenant; 0 turns it off.
    pub rate_limit_per_tenant: u32,
    /// Requests per minute per client address to the anonymous paths (sign-in, invitations,
    /// SSO, document links), bursts of the same size; 0 turns it off.
    pub anonymous_limit_per_ip: u32,
    /// Requests per minute per tenant to the anonymous paths; 0 turns it off.
    pub anonymous_limit_per_tenant: u32,
    /// Tenant pools kept open at once (least recently used closed first).
    pub max_open_tenants: u64,
    /// Connections one tenant's pool may hold (per instance); in the pooled tier, connections of
    /// the shared pool one tenant may hold at once.
    pub tenant_pool_size: u32,
    /// Share of each server's budget (percent) kept for the pooled tier while this instance
    /// serves pooled tenants there: dedicated tenants' pools together hold at most the rest.
    pub pooled_budget_percent: u32,
    /// Pools per shared database in one instance; a pooled tenant always uses the same one, so
    /// each connection (and its server process's catalog caches and plans) serves a fraction of
    /// the database's tenants.
    pub shared_pool_lanes: u32,
    /// Connections of one lane (per instance): few, so that each connection's server process
    /// sees its lane's tenants often and keeps their relations and plans cached.
    pub shared_lane_size: u32,
    /// Connections a tenant with more than 4 × `tenant_pool_size` requests at once (a flood)
    /// holds at once while another tenant uses the same database server, so the others'
    /// statements do not queue behind its statements for the server's CPU.
    pub flood_connections: u32,
    /// How long a request waits for a tenant connection before `503 tenant_busy`.
    pub pool_wait: Duration,
    /// Instances sharing each database server's connection budget (each takes an equal share).
    pub instances: u32,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    /// How long a resolved host is trusted without a catalog notification (a backstop).
    pub tenant_cache_ttl: Duration,
    /// The shared sign-in host for home-realm discovery (default `login.<base_domain>`).
    pub login_host: Hostname,
    /// How browsers reach the portal: `https` (default), or `http` for the local demo.
    pub public_scheme: String,
    /// The port browsers use, when not the scheme's default (0: none).
    pub public_port: u16,
    pub session_idle: Duration,
    pub session_absolute: Duration,
    /// Allow SSO metadata/discovery/token URLs on loopback over plain HTTP (tests, demo).
    pub sso_allow_loopback: bool,
    /// clamd, which scans every upload (`PORTICO_CLAMD`: `unix:<path>`, `tcp:<host>:<port>`
    /// or `none`). Unreachable means uploads are refused.
    pub clamd: ClamdAddress,
    pub max_upload_bytes: u64,
    /// Request time limit of streamed uploads (instead of `request_timeout`).
    pub upload_timeout: Duration,
    /// A tenant's cached data key is replaced after this long or this many uses.
    pub data_key_ttl: Duration,
    pub data_key_max_uses: u64,
}

impl RuntimeSettings {
    /// Defaults for a given base domain (the demo, tests).
    pub fn defaults_for(base_domain: &Hostname) -> Self {
        let raw = Raw::default();
        let mut s = Self::validate(&raw, base_domain).expect("the defaults are valid");
        s.operator_host = operator_host_for(base_domain);
        s.login_host = login_host_for(base_domain);
        s
    }

    /// The origin browsers use for `host` (`https://host` or, in the demo, `http://host:port`).
    pub fn public_origin(&self, host: &str) -> String {
        match self.public_port {
            0 => format!("{}://{host}", self.public_scheme),
            p => format!("{}://{host}:{p}", self.public_scheme),
        }
    }

    fn validate(raw: &Raw, base_domain: &Hostname) -> Result<Self, SettingsError> {
        let operator_host = match raw.operator_host.as_deref() {
            None | Some("") => operator_host_for(base_domain),
            Some(h) => Hostname::parse(h).map_err(|e| invalid("operator_host", e.to_string()))?,
        };
        let login_host = match raw.login_host.as_deref() {
            None | Some("") => login_host_for(base_domain),
            Some(h) => Hostname::parse(h).map_err(|e| invalid("login_host", e.to_string()))?,
        };
        if !matches!(raw.public_scheme.as_str(), "https" | "http") {
            return Err(invalid("public_scheme", "must be https or http"));
        }
        let listen = raw
            .listen
            .parse()
            .map_err(|_| invalid("listen", "expected an address like 127.0.0.1:8080"))?;
        let metrics_listen = match raw.metrics_listen.as_str() {
            "" | "off" => None,
            s => Some(s.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    "expected an address like 127.0.0.1:9464, or off",
                )
            })?),
        };
        let trusted_proxies = raw
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "trusted_proxies",
                            format!("'{s}' is not an IP address or CIDR block"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ranged = |key: &'static str, v: i64, lo: i64, hi: i64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(key, format!("must be between {lo} and {hi}")))
            }
        };
        let ms = |v: i64| Duration::from_millis(v.unsigned_abs());
        Ok(Self {
            operator_host,
            listen,
            metrics_listen,
            trusted_proxies,
            rate_limit_per_ip: ranged("rate_limit_per_ip", raw.rate_limit_per_ip, 0, 1_000_000)?
                as u32,
            rate_limit_per_tenant: ranged(
                "rate_limit_per_tenant",
                raw.rate_limit_per_tenant,
                0,
                1_000_000,
            )? as u32,
            anonymous_limit_per_ip: ranged(
                "anonymous_limit_per_ip",
                raw.anonymous_limit_per_ip,
                0,
                1_000_000,
            )? as u32,
            anonymous_limit_per_tenant: ranged(
                "anonymous_limit_per_tenant",
                raw.anonymous_limit_per_tenant,
                0,
                10_000_000,
            )? as u32,
            max_open_tenants: ranged("max_open_tenants", raw.max_open_tenants, 1, 1_000_000)?
                as u64,
            tenant_pool_size: ranged("tenant_pool_size", raw.tenant_pool_size, 1, 1000)? as u32,
            pooled_budget_percent: ranged(
                "pooled_budget_percent",
                raw.pooled_budget_percent,
                0,
                100,
            )? as u32,
            shared_pool_lanes: ranged("shared_pool_lanes", raw.shared_pool_lanes, 1, 64)? as u32,
            shared_lane_size: ranged("shared_lane_size", raw.shared_lane_size, 1, 1000)? as u32,
            flood_connections: ranged("flood_connections", raw.flood_connections, 1, 1000)? as u32,
            pool_wait: ms(ranged("pool_wait_ms", raw.pool_wait_ms, 1, 600_000)?),
            instances: ranged("runtime_instances", raw.runtime_instances, 1, 1000)? as u32,
            request_timeout: ms(ranged(
                "request_timeout_ms",
                raw.request_timeout_ms,
                100,
                3_600_000,
            )?),
            body_limit_bytes: ranged("body_limit_bytes", raw.body_limit_bytes, 1024, 1 << 30)?
                as usize,
            tenant_cache_ttl: Duration::from_secs(
                ranged("tenant_cache_ttl_s", raw.tenant_cache_ttl_s, 1, 86_400)?.unsigned_abs(),
            ),
            login_host,
            public_scheme: raw.public_scheme.clone(),
            public_port: ranged("public_port", raw.public_port, 0, 65_535)? as u16,
            session_idle: Duration::from_secs(
                ranged("session_idle_s", raw.session_idle_s, 60, 7 * 86_400)?.unsigned_abs(),
            ),
            session_absolute: Duration::from_secs(
                ranged(
                    "session_absolute_s",
                    raw.session_absolute_s,
                    60,
                    30 * 86_400,
                )?
                .unsigned_abs(),
            ),
            sso_allow_loopback: raw.sso_allow_loopback,
            clamd: ClamdAddress::parse(&raw.clamd).ok_or_else(|| {
                invalid(
                    "clamd",
                    "expected unix:/path/to/clamd.sock, tcp:host:port or none",
                )
            })?,
            max_upload_bytes: ranged("max_upload_bytes", raw.max_upload_bytes, 1024, 64 << 30)?
                .unsigned_abs(),
            upload_timeout: Duration::from_secs(
                ranged("upload_timeout_s", raw.upload_timeout_s, 10, 86_400)?.unsigned_abs(),
            ),
            data_key_ttl: Duration::from_secs(
                ranged("data_key_ttl_s", raw.data_key_ttl_s, 1, 86_400)?.unsigned_abs(),
            ),
            data_key_max_uses: ranged("data_key_max_uses", raw.data_key_max_uses, 1, 100_000_000)?
                .unsigned_abs(),
        })
    }
}

fn login_host_for(base_domain: &Hostname) -> Hostname {
    Hostname::parse(&format!("login.{}", base_domain.as_str()))
        .expect("login.<a valid host name> is a valid host name")
}

fn operator_host_for(base_domain: &Hostname) -> Hostname {
    Hostname::parse(&format!("admin.{}", base_domain.as_str()))
        .expect("admin.<a valid host name> is a valid host name")
}

impl Settings {
    /// Embedded defaults around a given control-plane database: `file://<data_dir>/storage`
    /// and a local master key at `<data_dir>/keys/master.key` (the demo and the benchmark).
    pub fn embedded(database_url: DatabaseUrl, base_domain: Hostname, data_dir: &Path) -> Self {
        Self {
            database_url,
            storage: StorageSettings::File {
                root: data_dir.join("storage"),
            },
            kms: KmsSettings::Local {
                master_key: data_dir.join("keys/master.key"),
            },
            tenant_connection_limit: DEFAULT_TENANT_CONNECTION_LIMIT,
            tenant_statement_timeout_ms: DEFAULT_TENANT_STATEMENT_TIMEOUT_MS,
            default_tier: DefaultTier::Dedicated,
            pooled_tenants_per_database: DEFAULT_POOLED_TENANTS_PER_DATABASE,
            move_drain: Duration::from_millis(DEFAULT_MOVE_DRAIN_MS.into()),
            deletion_grace: DEFAULT_DELETION_GRACE_DAYS_AS_DURATION,
            export_dir: data_dir.join("exports"),
            export_retention: Duration::from_secs(7 * 86_400),
            runtime: RuntimeSettings::defaults_for(&base_domain),
            base_domain,
        }
    }

    /// Loads defaults < `portico.toml` (or the file named by `PORTICO_CONFIG`) < environment.
    pub fn load() -> Result<Self, SettingsError> {
        let file = match std::env::var_os("PORTICO_CONFIG") {
            Some(p) => {
                let p = PathBuf::from(p);
                if !p.is_file() {
                    return Err(SettingsError::Load(format!(
                        "PORTICO_CONFIG names '{}', which is not a readable file",
                        p.display()
                    )));
                }
                Some(p)
            }
            None => Some(PathBuf::from("portico.toml")).filter(|p| p.is_file()),
        };
        Self::load_from(file.as_deref(), Env::prefixed("PORTICO_").only(KEYS))
    }

    /// Loads from explicit layers (used by tests and by `load`).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Raw::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let raw: Raw = figment.merge(env).extract().map_err(|e| {
            let key = e.path.last().cloned().unwrap_or_default();
            match KEYS.iter().find(|k| **k == key) {
                Some(k) => invalid(k, e.kind.to_string()),
                None => SettingsError::Load(e.to_string()),
            }
        })?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Self, SettingsError> {
        let database_url = match raw.database_url.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "database_url",
                    "not set; give the control-plane database as postgres://user:password@host:port/database",
                ));
            }
            Some(s) => DatabaseUrl::parse(s).map_err(|m| invalid("database_url", m))?,
        };
        let base_domain =
            Hostname::parse(&raw.base_domain).map_err(|e| invalid("base_domain", e.to_string()))?;
        let s3_endpoint = parse_endpoint("s3_endpoint", raw.s3_endpoint.as_deref())?;
        let kms_endpoint = parse_endpoint("kms_endpoint", raw.kms_endpoint.as_deref())?;
        let data_dir = default_data_dir();
        let storage = match raw.storage.as_deref() {
            None | Some("") => StorageSettings::File {
                root: data_dir.join("storage"),
            },
            Some(s) => parse_storage(s, s3_endpoint)?,
        };
        let kms = match raw.kms.as_deref() {
            None | Some("") => KmsSettings::Local {
                master_key: data_dir.join("master.key"),
            },
            Some(s) => parse_kms(s, kms_endpoint)?,
        };
        let tenant_connection_limit = u32::try_from(raw.tenant_connection_limit)
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| invalid("tenant_connection_limit", "must be between 1 and 1000"))?;
        let tenant_statement_timeout_ms = u32::try_from(raw.tenant_statement_timeout_ms)
            .ok()
            .filter(|n| (100..=3_600_000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "tenant_statement_timeout_ms",
                    "must be between 100 and 3600000",
                )
            })?;
        let default_tier = match raw.default_tier.as_str() {
            "dedicated" => DefaultTier::Dedicated,
            "pooled" => DefaultTier::Pooled,
            _ => return Err(invalid("default_tier", "must be 'dedicated' or 'pooled'")),
        };
        let pooled_tenants_per_database = u32::try_from(raw.pooled_tenants_per_database)
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| invalid("pooled_tenants_per_database", "must be between 1 and 10000"))?;
        let move_drain = u32::try_from(raw.move_drain_ms)
            .ok()
            .filter(|n| *n <= 600_000)
            .map(|n| Duration::from_millis(n.into()))
            .ok_or_else(|| invalid("move_drain_ms", "must be between 0 and 600000"))?;
        let deletion_grace = days_setting("deletion_grace", &raw.deletion_grace)?;
        let export_dir = match raw.export_dir.as_deref() {
            None | Some("") => data_dir.join("exports"),
            Some(d) if Path::new(d).is_absolute() => PathBuf::from(d),
            Some(_) => return Err(invalid("export_dir", "must be an absolute directory path")),
        };
        let export_retention = days_setting("export_retention", &raw.export_retention)?;
        let runtime = RuntimeSettings::validate(&raw, &base_domain)?;
        Ok(Self {
            default_tier,
            move_drain,
            deletion_grace,
            export_dir,
            export_retention,
            pooled_tenants_per_database,
            database_url,
            base_domain,
            storage,
            kms,
            tenant_connection_limit,
            tenant_statement_timeout_ms,
            runtime,
        })
    }
}

/// How long a move waits between switching and dropping the source, unless set: well beyond
/// the catalog notification's delay and a read's usual length.
const DEFAULT_MOVE_DRAIN_MS: u32 = 5_000;
const DEFAULT_DELETION_GRACE: &str = "30d";
const DEFAULT_EXPORT_RETENTION: &str = "7d";
const DEFAULT_DELETION_GRACE_DAYS_AS_DURATION: Duration = Duration::from_secs(30 * 86_400);
const MAX_DURATION_SETTING: Duration = Duration::from_secs(3650 * 86_400);

/// Pooled tenants per shared database unless set: enough that a thousand tenants need only a
/// few databases, few enough that one database's catalog stays small (each tenant adds its
/// tables, indexes and functions to `pg_class`/`pg_proc`).
pub const DEFAULT_POOLED_TENANTS_PER_DATABASE: u32 = 500;

/// The tier of new tenants unless a create names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultTier {
    Dedicated,
    Pooled,
}

/// `$XDG_DATA_HOME/portico`, else `$HOME/.local/share/portico`, else `./.portico`.
fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("portico");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/portico");
    }
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("/"))
        .join(".portico")
}

fn parse_endpoint(key: &'static str, s: Option<&str>) -> Result<Option<Url>, SettingsError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => {
            let url = Url::parse(s).map_err(|e| invalid(key, format!("not a URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    key,
                    "must be an http:// or https:// URL with a host",
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(invalid(
                    key,
                    "must not contain credentials; use the AWS credential chain",
                ));
            }
            Ok(Some(url))
        }
    }
}

fn parse_storage(s: &str, endpoint: Option<Url>) -> Result<StorageSettings, SettingsError> {
    let hint = "expected file:///absolute/dir or s3://bucket/optional/prefix";
    let url = Url::parse(s).map_err(|_| invalid("storage", format!("'{s}': {hint}")))?;
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(invalid(
                    "storage",
                    format!("'{s}': file URLs take an absolute path (file:///dir)"),
                ));
            }
            let root = url
                .to_file_path()
                .map_err(|_| invalid("storage", format!("'{s}': {hint}")))?;
            if !root.is_absolute() || root.components().any(|c| c.as_os_str() == "..") {
                return Err(invalid(
                    "storage",
                    format!("'{s}': the path must be absolute"),
                ));
            }
            Ok(StorageSettings::File { root })
        }
        "s3" => {
            let bucket = url.host_str().unwrap_or("").to_owned();
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(invalid(
                    "storage",
                    format!("'{s}': '{bucket}' is not a valid S3 bucket name"),
                ));
            }
            let prefix = url.path().trim_matches('/').to_owned();
            if prefix.split('/').any(|c| c == ".." || c == ".")
                || prefix.contains("//")
                || url.query().is_some()
            {
                return Err(invalid("storage", format!("'{s}': invalid key prefix")));
            }
            Ok(StorageSettings::S3 {
                bucket,
                prefix,
                endpoint,
            })
        }
        other => Err(invalid(
            "storage",
            format!("unsupported scheme '{other}:' ({hint})"),
        )),
    }
}

fn parse_kms(s: &str, endpoint: Option<Url>) -> Result<KmsSettings, SettingsError> {
    let hint = "expected local:///absolute/path/to/master.key or aws-kms";
    if s == "aws-kms" {
        return Ok(KmsSettings::Aws { endpoint });
    }
    let path = s
        .strip_prefix("local://")
        .ok_or_else(|| invalid("kms", format!("'{s}': {hint}")))?;
    let path = PathBuf::from(path);
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(invalid(
            "kms",
            format!("'{s}': the master key path must be absolute ({hint})"),
        ));
    }
    Ok(KmsSettings::Local { master_key: path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        // Figment's Env provider can be fed from an iterator-free map via `Env::raw()` only
        // from the real environment; build a TOML string instead, which goes through the same
        // validation.
        let mut toml = String::new();
        for (k, v) in vars {
            toml.push_str(&format!("{k} = \"{v}\"\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portico.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load_from(Some(&path), Env::prefixed("PORTICO_UNUSED_IN_TESTS_"))
    }

    #[test]
    fn valid_settings_parse() {
        let s = env(&[
            ("database_url", "postgres://u:hunter2@127.0.0.1:5432/cp"),
            ("storage", "s3://my-bucket/some/prefix"),
            ("s3_endpoint", "http://127.0.0.1:8333"),
            ("kms", "aws-kms"),
        ])
        .unwrap();
        assert_eq!(
            s.storage,
            StorageSettings::S3 {
                bucket: "my-bucket".into(),
                prefix: "some/prefix".into(),
                endpoint: Some(Url::parse("http://127.0.0.1:8333").unwrap()),
            }
        );
        assert_eq!(s.kms, KmsSettings::Aws { endpoint: None });
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("hunter2"),
            "password leaked into Debug: {debug}"
        );
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "PORTICO_DATABASE_URL"),
            (
                &[("database_url", "mysql://x@h/db")],
                "PORTICO_DATABASE_URL",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("storage", "file://relative/dir"),
                ],
                "PORTICO_STORAGE",
            ),
            (
                &[("database_url", "postgres://h/db"), ("storage", "ftp://x")],
                "PORTICO_STORAGE",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("deletion_grace", "a month"),
                ],
                "PORTICO_DELETION_GRACE",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("export_retention", "99999d"),
                ],
                "PORTICO_EXPORT_RETENTION",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("export_dir", "exports"),
                ],
                "PORTICO_EXPORT_DIR",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("kms", "local://relative.key"),
                ],
                "PORTICO_KMS",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("base_domain", "nodots"),
                ],
                "PORTICO_BASE_DOMAIN",
            ),
            (
                &[
                    ("database_url", "postgres://h/db"),
                    ("s3_endpoint", "ftp://x"),
                ],
                "PORTICO_S3_ENDPOINT",
            ),
        ];
        for (vars, setting) in cases {
            let err = env(vars).unwrap_err().to_string();
            assert!(
                err.contains(setting),
                "{vars:?}: '{err}' should name {setting}"
            );
        }
    }

    #[test]
    fn runtime_settings_parse_and_refuse_bad_values() {
        let s = env(&[
            ("database_url", "postgres://h/db"),
            ("base_domain", "portal.example.com"),
            ("trusted_proxies", "10.0.0.0/8, 127.0.0.1 ,::1"),
            ("metrics_listen", "off"),
            ("listen", "0.0.0.0:9000"),
        ])
        .unwrap();
        let rt = &s.runtime;
        assert_eq!(rt.operator_host.as_str(), "admin.portal.example.com");
        assert_eq!(rt.metrics_listen, None);
        assert_eq!(rt.listen, "0.0.0.0:9000".parse().unwrap());
        let proxies: Vec<String> = rt.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(proxies, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        for (key, value, setting) in [
            (
                "trusted_proxies",
                "10.0.0.0/8, nonsense",
                "PORTICO_TRUSTED_PROXIES",
            ),
            ("listen", "localhost", "PORTICO_LISTEN"),
            ("metrics_listen", "9464", "PORTICO_METRICS_LISTEN"),
            ("operator_host", "not a host", "PORTICO_OPERATOR_HOST"),
            ("pool_wait_ms", "soon", "PORTICO_POOL_WAIT_MS"),
        ] {
            let err = env(&[("database_url", "postgres://h/db"), (key, value)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(setting),
                "{key}={value}: '{err}' should name {setting}"
            );
        }
    }

    #[test]
    fn secret_url_redaction() {
        let u = DatabaseUrl::parse("postgres://admin:s3cr3t@db.example:5433/x?password=s3cr3t")
            .unwrap();
        assert_eq!(u.redacted(), "postgres://admin@db.example:5433/x");
        assert!(!format!("{u:?}").contains("s3cr3t"));
    }
}
