//! Test environment: one control-plane database per test (uniquely named, dropped at the end),
//! its own storage location and key store, and helpers to run the CLI as a real process.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use portico_core::keys::Keyring;
use portico_core::settings::DatabaseUrl;
use portico_core::storage::ObjectStore;
use portico_core::{Hostname, KmsSettings, Settings, StorageSettings, TenantId};
use portico_platform::Platform;
use portico_provisioning::keys::{KeyPresence, tenant_key_presence};
use portico_provisioning::{DbServer, TenantDbNames};
use serde_json::Value;

pub const BASE_DOMAIN: &str = "portal.test";
pub const S3_BUCKET: &str = "portico-test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded defaults: `file://` storage and a `local` master key.
    FileLocal,
    /// SeaweedFS over S3 and moto's KMS.
    S3Kms,
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the test suite with ./infra/test.sh, which starts PostgreSQL, S3 and KMS")
    })
}

/// A PostgreSQL client program (`pg_dump`, …) from the directory `initdb` really lives in (it
/// may be reached through a link).
pub fn pg_tool(name: &str) -> std::path::PathBuf {
    let bindir = portico_platform::pgcluster::find_bindir().expect("PostgreSQL binaries");
    std::fs::canonicalize(bindir.join("initdb"))
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or(bindir)
        .join(name)
}

/// The superuser URL of the test cluster, for database `db`.
pub fn admin_url(db: &str) -> String {
    let mut url = url_parse(&required("PORTICO_TEST_DATABASE_URL"));
    url.set_path(&format!("/{db}"));
    url.to_string()
}

fn url_parse(s: &str) -> url::Url {
    url::Url::parse(s).expect("PORTICO_TEST_DATABASE_URL is not a URL")
}

pub struct TestEnv {
    pub backend: Backend,
    /// Tenants created without `--tier` go to the pooled tier (`PORTICO_DEFAULT_TIER`).
    pub pooled: bool,
    pub catalog_db: String,
    pub dir: tempfile::TempDir,
    pub s3_prefix: String,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Self {
        Self::with_tier(backend, false).await
    }

    /// An environment whose tenants are pooled unless a create says otherwise.
    pub async fn pooled(backend: Backend) -> Self {
        Self::with_tier(backend, true).await
    }

    async fn with_tier(backend: Backend, pooled: bool) -> Self {
        // reqwest has no default TLS provider in this build (the binary installs aws-lc).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let catalog_db = format!("portico_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url("postgres")).await;
        admin
            .batch_execute(&format!("create database {catalog_db}"))
            .await
            .expect("creating the test catalog database");
        if backend == Backend::S3Kms {
            ensure_bucket().await;
        }
        let env = Self {
            backend,
            pooled,
            s3_prefix: format!("run-{}", uuid::Uuid::new_v4().simple()),
            catalog_db,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // As an operator would before anything else (no other command migrates the catalog).
        env.ok(&["migrate"]);
        env
    }

    pub fn catalog_url(&self) -> String {
        admin_url(&self.catalog_db)
    }

    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn master_key(&self) -> PathBuf {
        self.dir.path().join("keys/master.key")
    }

    /// The `PORTICO_*` environment the CLI runs with.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("PORTICO_DATABASE_URL".into(), self.catalog_url()),
            ("PORTICO_BASE_DOMAIN".into(), BASE_DOMAIN.into()),
            ("HOME".into(), self.dir.path().display().to_string()),
            ("PORTICO_CLAMD".into(), required("PORTICO_TEST_CLAMD")),
            // Moves drop their source at once: nothing else runs on it in the tests.
            ("PORTICO_MOVE_DRAIN_MS".into(), "0".into()),
        ];
        if self.pooled {
            v.push(("PORTICO_DEFAULT_TIER".into(), "pooled".into()));
        }
        match self.backend {
            Backend::FileLocal => {
                v.push((
                    "PORTICO_STORAGE".into(),
                    format!("file://{}", self.storage_root().display()),
                ));
                v.push((
                    "PORTICO_KMS".into(),
                    format!("local://{}", self.master_key().display()),
                ));
            }
            Backend::S3Kms => {
                v.push((
                    "PORTICO_STORAGE".into(),
                    format!("s3://{S3_BUCKET}/{}", self.s3_prefix),
                ));
                v.push((
                    "PORTICO_S3_ENDPOINT".into(),
                    required("PORTICO_TEST_S3_ENDPOINT"),
                ));
                v.push(("PORTICO_KMS".into(), "aws-kms".into()));
                v.push((
                    "PORTICO_KMS_ENDPOINT".into(),
                    required("PORTICO_TEST_KMS_ENDPOINT"),
                ));
            }
        }
        v
    }

    /// A `portico` command with this environment (and nothing inherited that could change
    /// its settings).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico-under-test"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PORTICO_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.vars())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(output_within(self.command().args(args), COMMAND_LIMIT))
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.success,
            "portico {args:?} failed:\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// Runs a command with extra settings.
    pub fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = self.command();
        cmd.args(args).envs(extra.iter().map(|(k, v)| (*k, *v)));
        Run::from(output_within(&mut cmd, COMMAND_LIMIT))
    }

    /// Runs a command with extra settings that must succeed; returns its stdout.
    pub fn ok_with(&self, args: &[&str], extra: &[(&str, &str)]) -> String {
        let r = self.run_with(args, extra);
        assert!(
            r.success,
            "portico {args:?} failed:\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("portico {args:?}: bad JSON ({e}): {out}"))
    }

    /// The settings the CLI gets from [`TestEnv::vars`], built directly for in-process use.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::embedded(
            DatabaseUrl::parse(&self.catalog_url()).expect("catalog URL"),
            Hostname::parse(BASE_DOMAIN).expect("base domain"),
            self.dir.path(),
        );
        if self.backend == Backend::S3Kms {
            let endpoint = |var| Some(required(var).parse().expect("endpoint URL"));
            settings.storage = StorageSettings::S3 {
                bucket: S3_BUCKET.into(),
                prefix: self.s3_prefix.clone(),
                endpoint: endpoint("PORTICO_TEST_S3_ENDPOINT"),
            };
            settings.kms = KmsSettings::Aws {
                endpoint: endpoint("PORTICO_TEST_KMS_ENDPOINT"),
            };
        }
        if self.pooled {
            settings.default_tier = portico_core::settings::DefaultTier::Pooled;
        }
        settings
    }

    /// Records a database server named `name` that is down (nothing listens at its address;
    /// `db-server add` would refuse it: it checks first). Its URL's password is `secret-pw`.
    pub async fn record_down_server(
        &self,
        name: &str,
    ) -> portico_platform::db_servers::DbServerView {
        portico_platform::db_servers::record(
            &self.platform().await,
            &portico_core::DbServerName::parse(name).expect("name"),
            "postgres://postgres:secret-pw@127.0.0.1:1/postgres",
            10,
        )
        .await
        .expect("record")
    }

    /// The control plane in-process, on the same catalog and backends as the CLI.
    pub async fn platform(&self) -> Platform {
        Platform::connect(self.settings(), true)
            .await
            .expect("connecting the platform")
    }

    /// A connection to `slug`'s data as the tenant's own role (dedicated), or in its context
    /// (pooled).
    pub async fn tenant_db(&self, slug: &str) -> portico_tenant_runtime::pools::TenantConn {
        self.platform()
            .await
            .connect_as_tenant(slug)
            .await
            .expect("tenant db")
    }

    /// The schema of `slug`'s audit log: `portico_audit` in its own database, `<schema>_audit`
    /// in a shared one.
    pub async fn audit_schema(&self, slug: &str) -> String {
        self.platform()
            .await
            .tenant_target(slug)
            .await
            .expect("tenant target")
            .audit_schema()
    }

    pub async fn keyring(&self) -> Keyring {
        Keyring::open(&self.settings().kms).await.expect("keyring")
    }

    pub async fn store(&self) -> ObjectStore {
        ObjectStore::from_settings(&self.settings().storage)
            .await
            .expect("object store")
    }

    pub fn server(&self) -> DbServer {
        DbServer::from_url(&admin_url("postgres")).expect("server")
    }

    /// An admin connection to the test cluster.
    pub async fn server_admin(&self) -> tokio_postgres::Client {
        connect(&admin_url("postgres")).await
    }

    pub async fn catalog(&self) -> tokio_postgres::Client {
        connect(&self.catalog_url()).await
    }

    /// How many tenants the catalog holds.
    pub async fn tenant_count(&self) -> i64 {
        self.catalog()
            .await
            .query_one("select count(*) from tenants", &[])
            .await
            .expect("counting tenants")
            .get(0)
    }

    /// Everything a fully provisioned tenant must have.
    pub async fn assert_provisioned(&self, slug: &str) -> Value {
        let t = self.json(&["tenant", "show", slug, "--json"]);
        assert_eq!(t["status"], "active", "{t}");
        if t["tier"] == "pooled" {
            return self.assert_pooled_provisioned(slug, t).await;
        }
        let id: TenantId = t["id"].as_str().expect("id").parse().expect("tenant id");
        let names = TenantDbNames::for_tenant(id);
        assert_eq!(t["placement"]["database"], names.database.as_str());
        assert_eq!(t["placement"]["role"], names.role.as_str());
        assert_eq!(t["storage_prefix"], format!("tenants/{id}/"));
        assert_eq!(
            t["schema_version"],
            portico_provisioning::migrations::latest_version()
        );
        let (db, role) = portico_provisioning::database::tenant_objects_exist(
            &self.server_admin().await,
            &names,
        )
        .await
        .expect("checking tenant objects");
        assert!(db && role, "database {db}, role {role} for {slug}");
        self.assert_key_and_prefix(slug, id).await;
        // The role logs in to its own database with its own password.
        let password = self
            .platform()
            .await
            .tenant_role_password(slug)
            .await
            .expect("role password");
        let client = self
            .server()
            .connect_as(
                &names.database,
                &names.role,
                secrecy::ExposeSecret::expose_secret(&password),
            )
            .await
            .expect("tenant role logs in to its own database");
        let row = client
            .query_one("select slug from tenant_profile", &[])
            .await
            .expect("reading the tenant profile");
        assert_eq!(row.get::<_, String>(0), slug);
        t
    }

    /// Nothing of the tenant is left anywhere: catalog rows, database, role, key, objects.
    /// The tenant's key is active and its prefix holds only the marker object.
    async fn assert_key_and_prefix(&self, slug: &str, id: TenantId) {
        let presence = tenant_key_presence(&self.keyring().await, id)
            .await
            .expect("key presence");
        assert!(
            matches!(presence, KeyPresence::Active(_)),
            "{slug}: key {presence:?}"
        );
        let objects = portico_provisioning::storage::prefix_objects(&self.store().await, id)
            .await
            .expect("listing the prefix");
        assert_eq!(
            objects
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>(),
            vec![format!("tenants/{id}/.portico-tenant")]
        );
    }

    /// [`TestEnv::assert_provisioned`] for a pooled tenant: its NOLOGIN role and its schemas in
    /// its shared database, its key and prefix, and its profile read in its context.
    async fn assert_pooled_provisioned(&self, slug: &str, t: Value) -> Value {
        let id: TenantId = t["id"].as_str().expect("id").parse().expect("tenant id");
        let names = TenantDbNames::for_tenant(id);
        assert_eq!(t["placement"]["role"], names.role.as_str());
        assert_eq!(t["placement"]["schema"], names.role.as_str());
        assert_eq!(
            t["schema_version"],
            portico_provisioning::migrations::latest_version()
        );
        let shared = t["placement"]["database"].as_str().expect("database");
        let inside = connect(&admin_url(shared)).await;
        let row = inside
            .query_one(
                "select (select not rolcanlogin from pg_roles where rolname = $1),
                        (select count(*) from pg_namespace where nspname::text in ($1::text, $1::text || '_audit'))",
                &[&names.role],
            )
            .await
            .expect("checking the tenant's role and schemas");
        assert_eq!(row.get::<_, Option<bool>>(0), Some(true), "{slug}: role");
        assert_eq!(row.get::<_, i64>(1), 2, "{slug}: schemas");
        self.assert_key_and_prefix(slug, id).await;
        let row = self
            .tenant_db(slug)
            .await
            .query_one("select slug from tenant_profile", &[])
            .await
            .expect("reading the tenant profile");
        assert_eq!(row.get::<_, String>(0), slug);
        t
    }

    pub async fn assert_no_trace(&self, id: TenantId) {
        let catalog = self.catalog().await;
        for table in [
            "tenants",
            "tenant_domains",
            "tenant_placements",
            "provisioning_runs",
        ] {
            let column = if table == "tenants" {
                "id"
            } else {
                "tenant_id"
            };
            let n: i64 = catalog
                .query_one(
                    &format!("select count(*) from {table} where {column} = $1"),
                    &[&id.as_uuid()],
                )
                .await
                .expect("counting catalog rows")
                .get(0);
            assert_eq!(n, 0, "{table} still has rows for {id}");
        }
        let names = TenantDbNames::for_tenant(id);
        let (db, role) = portico_provisioning::database::tenant_objects_exist(
            &self.server_admin().await,
            &names,
        )
        .await
        .expect("checking tenant objects");
        assert!(
            !db && !role,
            "orphaned database ({db}) or role ({role}) for {id}"
        );
        // Nor a schema in any shared database of the test server.
        let shared: Vec<String> = catalog
            .query(
                "select sd.database_name from shared_databases sd
                   join db_servers s on s.id = sd.db_server_id where s.ca_pem is null",
                &[],
            )
            .await
            .expect("shared databases")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let server = self.server_admin().await;
        for db in shared {
            // Recorded when the first tenant was reserved; made by its `role` step.
            let made: bool = server
                .query_one(
                    "select exists (select 1 from pg_database where datname = $1)",
                    &[&db],
                )
                .await
                .expect("databases")
                .get(0);
            if !made {
                continue;
            }
            let n: i64 = connect(&admin_url(&db))
                .await
                .query_one(
                    "select count(*) from pg_namespace where nspname::text in ($1::text, $1::text || '_audit')",
                    &[&names.role],
                )
                .await
                .expect("schemas")
                .get(0);
            assert_eq!(n, 0, "orphaned schema of {id} in {db}");
        }
        let presence = tenant_key_presence(&self.keyring().await, id)
            .await
            .expect("key presence");
        assert_eq!(presence, KeyPresence::Absent, "orphaned key for {id}");
        let objects = portico_provisioning::storage::prefix_objects(&self.store().await, id)
            .await
            .expect("listing the prefix");
        assert!(objects.is_empty(), "orphaned objects for {id}: {objects:?}");
        if self.backend == Backend::FileLocal {
            let dir = self.storage_root().join(format!("tenants/{id}"));
            assert!(!dir.exists(), "orphaned directory {}", dir.display());
        }
    }

    /// Removes what the test created: tenant databases, roles, keys, objects, the catalog.
    pub async fn cleanup(self) {
        let catalog = self.catalog().await;
        let ids: Vec<uuid::Uuid> = catalog
            .query("select id from tenants", &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        // Shared databases of pooled tenants on the test server (a test's own clusters go
        // with them), their pool roles after them.
        let shared: Vec<String> = catalog
            .query(
                "select sd.database_name from shared_databases sd
                   join db_servers s on s.id = sd.db_server_id where s.ca_pem is null",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        drop(catalog);
        let server = self.server_admin().await;
        for db in &shared {
            let _ = server
                .batch_execute(&format!("drop database if exists {db} with (force)"))
                .await;
        }
        let keyring = self.keyring().await;
        let store = self.store().await;
        for id in ids {
            let id = TenantId::from_uuid(id);
            let names = TenantDbNames::for_tenant(id);
            let _ = portico_provisioning::database::drop_database(&server, &names).await;
            let _ = portico_provisioning::database::drop_role(&server, &names).await;
            let _ = portico_provisioning::keys::destroy_tenant_key(&keyring, id).await;
            let _ = portico_provisioning::storage::destroy_prefix(&store, id).await;
        }
        for db in &shared {
            let _ = server
                .batch_execute(&format!("drop role if exists {db}"))
                .await;
        }
        let admin = connect(&admin_url("postgres")).await;
        let _ = admin
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.catalog_db
            ))
            .await;
    }
}

/// The longest any single CLI command may take in the tests before it is killed (a failure,
/// not a wait: commands finish in well under a second or two).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Kills process `pid` with SIGKILL unless disarmed (dropped) within `limit`, so a hung child
/// fails its test instead of hanging the whole suite. Not a synchronisation device: it only
/// fires when something is already wrong.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    pub fn arm(pid: u32, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: process {pid} still running after {limit:?}; killing it");
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        Self { _disarm: tx }
    }
}

/// `cmd.output()`, but killed (and so failing) if it runs longer than `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning portico");
    let _watchdog = Watchdog::arm(child.id(), limit);
    child.wait_with_output().expect("waiting for portico")
}

/// Runs a command to completion under [`COMMAND_LIMIT`].
pub trait RunBounded {
    fn run_bounded(&mut self) -> Run;
}

impl RunBounded for Command {
    fn run_bounded(&mut self) -> Run {
        Run::from(output_within(self, COMMAND_LIMIT))
    }
}

#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            success: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts a clean failure: non-zero exit, one `error: …` line mentioning `needle`.
    pub fn assert_error(&self, needle: &str) {
        assert!(
            !self.success,
            "expected failure, got success: {}",
            self.stdout
        );
        assert_eq!(self.code, Some(1), "stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got: {}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        assert!(
            lines[0].contains(needle),
            "'{}' should mention '{needle}'",
            lines[0]
        );
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn ensure_bucket() {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .endpoint_url(required("PORTICO_TEST_S3_ENDPOINT"))
            .force_path_style(true)
            .build(),
    );
    if s3.head_bucket().bucket(S3_BUCKET).send().await.is_err() {
        // A concurrent test may create it first; only a bucket that still is not there fails.
        let _ = s3.create_bucket().bucket(S3_BUCKET).send().await;
        s3.head_bucket()
            .bucket(S3_BUCKET)
            .send()
            .await
            .expect("creating the test bucket");
    }
}

/// A tenant id from `tenant show --json` output.
pub fn tenant_id(v: &Value) -> TenantId {
    v["id"].as_str().expect("id").parse().expect("tenant id")
}

#[test]
fn the_watchdog_kills_a_child_that_outlives_its_limit() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new("sleep").arg("600").spawn().expect("sleep");
    let _watchdog = Watchdog::arm(child.id(), Duration::from_millis(200));
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// A `portico serve` process of this environment, on free loopback ports. Killed when dropped.
pub struct Server {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub metrics: Option<std::net::SocketAddr>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr_seen: std::sync::Arc<std::sync::Condvar>,
    http: reqwest::Client,
    _watchdog: Watchdog,
}

/// An HTTP answer, with its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with this status and code, carrying the request id that
    /// the response header echoes.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert!(self.body["title"].is_string(), "{self:?}");
        assert_eq!(
            self.body["type"],
            format!("urn:portico:problem:{code}"),
            "{self:?}"
        );
        let rid = self.header("x-request-id").expect("x-request-id");
        assert_eq!(self.body["request_id"], rid, "{self:?}");
    }
}

impl TestEnv {
    /// Starts `portico serve` with this environment plus `extra` settings.
    pub fn serve(&self, extra: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut cmd = self.command();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("PORTICO_LOG", "info")
        .envs(extra.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning portico serve");
        let watchdog = Watchdog::arm(child.id(), Duration::from_secs(600));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stderr_seen = std::sync::Arc::new(std::sync::Condvar::new());
        {
            let pipe = child.stderr.take().expect("stderr");
            let (lines, seen) = (stderr.clone(), stderr_seen.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                    seen.notify_all();
                }
            });
        }
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || metrics.is_none() {
            let mut line = String::new();
            if out.read_line(&mut line).expect("reading serve output") == 0 {
                let _ = child.wait();
                panic!(
                    "portico serve exited before listening:\n{}",
                    stderr.lock().expect("lines").join("\n")
                );
            }
            if let Some(a) = line.trim().strip_prefix("listening on http://") {
                addr = Some(a.parse().expect("listen address"));
            }
            if let Some(a) = line.trim().strip_prefix("metrics on http://") {
                metrics = Some(
                    a.trim_end_matches("/metrics")
                        .parse()
                        .expect("metrics address"),
                );
            }
        }
        // Keep draining stdout so the process never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Server {
            child,
            addr: addr.expect("address"),
            metrics,
            stderr,
            stderr_seen,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            _watchdog: watchdog,
        }
    }

    /// Creates an API token of a tenant and returns its secret.
    pub fn tenant_token(&self, slug: &str, name: &str, role: &str) -> String {
        let v = self.json(&[
            "tenant", "token", "create", slug, "--name", name, "--role", role, "--json",
        ]);
        v["token"].as_str().expect("token").to_owned()
    }

    /// Creates an operator token and returns its secret.
    pub fn operator_token(&self, name: &str) -> String {
        let v = self.json(&["operator", "token", "create", name, "--json"]);
        v["token"].as_str().expect("token").to_owned()
    }
}

pub fn host_of(slug: &str) -> String {
    format!("{slug}.{BASE_DOMAIN}")
}

pub const OPERATOR_HOST: &str = "admin.portal.test";

impl Server {
    /// Sends a request with the given `Host`, bearer token and extra headers.
    pub async fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .header("host", host);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// The server process id (to read its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends raw bytes (or a stream) and returns status, headers and the raw body; a body that
    /// breaks off is an `Err` with what arrived before.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Result<Vec<u8>, Vec<u8>>) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .header("host", host);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        // A server that gives up on a response before its headers are flushed just closes the
        // connection: status 0, nothing received.
        let Ok(mut resp) = req.send().await else {
            return (0, reqwest::header::HeaderMap::new(), Err(Vec::new()));
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut got = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => return (status, headers, Ok(got)),
                Err(_) => return (status, headers, Err(got)),
            }
        }
    }

    pub async fn get(&self, host: &str, path: &str, token: Option<&str>) -> Answer {
        self.request(reqwest::Method::GET, host, path, token, &[], None)
            .await
    }

    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics.expect("metrics address");
        self.http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Blocks until a stderr line contains `needle` (or panics after `limit`: a failure, not
    /// a wait).
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut lines = self.stderr.lock().expect("lines");
        while !lines.iter().any(|l| l.contains(needle)) {
            let now = std::time::Instant::now();
            assert!(
                now < deadline,
                "'{needle}' not seen on stderr within {limit:?}:\n{}",
                lines.join("\n")
            );
            lines = self
                .stderr_seen
                .wait_timeout(lines, deadline - now)
                .expect("lines")
                .0;
        }
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("lines").clone()
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("waiting for portico serve")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what the server said last.
            let lines = self.stderr_lines();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "--- last lines of portico serve's stderr ---\n{}",
                tail.join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it returns true or `limit` passes; returns how long it took, or `None`.
/// For conditions that another process makes true (a notification, a connection closing):
/// the limit is what the test asserts, not a synchronisation pause.
pub async fn within<F, Fut>(limit: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if probe().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
