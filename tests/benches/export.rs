//! Export and import benchmark: a dedicated tenant with 100,000 rows and 1 GiB of documents
//! (encrypted, on file storage), exported by `portico tenant export` (encrypted to an age
//! recipient) and imported by `portico tenant import`, each run as its own process so its
//! peak RSS is its own (`wait4`).
//!
//! Baselines, measured in the same run on the same cluster and storage:
//! - export: `pg_dump -Fd` of the tenant's database plus reading every object of its prefix
//!   raw (no decryption), one after the other;
//! - import: `pg_restore` of that dump into a fresh database plus writing every object raw to
//!   a new prefix.
//!
//! Printed: wall times, the ratios (targets: export ≤ 1.5×, import ≤ 2×) and the export's and
//! import's peak RSS (target for the export: ≤ 128 MiB). Each side runs twice, alternating;
//! the faster run of each counts.
//!
//! Run: `./infra/bench.sh export` (or `cargo bench --workspace --bench export`).
//! Knobs: `PORTICO_BENCH_ROWS` (100000), `PORTICO_BENCH_DOCS` (64), `PORTICO_BENCH_DOC_MIB`
//! (16).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use anyhow::Context;
use common::env_usize;
use portico_core::DbServerName;
use portico_platform::Platform;
use portico_platform::catalog::Tier;
use portico_platform::pgcluster::PgCluster;

const EXPORT_TARGET: f64 = 1.5;
const IMPORT_TARGET: f64 = 2.0;
const RSS_TARGET_MIB: f64 = 128.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start_with(100)).await??;
    let result = run(&cluster).await;
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    result
}

/// Runs a command to its end; returns its wall time and peak RSS (MiB).
fn measured(cmd: &mut Command) -> anyhow::Result<(Duration, f64)> {
    let t = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = i32::try_from(child.id())?;
    let (status, maxrss_kib) = wait_with_rusage(pid)?;
    let elapsed = t.elapsed();
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (status {status})"
    );
    drop(child);
    Ok((elapsed, maxrss_kib as f64 / 1024.0))
}

/// `wait4` on our own child: its exit status and peak RSS (KiB). The standard library waits
/// without resource usage, so this is the one call to libc the benchmarks make.
#[allow(unsafe_code)]
fn wait_with_rusage(pid: i32) -> anyhow::Result<(i32, libc::c_long)> {
    let mut status = 0;
    // SAFETY: `rusage` is plain old data (all-zero is valid) that wait4 only writes to, and
    // `status` is a valid out-pointer for the call's duration.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above; `pid` is a child of this process that nothing else reaps.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage.ru_maxrss));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}

/// A PostgreSQL client tool: beside the server binaries found, else on `PATH`.
fn pg_tool(bindir: &Path, name: &str) -> PathBuf {
    let beside = bindir.join(name);
    if beside.is_file() {
        beside
    } else {
        PathBuf::from(name)
    }
}

/// Reads every file under `dir` (raw), returns the bytes read.
fn read_all(dir: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 20];
    for entry in walk(dir)? {
        let mut f = std::fs::File::open(&entry)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// Copies every file under `from` to `to` (raw), each synced before the next like the
/// import's object writes (file storage syncs an object before it is visible).
fn write_all(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in walk(from)? {
        let dest = to.join(entry.strip_prefix(from)?);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        total += std::fs::copy(&entry, &dest)?;
        std::fs::File::open(&dest)?.sync_all()?;
    }
    Ok(total)
}

/// Writes `bytes` of incompressible data to a new file and syncs it: what putting an archive
/// of that size on this disk costs by itself.
fn write_synced(path: &Path, bytes: u64) -> anyhow::Result<Duration> {
    use std::io::Write;
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761) as u8;
    }
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64))?;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    let took = t.elapsed();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(took)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

async fn run(cluster: &PgCluster) -> anyhow::Result<()> {
    let rows = env_usize("PORTICO_BENCH_ROWS", 100_000).max(1);
    let docs = env_usize("PORTICO_BENCH_DOCS", 64).max(1);
    let doc_mib = env_usize("PORTICO_BENCH_DOC_MIB", 16).max(1);
    let data = tempfile::tempdir()?;
    let mut settings = common::bench_settings(cluster, data.path()).await?;
    settings.runtime.clamd = portico_core::settings::ClamdAddress::Disabled;
    settings.runtime.max_upload_bytes = 1 << 40;
    let platform = Arc::new(Platform::connect(settings.clone(), true).await?);
    portico_platform::db_servers::add(
        &platform,
        &DbServerName::parse("a")?,
        &cluster.url("postgres"),
        Some(80),
    )
    .await?;
    let target = common::provision_in(&platform, "exp", 1, "a", Some(Tier::Dedicated))
        .await?
        .remove(0);
    let conn = platform.connect_as_tenant(&target.slug).await?;
    conn.execute(
        "insert into tickets (id, title, description, created_by)
         select gen_random_uuid(), 'Ticket ' || i, repeat('Leaks since Monday. ', 5), 'bench'
           from generate_series(1, $1::int8) as i",
        &[&i64::try_from(rows)?],
    )
    .await?;
    let uploader = {
        use portico_tenant_runtime::store::{roles::RoleName, tokens};
        let (_, token) = tokens::create(&conn, "uploader", RoleName::admin(), None).await?;
        token.expose_secret().to_owned()
    };
    drop(conn);
    let (addr, server) = common::serve_tenant_hosts(&settings).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut block = vec![0u8; doc_mib << 20];
    for i in 0..docs {
        // Different content per document (not compressible, not deduplicated).
        for (j, b) in block.iter_mut().enumerate() {
            *b = (j as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(i as u32 * 97) as u8;
        }
        let r = http
            .post(format!(
                "http://{addr}/api/v1/documents?type=invoice&title=Doc%20{i}"
            ))
            .header("host", &target.host)
            .bearer_auth(&uploader)
            .header("content-type", "application/pdf")
            .body(block.clone())
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 201, "upload {i}: {}", r.status());
    }
    server.abort();
    let (tenant, _) = platform.tenant_key(&target.slug).await?;
    let db = format!("t_{}", tenant.simple());
    let objects = data.path().join(format!("storage/tenants/{tenant}"));
    println!(
        "export benchmark: dedicated tenant, {rows} rows, {docs} documents of {doc_mib} MiB ({} MiB), file storage, local keys",
        docs * doc_mib
    );

    let id = age::x25519::Identity::generate();
    let id_file = data.path().join("compliance.key");
    std::fs::write(&id_file, format!("{}\n", id.to_string().expose_secret()))?;
    let recipient = id.to_public().to_string();
    let bin = env!("CARGO_BIN_EXE_portico-under-test");
    let portico = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", data.path())
            .env("PORTICO_DATABASE_URL", cluster.url("portico"))
            .env("PORTICO_BASE_DOMAIN", common::BASE)
            .env(
                "PORTICO_STORAGE",
                format!("file://{}", data.path().join("storage").display()),
            )
            .env(
                "PORTICO_KMS",
                format!("local://{}", data.path().join("keys/master.key").display()),
            )
            .env("PORTICO_CLAMD", "none")
            .stdout(std::process::Stdio::null());
        c
    };
    let bindir = portico_platform::pgcluster::find_bindir()?;
    println!("PostgreSQL tools from {}", bindir.display());
    let work = data.path().join("work");
    std::fs::create_dir_all(&work)?;

    let (mut export_best, mut base_best, mut rss_export) = (Duration::MAX, Duration::MAX, 0.0f64);
    for round in 0..2 {
        let dump = work.join(format!("dump-{round}"));
        let t = Instant::now();
        let status = Command::new(pg_tool(&bindir, "pg_dump"))
            .args(["-Fd", "-f"])
            .arg(&dump)
            .arg(cluster.url(&db))
            .status()?;
        anyhow::ensure!(status.success(), "pg_dump failed");
        let read = read_all(&objects).with_context(|| format!("reading {}", objects.display()))?;
        base_best = base_best.min(t.elapsed());
        anyhow::ensure!(read >= (docs * doc_mib) as u64 * (1 << 20));

        let out = work.join(format!("export-{round}.tar.age"));
        let (took, rss) = measured(&mut portico(&[
            "tenant",
            "export",
            &target.slug,
            "--out",
            out.to_str().unwrap_or_default(),
            "--recipient",
            &recipient,
        ]))?;
        export_best = export_best.min(took);
        rss_export = rss_export.max(rss);
    }
    // Where the time goes: the same export unencrypted (no age layer).
    let plain_out = work.join("export-plain.tar");
    let (plain, _) = measured(&mut portico(&[
        "tenant",
        "export",
        &target.slug,
        "--out",
        plain_out.to_str().unwrap_or_default(),
        "--plaintext",
    ]))?;
    println!(
        "  (the same export --plaintext: {:.2} s; archive {} MiB)",
        plain.as_secs_f64(),
        std::fs::metadata(&plain_out)?.len() >> 20
    );
    // The baseline writes nothing the size of the documents; the export must write (and
    // sync) an archive of their size. What that write costs by itself, on this disk:
    let archive_bytes = std::fs::metadata(work.join("export-0.tar.age"))?.len();
    let write_only = write_synced(&work.join("write-only"), archive_bytes)?;
    let export_ratio = export_best.as_secs_f64() / base_best.as_secs_f64();
    let with_write = base_best + write_only;
    println!(
        "  (writing and syncing {} MiB raw: {:.2} s; pg_dump -Fd + raw object reads + that write: {:.2} s, the export {:.2}x of it)",
        archive_bytes >> 20,
        write_only.as_secs_f64(),
        with_write.as_secs_f64(),
        export_best.as_secs_f64() / with_write.as_secs_f64()
    );
    println!(
        "export: {:.2} s vs pg_dump -Fd + raw object reads {:.2} s: {export_ratio:.2}x (target <= {EXPORT_TARGET}x: {}); peak RSS {rss_export:.1} MiB (target <= {RSS_TARGET_MIB} MiB: {})",
        export_best.as_secs_f64(),
        base_best.as_secs_f64(),
        if export_ratio <= EXPORT_TARGET {
            "met"
        } else {
            "MISSED"
        },
        if rss_export <= RSS_TARGET_MIB {
            "met"
        } else {
            "MISSED"
        },
    );

    let (mut import_best, mut restore_best, mut rss_import) =
        (Duration::MAX, Duration::MAX, 0.0f64);
    let archive = work.join("export-0.tar.age");
    for round in 0..2 {
        let t = Instant::now();
        let restored = format!("restored_{round}");
        let status = Command::new(pg_tool(&bindir, "createdb"))
            .arg("--maintenance-db")
            .arg(cluster.url("postgres"))
            .arg(&restored)
            .status()?;
        anyhow::ensure!(status.success(), "createdb failed");
        let status = Command::new(pg_tool(&bindir, "pg_restore"))
            .args(["--no-owner", "-d"])
            .arg(cluster.url(&restored))
            .arg(work.join("dump-0"))
            .status()?;
        anyhow::ensure!(status.success(), "pg_restore failed");
        write_all(&objects, &work.join(format!("raw-{round}")))?;
        restore_best = restore_best.min(t.elapsed());

        let slug = format!("imp-{round}");
        let (took, rss) = measured(&mut portico(&[
            "tenant",
            "import",
            archive.to_str().unwrap_or_default(),
            "--slug",
            &slug,
            "--identity",
            id_file.to_str().unwrap_or_default(),
            "--tier",
            "dedicated",
        ]))?;
        import_best = import_best.min(took);
        rss_import = rss_import.max(rss);
    }
    // Where the import's time goes: creating an empty tenant is part of it.
    let (create, _) = measured(&mut portico(&[
        "tenant",
        "create",
        "bare",
        "--tier",
        "dedicated",
    ]))?;
    println!(
        "  (a bare `tenant create --tier dedicated`: {:.2} s)",
        create.as_secs_f64()
    );
    let import_ratio = import_best.as_secs_f64() / restore_best.as_secs_f64();
    println!(
        "import: {:.2} s vs pg_restore + raw object writes {:.2} s: {import_ratio:.2}x (target <= {IMPORT_TARGET}x: {}); peak RSS {rss_import:.1} MiB",
        import_best.as_secs_f64(),
        restore_best.as_secs_f64(),
        if import_ratio <= IMPORT_TARGET {
            "met"
        } else {
            "MISSED"
        },
    );
    Ok(())
}
