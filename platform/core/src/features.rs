//! Per-tenant feature flags: the registry of flags this release knows, and how a tenant's
//! state of a flag is decided. A tenant's own setting wins; else a fleet-wide rollout
//! percentage applies, stable by tenant id (raising it only adds tenants); else the flag's
//! default. The catalog stores settings and rollouts; the runtime carries the decided states
//! on each resolved tenant, so handlers read them without a query.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::TenantId;

/// A flag this release knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    pub name: &'static str,
    pub description: &'static str,
    /// The state of tenants that have no setting and no rollout.
    pub default: bool,
}

/// Every flag, by name. A flag gates a whole capability: its routes answer
/// `404 feature_disabled` for tenants that do not have it.
pub const FLAGS: &[Flag] = &[
    Flag {
        name: "tickets",
        description: "Service tickets: /api/v1/tickets and everything under it",
        default: true,
    },
    Flag {
        name: "data_exports",
        description: "Self-service exports of the organisation's data: /api/v1/exports and export links",
        default: true,
    },
];

/// The flag named `name`, or an error listing the known ones.
pub fn flag(name: &str) -> Result<&'static Flag, String> {
    FLAGS.iter().find(|f| f.name == name).ok_or_else(|| {
        let known: Vec<&str> = FLAGS.iter().map(|f| f.name).collect();
        format!(
            "unknown feature flag '{name}' (known: {})",
            known.join(", ")
        )
    })
}

/// Where a tenant's state of a flag comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Set for this tenant.
    Tenant,
    /// A fleet-wide rollout percentage.
    Rollout,
    /// The flag's default.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct State {
    pub enabled: bool,
    pub source: Source,
}

/// The tenant's bucket of a flag, 0 to 99: SHA-256 of the flag name and the tenant id. A
/// rollout of P percent enables the tenants whose bucket is below P.
pub fn bucket(flag: &str, tenant: TenantId) -> u8 {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(b"portico-feature-v1:");
    data.extend_from_slice(flag.as_bytes());
    data.push(b':');
    data.extend_from_slice(tenant.as_uuid().as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// The state of `flag` for `tenant`, given the tenant's own setting and the rollout, if any.
pub fn decide(flag: &Flag, tenant: TenantId, setting: Option<bool>, percent: Option<i32>) -> State {
    if let Some(enabled) = setting {
        return State {
            enabled,
            source: Source::Tenant,
        };
    }
    if let Some(p) = percent {
        return State {
            enabled: i32::from(bucket(flag.name, tenant)) < p,
            source: Source::Rollout,
        };
    }
    State {
        enabled: flag.default,
        source: Source::Default,
    }
}

/// A tenant's state of every known flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Features(pub BTreeMap<&'static str, State>);

impl Features {
    /// Decides every known flag from the tenant's settings and the rollouts (unknown names, set
    /// by a newer release, are ignored).
    pub fn decide(
        tenant: TenantId,
        settings: &BTreeMap<String, bool>,
        rollouts: &BTreeMap<String, i32>,
    ) -> Self {
        Self(
            FLAGS
                .iter()
                .map(|f| {
                    (
                        f.name,
                        decide(
                            f,
                            tenant,
                            settings.get(f.name).copied(),
                            rollouts.get(f.name).copied(),
                        ),
                    )
                })
                .collect(),
        )
    }

    /// Whether the flag is on (an unknown flag is off).
    pub fn enabled(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|s| s.enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_a_rollout_only_adds_tenants_and_settings_win() {
        let f = flag("tickets").expect("known");
        let tenants: Vec<TenantId> = (0..2000).map(|_| TenantId::random()).collect();
        let on = |p: i32| -> Vec<bool> {
            tenants
                .iter()
                .map(|t| decide(f, *t, None, Some(p)).enabled)
                .collect()
        };
        let (ten, fifty) = (on(10), on(50));
        assert!(ten.iter().zip(&fifty).all(|(a, b)| !a || *b), "10% ⊆ 50%");
        let n50 = fifty.iter().filter(|x| **x).count();
        assert!((800..1200).contains(&n50), "about half: {n50}");
        assert!(on(0).iter().all(|x| !x));
        assert!(on(100).iter().all(|x| *x));
        assert_eq!(
            decide(f, tenants[0], Some(false), Some(100)),
            State {
                enabled: false,
                source: Source::Tenant
            }
        );
        assert_eq!(decide(f, tenants[0], None, None).source, Source::Default);
        assert!(flag("no-such-flag").unwrap_err().contains("known: tickets"));
    }
}
