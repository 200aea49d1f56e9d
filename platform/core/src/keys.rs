//! Tenant keys and envelope encryption of small secrets (role passwords, server URLs).
//!
//! Two backends behind one [`Keyring`]:
//! - `local`: a master-key file (32 random bytes, mode 0600, refused when group/world
//!   readable) that wraps one random AES-256 key per tenant, kept in `tenant-keys/` next to it.
//!   Ciphertexts are AES-256-GCM with the tenant id as associated data.
//! - `aws-kms`: AWS KMS or a KMS-compatible endpoint; one customer-managed key per tenant
//!   behind the alias `alias/portico/tenant-<tenant-id>`, and the tenant id in the encryption
//!   context of every call.
//!
//! This module only *uses* keys. Creating and destroying them lives in `portico-provisioning`.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_sdk_kms::primitives::Blob;

use crate::ids::TenantId;
use crate::settings::KmsSettings;

/// Encryption-context key that binds every KMS call to a tenant.
pub const TENANT_CONTEXT_KEY: &str = "portico:tenant_id";
/// Encryption-context key for control-plane secrets.
pub const PURPOSE_CONTEXT_KEY: &str = "portico:purpose";
/// Alias of the control-plane key under `aws-kms`.
pub const PLATFORM_KEY_ALIAS: &str = "alias/portico/control-plane";
/// Tag put on every tenant key so it can be found even when its alias was never created.
pub const TENANT_TAG_KEY: &str = "portico:tenant_id";

const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master key file {path}: {message}")]
    MasterKey { path: String, message: String },
    #[error("tenant key for {tenant} does not exist")]
    TenantKeyMissing { tenant: TenantId },
    #[error("tenant key reference '{key_ref}' does not belong to tenant {tenant}")]
    ForeignKeyRef { tenant: TenantId, key_ref: String },
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("decryption failed: wrong key, wrong tenant or tampered ciphertext")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("KMS {operation}: {message}")]
    Kms {
        operation: &'static str,
        message: String,
    },
}

pub fn kms_err(operation: &'static str, e: impl std::error::Error + 'static) -> KeyError {
    KeyError::Kms {
        operation,
        message: crate::error_chain(&e),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // aws-lc's RNG only fails when the OS has no entropy source, which we cannot recover from.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// A reference to a tenant's key, as recorded in the catalog (a KMS key id, or
/// `local:tenant-<tenant-id>`). Not secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyRef(String);

impl TenantKeyRef {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone)]
pub enum Keyring {
    Local(LocalKeyring),
    Kms(KmsKeyring),
}

/// Counts calls to the key service (KMS requests, or uses of a local tenant key) made for data
/// keys, so that caching can be measured.
static DATA_KEY_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Data-key calls (`GenerateDataKey` and `Decrypt` of a data key) made by this process so far.
/// The purpose (encryption context) under which a shared database's pool-role password is
/// encrypted with the control-plane key: bound to that shared database's id.
pub fn pool_role_purpose(shared_database: uuid::Uuid) -> String {
    format!("pool-role:{shared_database}")
}

pub fn data_key_calls() -> u64 {
    DATA_KEY_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A fresh 256-bit data key: its plaintext (kept in memory only) and its ciphertext under the
/// tenant's key (stored next to what it encrypts).
pub struct DataKey {
    pub plaintext: [u8; 32],
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(l) => write!(f, "Keyring::Local({})", l.master_path.display()),
            Self::Kms(_) => f.write_str("Keyring::Kms"),
        }
    }
}

impl Keyring {
    /// Opens the keyring named by the settings. A missing local master key is created.
    pub async fn open(settings: &KmsSettings) -> Result<Self, KeyError> {
        match settings {
            KmsSettings::Local { master_key } => {
                let path = master_key.clone();
                let keyring = tokio::task::spawn_blocking(move || LocalKeyring::open(&path))
                    .await
                    .map_err(|e| io_err(master_key, std::io::Error::other(e)))??;
                Ok(Self::Local(keyring))
            }
            KmsSettings::Aws { endpoint } => {
                let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                let mut builder = aws_sdk_kms::config::Builder::from(&config);
                if let Some(endpoint) = endpoint {
                    builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
                }
                Ok(Self::Kms(KmsKeyring {
                    client: aws_sdk_kms::Client::from_conf(builder.build()),
                }))
            }
        }
    }

    /// Encrypts a small secret under the tenant's key, bound to the tenant id.
    pub async fn encrypt_for_tenant(
        &self,
        tenant: TenantId,
        key: &TenantKeyRef,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Local(l) => {
                l.check_ref(tenant, key)?;
                let k = l.load_tenant_key(tenant)?;
                seal(&k, &tenant_aad(tenant), plaintext)
            }
            Self::Kms(k) => {
                k.encrypt(
                    key.as_str(),
                    (TENANT_CONTEXT_KEY, &tenant.to_string()),
                    plaintext,
                )
                .await
            }
        }
    }

    /// Decrypts what [`Keyring::encrypt_for_tenant`] produced for the same tenant.
    pub async fn decrypt_for_tenant(
        &self,
        tenant: TenantId,
        key: &TenantKeyRef,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Local(l) => {
                l.check_ref(tenant, key)?;
                let k = l.load_tenant_key(tenant)?;
                open(&k, &tenant_aad(tenant), ciphertext)
            }
            Self::Kms(k) => {
                k.decrypt(
                    key.as_str(),
                    (TENANT_CONTEXT_KEY, &tenant.to_string()),
                    ciphertext,
                )
                .await
            }
        }
    }

    /// A new data key under the tenant's key: KMS `GenerateDataKey` (AES-256) with the tenant id
    /// in the encryption context, or random bytes wrapped by the local tenant key.
    pub async fn generate_data_key(
        &self,
        tenant: TenantId,
        key: &TenantKeyRef,
    ) -> Result<DataKey, KeyError> {
        DATA_KEY_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self {
            Self::Local(l) => {
                l.check_ref(tenant, key)?;
                let k = l.load_tenant_key(tenant)?;
                let plaintext = random_bytes::<32>();
                let wrapped = seal(&k, &data_key_aad(tenant), &plaintext)?;
                Ok(DataKey { plaintext, wrapped })
            }
            Self::Kms(k) => {
                let out = k
                    .client
                    .generate_data_key()
                    .key_id(key.as_str())
                    .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                    .encryption_context(TENANT_CONTEXT_KEY, tenant.to_string())
                    .send()
                    .await
                    .map_err(|e| kms_err("GenerateDataKey", e))?;
                let plaintext: [u8; 32] = out
                    .plaintext
                    .map(Blob::into_inner)
                    .and_then(|p| p.try_into().ok())
                    .ok_or(KeyError::Encrypt)?;
                let wrapped = out
                    .ciphertext_blob
                    .map(Blob::into_inner)
                    .ok_or(KeyError::Encrypt)?;
                Ok(DataKey { plaintext, wrapped })
            }
        }
    }

    /// The plaintext of a data key made by [`Keyring::generate_data_key`] for the same tenant.
    pub async fn decrypt_data_key(
        &self,
        tenant: TenantId,
        key: &TenantKeyRef,
        wrapped: &[u8],
    ) -> Result<[u8; 32], KeyError> {
        DATA_KEY_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let plain = match self {
            Self::Local(l) => {
                l.check_ref(tenant, key)?;
                let k = l.load_tenant_key(tenant)?;
                open(&k, &data_key_aad(tenant), wrapped)?
            }
            Self::Kms(k) => {
                k.decrypt(
                    key.as_str(),
                    (TENANT_CONTEXT_KEY, &tenant.to_string()),
                    wrapped,
                )
                .await?
            }
        };
        plain.try_into().map_err(|_| KeyError::Decrypt)
    }

    /// Encrypts a control-plane secret (for example a database server's admin URL). Under
    /// `aws-kms` this uses the key behind [`PLATFORM_KEY_ALIAS`], which provisioning creates.
    pub async fn encrypt_platform(
        &self,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Local(l) => seal(&l.master()?, &platform_aad(purpose), plaintext),
            Self::Kms(k) => {
                k.encrypt(
                    PLATFORM_KEY_ALIAS,
                    (PURPOSE_CONTEXT_KEY, purpose),
                    plaintext,
                )
                .await
            }
        }
    }

    pub async fn decrypt_platform(
        &self,
        purpose: &str,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Local(l) => open(&l.master()?, &platform_aad(purpose), ciphertext),
            Self::Kms(k) => {
                k.decrypt(
                    PLATFORM_KEY_ALIAS,
                    (PURPOSE_CONTEXT_KEY, purpose),
                    ciphertext,
                )
                .await
            }
        }
    }
}

fn tenant_aad(tenant: TenantId) -> Vec<u8> {
    format!("portico:tenant:{tenant}").into_bytes()
}

fn data_key_aad(tenant: TenantId) -> Vec<u8> {
    format!("portico:data-key:{tenant}").into_bytes()
}

fn platform_aad(purpose: &str) -> Vec<u8> {
    format!("portico:platform:{purpose}").into_bytes()
}

fn aead_key(bytes: &[u8]) -> Result<RandomizedNonceKey, KeyError> {
    RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Encrypt)
}

/// `version || nonce || ciphertext+tag`.
fn seal(key: &RandomizedNonceKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut in_out = plaintext.to_vec();
    let nonce = key
        .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
        .map_err(|_| KeyError::Encrypt)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&in_out);
    Ok(out)
}

fn open(key: &RandomizedNonceKey, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
    if ciphertext.len() < 1 + NONCE_LEN || ciphertext[0] != FORMAT_V1 {
        return Err(KeyError::Decrypt);
    }
    let nonce = Nonce::try_assume_unique_for_key(&ciphertext[1..1 + NONCE_LEN])
        .map_err(|_| KeyError::Decrypt)?;
    let mut in_out = ciphertext[1 + NONCE_LEN..].to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut in_out)
        .map_err(|_| KeyError::Decrypt)?;
    Ok(plain.to_vec())
}

/// The `local` key backend: a master key file and one wrapped key file per tenant.
#[derive(Clone)]
pub struct LocalKeyring {
    master_path: PathBuf,
    master: [u8; 32],
}

impl LocalKeyring {
    fn open(path: &Path) -> Result<Self, KeyError> {
        let mk = |message: String| KeyError::MasterKey {
            path: path.display().to_string(),
            message,
        };
        // Created once, atomically: processes starting together all read the same key.
        crate::files::create_once(path, &random_bytes::<32>(), 0o600)
            .map_err(|e| io_err(path, e))?;
        let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(mk(format!(
                "is readable or writable by group/others (mode {mode:o}); run `chmod 600 {}`",
                path.display()
            )));
        }
        let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
        let master: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| mk(format!("must hold exactly 32 bytes, found {}", bytes.len())))?;
        Ok(Self {
            master_path: path.to_path_buf(),
            master,
        })
    }

    fn master(&self) -> Result<RandomizedNonceKey, KeyError> {
        aead_key(&self.master)
    }

    /// Directory holding the wrapped tenant keys.
    pub fn tenant_key_dir(&self) -> PathBuf {
        self.master_path
            .parent()
            .unwrap_or(Path::new("/"))
            .join("tenant-keys")
    }

    pub fn tenant_key_path(&self, tenant: TenantId) -> PathBuf {
        self.tenant_key_dir().join(format!("tenant-{tenant}.key"))
    }

    /// The catalog reference of a tenant's local key.
    pub fn key_ref(tenant: TenantId) -> TenantKeyRef {
        TenantKeyRef(format!("local:tenant-{tenant}"))
    }

    fn check_ref(&self, tenant: TenantId, key: &TenantKeyRef) -> Result<(), KeyError> {
        if *key == Self::key_ref(tenant) {
            Ok(())
        } else {
            Err(KeyError::ForeignKeyRef {
                tenant,
                key_ref: key.0.clone(),
            })
        }
    }

    /// Wraps fresh tenant key material under the master key, bound to the tenant id.
    pub fn wrap_tenant_key(&self, tenant: TenantId, key: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        seal(&self.master()?, &wrap_aad(tenant), key)
    }

    fn load_tenant_key(&self, tenant: TenantId) -> Result<RandomizedNonceKey, KeyError> {
        let path = self.tenant_key_path(tenant);
        let wrapped = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(KeyError::TenantKeyMissing { tenant });
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let key = open(&self.master()?, &wrap_aad(tenant), &wrapped)?;
        aead_key(&key)
    }
}

fn wrap_aad(tenant: TenantId) -> Vec<u8> {
    format!("portico:tenant-key:{tenant}").into_bytes()
}

/// The `aws-kms` key backend.
#[derive(Clone)]
pub struct KmsKeyring {
    client: aws_sdk_kms::Client,
}

impl KmsKeyring {
    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// `alias/portico/tenant-<tenant-id>`.
    pub fn tenant_alias(tenant: TenantId) -> String {
        format!("alias/portico/tenant-{tenant}")
    }

    /// `Encrypt` under `key_id` with a one-entry encryption context.
    async fn encrypt(
        &self,
        key_id: &str,
        (context_key, context_value): (&str, &str),
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let out = self
            .client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plaintext))
            .encryption_context(context_key, context_value)
            .send()
            .await
            .map_err(|e| kms_err("Encrypt", e))?;
        out.ciphertext_blob
            .map(Blob::into_inner)
            .ok_or(KeyError::Encrypt)
    }

    /// `Decrypt` under `key_id`; the encryption context must match the one used to encrypt.
    async fn decrypt(
        &self,
        key_id: &str,
        (context_key, context_value): (&str, &str),
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .encryption_context(context_key, context_value)
            .send()
            .await
            .map_err(|e| kms_err("Decrypt", e))?;
        out.plaintext.map(Blob::into_inner).ok_or(KeyError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_master_key_is_created_private_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        let settings = KmsSettings::Local {
            master_key: path.clone(),
        };
        Keyring::open(&settings).await.unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::open(&settings).await.unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[tokio::test]
    async fn local_ciphertexts_are_bound_to_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let settings = KmsSettings::Local {
            master_key: dir.path().join("master.key"),
        };
        let Keyring::Local(local) = Keyring::open(&settings).await.unwrap() else {
            unreachable!()
        };
        let (a, b) = (TenantId::random(), TenantId::random());
        fs::create_dir_all(local.tenant_key_dir()).unwrap();
        for t in [a, b] {
            let wrapped = local.wrap_tenant_key(t, &random_bytes()).unwrap();
            fs::write(local.tenant_key_path(t), wrapped).unwrap();
        }
        let ring = Keyring::Local(local.clone());
        let ct = ring
            .encrypt_for_tenant(a, &LocalKeyring::key_ref(a), b"secret")
            .await
            .unwrap();
        assert_eq!(
            ring.decrypt_for_tenant(a, &LocalKeyring::key_ref(a), &ct)
                .await
                .unwrap(),
            b"secret"
        );
        // Another tenant's key reference, or another tenant's key, cannot open it.
        assert!(matches!(
            ring.decrypt_for_tenant(b, &LocalKeyring::key_ref(a), &ct)
                .await,
            Err(KeyError::ForeignKeyRef { .. })
        ));
        assert!(matches!(
            ring.decrypt_for_tenant(b, &LocalKeyring::key_ref(b), &ct)
                .await,
            Err(KeyError::Decrypt)
        ));
        // A wrapped key file moved to another tenant's name does not unwrap.
        fs::copy(local.tenant_key_path(a), local.tenant_key_path(b)).unwrap();
        assert!(
            ring.encrypt_for_tenant(b, &LocalKeyring::key_ref(b), b"x")
                .await
                .is_err()
        );
        let mut tampered = ct.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(
            ring.decrypt_for_tenant(a, &LocalKeyring::key_ref(a), &tampered)
                .await
                .is_err()
        );
    }
}

#[cfg(test)]
mod race_tests {
    use super::*;

    /// Processes starting at the same moment on a fresh machine all open the master key the
    /// first one creates; none may see a half-written file.
    #[test]
    fn concurrent_first_opens_agree_on_one_master_key() {
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keys/master.key");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        LocalKeyring::open(&path).map(|k| k.master)
                    })
                })
                .collect();
            let keys: Vec<[u8; 32]> = handles
                .into_iter()
                .map(|h| h.join().unwrap().expect("every opener succeeds"))
                .collect();
            assert!(keys.windows(2).all(|w| w[0] == w[1]), "openers disagree");
        }
    }
}
