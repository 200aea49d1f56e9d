//! Feature flags in the catalog: per-tenant settings and fleet-wide rollout percentages (the
//! registry and the decision rule are `portico_core::features`). Every change is announced on
//! the catalog channel by triggers, so running instances see it within a second.

use std::collections::BTreeMap;

use portico_core::features::{self, Features, Source};
use serde::Serialize;

use crate::context::Platform;
use crate::error::{PlatformError, Result};

/// One flag as `tenant feature list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureView {
    pub name: &'static str,
    pub description: &'static str,
    pub enabled: bool,
    pub source: Source,
    /// The fleet-wide rollout percentage, if one is set.
    pub rollout_percent: Option<i32>,
}

async fn tenant(p: &Platform, slug: &str) -> Result<crate::catalog::TenantRow> {
    p.catalog
        .tenant_by_slug(slug)
        .await?
        .filter(|t| t.status != "deleted")
        .ok_or_else(|| PlatformError::TenantNotFound(slug.to_owned()))
}

fn flag(name: &str) -> Result<&'static features::Flag> {
    features::flag(name).map_err(PlatformError::InvalidInput)
}

/// Sets (`Some`) or clears (`None`: back to the rollout or the default) a tenant's flag.
pub async fn set_for_tenant(
    p: &Platform,
    slug: &str,
    name: &str,
    enabled: Option<bool>,
) -> Result<Vec<FeatureView>> {
    let f = flag(name)?;
    let t = tenant(p, slug).await?;
    let q = match enabled {
        Some(on) => sqlx::query(
            "insert into tenant_features (tenant_id, flag, enabled) values ($1, $2, $3)
             on conflict on constraint tenant_features_pkey
             do update set enabled = excluded.enabled, updated_at = now()",
        )
        .bind(t.id)
        .bind(f.name)
        .bind(on),
        None => sqlx::query("delete from tenant_features where tenant_id = $1 and flag = $2")
            .bind(t.id)
            .bind(f.name),
    };
    q.execute(p.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("setting a feature flag", e))?;
    list_for_tenant(p, slug).await
}

/// Sets the fleet-wide rollout of a flag (0–100 % of tenants, stable by tenant id), or clears
/// it (`None`: the flag's default again for tenants without their own setting).
pub async fn set_rollout(p: &Platform, name: &str, percent: Option<i32>) -> Result<()> {
    let f = flag(name)?;
    if let Some(pc) = percent
        && !(0..=100).contains(&pc)
    {
        return Err(PlatformError::InvalidInput(format!(
            "--percent {pc} is not between 0 and 100"
        )));
    }
    let q = match percent {
        Some(pc) => sqlx::query(
            "insert into feature_rollouts (flag, percent) values ($1, $2)
             on conflict on constraint feature_rollouts_pkey
             do update set percent = excluded.percent, updated_at = now()",
        )
        .bind(f.name)
        .bind(pc),
        None => sqlx::query("delete from feature_rollouts where flag = $1").bind(f.name),
    };
    q.execute(p.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("setting a feature rollout", e))?;
    Ok(())
}

/// Every known flag as the tenant has it.
pub async fn list_for_tenant(p: &Platform, slug: &str) -> Result<Vec<FeatureView>> {
    let t = tenant(p, slug).await?;
    let settings: BTreeMap<String, bool> = sqlx::query_as::<_, (String, bool)>(
        "select flag, enabled from tenant_features where tenant_id = $1",
    )
    .bind(t.id)
    .fetch_all(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading feature flags", e))?
    .into_iter()
    .collect();
    let rollouts = rollouts(p).await?;
    let decided = Features::decide(t.tenant_id(), &settings, &rollouts);
    Ok(features::FLAGS
        .iter()
        .filter_map(|f| {
            let s = decided.0.get(f.name)?;
            Some(FeatureView {
                name: f.name,
                description: f.description,
                enabled: s.enabled,
                source: s.source,
                rollout_percent: rollouts.get(f.name).copied(),
            })
        })
        .collect())
}

/// The fleet-wide rollouts, by flag.
pub async fn rollouts(p: &Platform) -> Result<BTreeMap<String, i32>> {
    Ok(
        sqlx::query_as::<_, (String, i32)>("select flag, percent from feature_rollouts")
            .fetch_all(p.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("reading feature rollouts", e))?
            .into_iter()
            .collect(),
    )
}
