//! Document content benchmark, two figures:
//!
//! 1. **Encryption cost.** Upload and download throughput of the document content pipeline
//!    (`portico_tenant_runtime::content`: segmenting, SHA-256, streaming to storage) with
//!    STREAM/AES-256-GCM encryption against the same pipeline storing plaintext, interleaved
//!    in the same run, on the file store and on S3 (SeaweedFS). Prints encrypted ÷ plaintext
//!    (target ≥ 0.9). Malware scanning is left out of both sides: it is the same work either
//!    way and would only dilute the ratio.
//! 2. **KMS calls per 10,000 document operations** of one tenant (5,000 new-content keys and
//!    5,000 key openings, as uploads and downloads ask for them) against moto's KMS, through
//!    the data-key cache the runtime uses (target ≤ 2).
//!
//! Run: `./infra/bench.sh documents` (starts SeaweedFS and moto). `PORTICO_BENCH_MIB` sets the
//! file size (default 64), `PORTICO_BENCH_ROUNDS` the rounds (default 5; medians are shown).

use std::time::{Duration, Instant};

use bytes::Bytes;
use portico_core::TenantId;
use portico_core::keys::{Keyring, TenantKeyRef, data_key_calls};
use portico_core::settings::{KmsSettings, StorageSettings};
use portico_core::storage::{ObjectKey, ObjectStore};
use portico_tenant_runtime::content::cipher::ObjectCipher;
use portico_tenant_runtime::content::datakeys::DataKeys;
use portico_tenant_runtime::content::{self, Segments};

const MIB: usize = 1 << 20;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

async fn up(
    store: &ObjectStore,
    key: &ObjectKey,
    cipher: Option<ObjectCipher>,
    chunk: &Bytes,
    mib: usize,
) -> anyhow::Result<Duration> {
    let body = futures_util::stream::iter((0..mib).map(|_| Ok::<_, std::io::Error>(chunk.clone())));
    let started = Instant::now();
    let stored = content::store(store, key, cipher, None, body, u64::MAX).await?;
    let took = started.elapsed();
    anyhow::ensure!(stored.size == (mib * MIB) as u64);
    Ok(took)
}

async fn down(
    store: &ObjectStore,
    key: &ObjectKey,
    cipher: Option<ObjectCipher>,
    mib: usize,
) -> anyhow::Result<Duration> {
    let size = (mib * MIB) as u64;
    let started = Instant::now();
    let mut s = Segments::open(store, key, cipher, size, 0, size - 1).await?;
    let mut n = 0u64;
    while let Some(piece) = s.next_piece().await? {
        n += piece.len() as u64;
    }
    let took = started.elapsed();
    anyhow::ensure!(n == size, "read {n} of {size} bytes");
    Ok(took)
}

async fn throughput(
    name: &str,
    store: &ObjectStore,
    mib: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let tenant = TenantId::random();
    let chunk = Bytes::from((0..MIB).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let data_key = portico_core::keys::random_bytes::<32>();
    let (mut pu, mut eu, mut pd, mut ed) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let version = uuid::Uuid::new_v4();
        let salt = portico_core::keys::random_bytes::<32>();
        let cipher = || ObjectCipher::new(&data_key, &salt, tenant, version);
        let pkey = ObjectKey::tenant_object(tenant, &format!("bench/plain-{round}"))?;
        let ekey = ObjectKey::tenant_object(tenant, &format!("bench/enc-{round}"))?;
        // Alternate which side goes first, so warm-up and drift hit both alike.
        if round % 2 == 0 {
            pu.push(up(store, &pkey, None, &chunk, mib).await?);
            eu.push(up(store, &ekey, Some(cipher()), &chunk, mib).await?);
            pd.push(down(store, &pkey, None, mib).await?);
            ed.push(down(store, &ekey, Some(cipher()), mib).await?);
        } else {
            eu.push(up(store, &ekey, Some(cipher()), &chunk, mib).await?);
            pu.push(up(store, &pkey, None, &chunk, mib).await?);
            ed.push(down(store, &ekey, Some(cipher()), mib).await?);
            pd.push(down(store, &pkey, None, mib).await?);
        }
        store.delete(&pkey).await?;
        store.delete(&ekey).await?;
    }
    let bytes = mib * MIB;
    let (pu, eu, pd, ed) = (
        mib_s(bytes, median(pu)),
        mib_s(bytes, median(eu)),
        mib_s(bytes, median(pd)),
        mib_s(bytes, median(ed)),
    );
    println!(
        "{name:<6} upload   plaintext {pu:8.1} MiB/s   encrypted {eu:8.1} MiB/s   ratio {:.3}",
        eu / pu
    );
    println!(
        "{name:<6} download plaintext {pd:8.1} MiB/s   encrypted {ed:8.1} MiB/s   ratio {:.3}",
        ed / pd
    );
    Ok(())
}

async fn kms_calls() -> anyhow::Result<()> {
    let endpoint = std::env::var("PORTICO_TEST_KMS_ENDPOINT")?;
    let keyring = Keyring::open(&KmsSettings::Aws {
        endpoint: Some(endpoint.parse()?),
    })
    .await?;
    let Keyring::Kms(kms) = &keyring else {
        anyhow::bail!("not KMS")
    };
    let key = kms.client().create_key().send().await?;
    let key_ref = TenantKeyRef::new(
        key.key_metadata()
            .map(|m| m.key_id().to_owned())
            .unwrap_or_default(),
    );
    let tenant = TenantId::random();
    // The runtime's defaults: a data key serves 15 minutes or 100,000 uses.
    let keys = DataKeys::new(keyring.clone(), Duration::from_secs(900), 100_000);
    let before = data_key_calls();
    let started = Instant::now();
    let mut wrapped = Vec::new();
    for i in 0..10_000 {
        if i % 2 == 0 {
            wrapped = keys
                .for_new_content(tenant, &key_ref)
                .await?
                .wrapped
                .clone();
        } else {
            keys.open(tenant, &key_ref, &wrapped).await?;
        }
    }
    let calls = data_key_calls() - before;
    println!(
        "KMS    {calls} data-key calls for 10,000 document operations of one tenant (target <= 2; {:.0} ms in all)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // Another process (or a cache that expired) opening the same key: one Decrypt.
    let cold = DataKeys::new(keyring, Duration::from_secs(900), 100_000);
    let before = data_key_calls();
    for _ in 0..1000 {
        cold.open(tenant, &key_ref, &wrapped).await?;
    }
    println!(
        "KMS    {} call(s) for 1,000 openings on a cold cache",
        data_key_calls() - before
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mib = env_num("PORTICO_BENCH_MIB", 64);
    let rounds = env_num("PORTICO_BENCH_ROUNDS", 5);
    println!("document content: {mib} MiB per transfer, {rounds} rounds, medians");
    let dir = tempfile::tempdir()?;
    let file = ObjectStore::from_settings(&StorageSettings::File {
        root: dir.path().to_path_buf(),
    })
    .await?;
    throughput("file", &file, mib, rounds).await?;
    let endpoint: url::Url = std::env::var("PORTICO_TEST_S3_ENDPOINT")?.parse()?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .endpoint_url(endpoint.as_str().trim_end_matches('/'))
            .force_path_style(true)
            .build(),
    );
    let _ = s3.create_bucket().bucket("portico-bench").send().await;
    let store = ObjectStore::from_settings(&StorageSettings::S3 {
        bucket: "portico-bench".into(),
        prefix: String::new(),
        endpoint: Some(endpoint),
    })
    .await?;
    throughput("s3", &store, mib, rounds).await?;
    kms_calls().await
}
