//! A throwaway PostgreSQL cluster in a temporary directory, started with the machine's own
//! PostgreSQL binaries (for `portico demo` and the provisioning benchmark). Password
//! authentication (SCRAM) on 127.0.0.1, so tenant role passwords are really checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Where to look for `initdb`/`pg_ctl`: `PATH`, `pg_config --bindir`, usual install paths.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has(&d) {
                return Ok(d);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    candidates.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    candidates.extend(
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
            "/usr/pgsql-17/bin",
            "/usr/pgsql-16/bin",
            "/usr/pgsql-15/bin",
        ]
        .map(PathBuf::from),
    );
    candidates.into_iter().find(|d| has(d)).ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via pg_config or under /usr/lib/postgresql; install PostgreSQL 15 or newer (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

const PG_HBA: &str = include_str!("../../infra/postgresql/pg_hba.conf");

pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    bindir: PathBuf,
    port: u16,
    password: String,
    /// PostgreSQL refuses to run as root; as root we run it as this system user.
    run_as: Option<String>,
}

impl PgCluster {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(200)
    }

    /// Starts a cluster allowing `max_connections` connections.
    pub fn start_with(max_connections: u32) -> anyhow::Result<Self> {
        Self::start_inner(max_connections, None)
    }

    /// Starts a cluster that also accepts TLS, with the given server certificate and key (PEM).
    pub fn start_with_tls(
        max_connections: u32,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<Self> {
        Self::start_inner(max_connections, Some((cert_pem, key_pem)))
    }

    fn start_inner(max_connections: u32, tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("portico-pg-")
            .tempdir()
            .context("creating a directory for the PostgreSQL cluster")?;
        let password = hex_token();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).context("writing the superuser password file")?;
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:"), &dir.path().display().to_string()])
                .status()
                .context("chown of the cluster directory")?;
            if !status.success() {
                bail!(
                    "cannot hand the cluster directory to the '{user}' system user (running as root)"
                );
            }
        }
        let data = dir.path().join("data");
        let mut cluster = Self {
            dir: Some(dir),
            bindir,
            port: 0,
            password,
            run_as,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        // Tenant roles may reach only the database named like them (same rules as
        // infra/postgresql/pg_hba.conf, which is where operators find them documented).
        let hba = data.join("pg_hba.conf");
        std::fs::write(&hba, PG_HBA).context("writing pg_hba.conf")?;
        if let Some(user) = &cluster.run_as {
            let status = Command::new("chown")
                .args([&format!("{user}:"), &hba.display().to_string()])
                .status()
                .context("chown of pg_hba.conf")?;
            if !status.success() {
                bail!("cannot hand pg_hba.conf to the '{user}' system user");
            }
        }
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            for (file, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(file);
                std::fs::write(&path, pem).with_context(|| format!("writing {file}"))?;
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .with_context(|| format!("restricting {file}"))?;
                if let Some(user) = &cluster.run_as {
                    let status = Command::new("chown")
                        .args([&format!("{user}:"), &path.display().to_string()])
                        .status()
                        .with_context(|| format!("chown of {file}"))?;
                    if !status.success() {
                        bail!("cannot hand {file} to the '{user}' system user");
                    }
                }
            }
            ssl = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
        }
        let port = free_port()?;
        cluster.port = port;
        let sockdir = cluster.path().display().to_string();
        let log = cluster.path().join("postgres.log").display().to_string();
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &format!(
                    "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockdir} -c max_connections={max_connections} -c fsync=on{ssl}"
                ),
                "start",
            ],
        )?;
        Ok(cluster)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.path().join("postgres.log")
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let bin = self.bindir.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let out = cmd
            .args(args)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "{tool} failed: {}",
                stderr.lines().last().unwrap_or("no output").trim()
            );
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data, socket, log); removed by [`PgCluster::stop`].
    pub fn dir(&self) -> &Path {
        self.path()
    }

    /// Superuser URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Stops the server (fast shutdown) and removes its directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if self.dir.is_none() {
            return Ok(());
        }
        let data = self.path().join("data").display().to_string();
        let result = self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
        if let Some(dir) = self.dir.take() {
            dir.close().context("removing the cluster directory")?;
        }
        result
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn hex_token() -> String {
    portico_core::keys::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
