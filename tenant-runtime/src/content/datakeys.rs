//! Per-tenant data keys, cached so that key-service calls stay far below one per document
//! operation. Uploads share the tenant's *current* data key until it is `ttl` old or has been
//! used `max_uses` times, then a new one is generated (one `GenerateDataKey`). Downloads look
//! the plaintext up by the wrapped key's digest, so the versions written under one data key
//! cost at most one `Decrypt` per cache lifetime (none when the key was generated here).
//! Concurrent misses for the same key wait for one call (moka's `try_get_with`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use portico_core::TenantId;
use portico_core::keys::{KeyError, Keyring, TenantKeyRef};

/// The tenant's current data key for new content.
pub struct ActiveKey {
    pub plaintext: [u8; 32],
    pub wrapped: Vec<u8>,
    uses: AtomicU64,
}

#[derive(Clone)]
pub struct DataKeys {
    keyring: Keyring,
    active: Cache<TenantId, Arc<ActiveKey>>,
    opened: Cache<(TenantId, Vec<u8>), Arc<[u8; 32]>>,
    max_uses: u64,
}

fn digest(wrapped: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, wrapped)
        .as_ref()
        .to_vec()
}

impl DataKeys {
    pub fn new(keyring: Keyring, ttl: Duration, max_uses: u64) -> Self {
        Self {
            keyring,
            active: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            opened: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            max_uses,
        }
    }

    /// The data key for a new object of this tenant.
    pub async fn for_new_content(
        &self,
        tenant: TenantId,
        key: &TenantKeyRef,
    ) -> Result<Arc<ActiveKey>, KeyError> {
        loop {
            let k = self
                .active
                .try_get_with(tenant, async {
                    metrics::counter!("portico_data_key_calls_total", "call" => "generate")
                        .increment(1);
                    let dk = self.keyring.generate_data_key(tenant, key).await?;
                    let k = Arc::new(ActiveKey {
                        plaintext: dk.plaintext,
                        wrapped: dk.wrapped,
                        uses: AtomicU64::new(0),
                    });
                    self.opened
                        .insert((tenant, digest(&k.wrapped)), Arc::new(k.plaintext))
                        .await;
                    Ok::<_, KeyError>(k)
                })
                .await
                .map_err(|e| Arc::try_unwrap(e).unwrap_or(KeyError::Encrypt))?;
            if k.uses.fetch_add(1, Ordering::Relaxed) < self.max_uses {
                return Ok(k);
            }
            // Used up: retire it (only if it is still the current one) and make another.
            let retired = k.clone();
            self.active
                .invalidate_entries_if(move |t, v| *t == tenant && Arc::ptr_eq(v, &retired))
                .ok();
            self.active.remove(&tenant).await;
        }
    }

    /// The plaintext of a stored object's data key.
    pub async fn open(
        &self,
        tenant: TenantId,
        key: &TenantKeyRef,
        wrapped: &[u8],
    ) -> Result<Arc<[u8; 32]>, KeyError> {
        self.opened
            .try_get_with((tenant, digest(wrapped)), async {
                metrics::counter!("portico_data_key_calls_total", "call" => "decrypt").increment(1);
                let plain = self.keyring.decrypt_data_key(tenant, key, wrapped).await?;
                Ok::<_, KeyError>(Arc::new(plain))
            })
            .await
            .map_err(|e| Arc::try_unwrap(e).unwrap_or(KeyError::Decrypt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::keys::{LocalKeyring, data_key_calls};
    use portico_core::settings::KmsSettings;

    #[tokio::test]
    async fn keys_are_reused_until_their_use_limit_and_opened_once() {
        let dir = tempfile::tempdir().unwrap();
        let settings = KmsSettings::Local {
            master_key: dir.path().join("master.key"),
        };
        let keyring = Keyring::open(&settings).await.unwrap();
        let Keyring::Local(local) = &keyring else {
            unreachable!()
        };
        let tenant = TenantId::random();
        std::fs::create_dir_all(local.tenant_key_dir()).unwrap();
        let wrapped = local
            .wrap_tenant_key(tenant, &portico_core::keys::random_bytes())
            .unwrap();
        std::fs::write(local.tenant_key_path(tenant), wrapped).unwrap();
        let key = LocalKeyring::key_ref(tenant);
        let keys = DataKeys::new(keyring.clone(), Duration::from_secs(60), 3);
        let before = data_key_calls();
        let first: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| keys.for_new_content(tenant, &key)))
                .await
                .into_iter()
                .map(|k| k.unwrap().wrapped.clone())
                .collect();
        // Three concurrent uses: one key, one call.
        assert!(first.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(data_key_calls() - before, 1);
        // The fourth use gets a fresh key.
        let fourth = keys.for_new_content(tenant, &key).await.unwrap();
        assert_ne!(fourth.wrapped, first[0]);
        assert_eq!(data_key_calls() - before, 2);
        // Opening a key this cache made costs nothing; a cold cache opens it once.
        keys.open(tenant, &key, &first[0]).await.unwrap();
        assert_eq!(data_key_calls() - before, 2);
        let cold = DataKeys::new(keyring, Duration::from_secs(60), 3);
        for _ in 0..5 {
            let k = cold.open(tenant, &key, &first[0]).await.unwrap();
            assert_eq!(*k, keys.open(tenant, &key, &first[0]).await.unwrap()[..]);
        }
        assert_eq!(data_key_calls() - before, 3);
    }
}
