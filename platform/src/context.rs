//! The control plane's handles, built once from settings: catalog, keyring, object store.

use portico_core::Settings;
use portico_core::keys::Keyring;
use portico_core::storage::ObjectStore;

use crate::catalog::Catalog;
use crate::error::Result;

pub struct Platform {
    pub settings: Settings,
    pub catalog: Catalog,
    pub keyring: Keyring,
    pub store: ObjectStore,
    /// Admin handles (with their connection pools) of the servers used so far, by server id.
    /// Bounded by the number of registered servers.
    pub(crate) servers:
        std::sync::Mutex<std::collections::HashMap<uuid::Uuid, portico_provisioning::DbServer>>,
}

impl Platform {
    /// Connects to the catalog, opens the keyring and the object store. With `migrate`, applies
    /// the catalog migrations first (`portico migrate`, `serve --migrate`, the demo); without,
    /// checks that this binary may run against the catalog as it is (see
    /// [`Catalog::check_release`]). Makes no calls to KMS or S3: read commands stay reads.
    pub async fn connect(settings: Settings, migrate: bool) -> Result<Self> {
        let catalog = Catalog::connect(&settings.database_url).await?;
        if migrate {
            catalog.migrate().await?;
        } else {
            catalog.check_release(false).await?;
        }
        let keyring = Keyring::open(&settings.kms).await?;
        let store = ObjectStore::from_settings(&settings.storage).await?;
        Ok(Self {
            settings,
            catalog,
            keyring,
            store,
            servers: Default::default(),
        })
    }
}
