//! Failures of unauthenticated requests — failed sign-ins, invalid document links, bad CSRF
//! tokens, unknown SSO connections — and what bounds them: rate limits on the paths that
//! produce them, and aggregation in the audit log.
//!
//! Anyone can send these requests, and each used to write an audit row that can never be
//! pruned (the log is append-only). Now:
//!
//! | step | what happens |
//! |---|---|
//! | admission ([`AnonymousFailures::admit`]) | per client address and per tenant token buckets on the anonymous paths; over the limit: `429 anonymous_rate_limited`, no database work |
//! | a failure ([`AnonymousFailures::note`]) | counted in a bucket keyed by (tenant, client address, event type, reason, minute); the first [`FULL_EVENTS`] of a bucket are recorded in full as before |
//! | the minute ends ([`AnonymousFailures::flush`], every sweep and at shutdown) | a bucket with more failures than were recorded writes one `anonymous_failures` event with the count of the rest, and is dropped |
//!
//! So a flood from one address writes at most `FULL_EVENTS + 1` rows per event type, reason
//! and minute, and the audit log still says how many there were. Buckets live in memory: an
//! instance killed mid-minute loses that minute's counts beyond the rows already written
//! (each instance aggregates on its own). The buckets are a bounded cache.

use crate::http::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::future::Cache;
use portico_core::TenantId;
use time::OffsetDateTime;

use crate::catalog::TenantRoute;
use crate::http::{KeyedLimiter, Problem, check_limit, keyed_limiter_per_minute};
use crate::pools::TenantPools;
use crate::store::audit;

/// Failures of one bucket recorded in full before the rest are only counted.
pub const FULL_EVENTS: u64 = 10;

/// Buckets kept at once (a bucket is about a hundred bytes).
const MAX_BUCKETS: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: TenantId,
    ip: Option<IpAddr>,
    event_type: audit::EventType,
    reason: String,
    /// Unix time of the minute's start.
    minute: i64,
}

struct Bucket {
    seen: AtomicU64,
    route: Arc<TenantRoute>,
}

/// The shared failure buckets and anonymous-path limiters of one runtime instance.
pub struct AnonymousFailures {
    buckets: Cache<Key, Arc<Bucket>>,
    per_ip: Option<Arc<KeyedLimiter<IpAddr>>>,
    per_tenant: Option<Arc<KeyedLimiter<TenantId>>>,
}

fn minute_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(60) * 60
}

impl AnonymousFailures {
    /// Limits per minute (bursts of the same size); 0 turns a limit off.
    pub fn new(per_ip_per_minute: u32, per_tenant_per_minute: u32) -> Self {
        Self {
            buckets: Cache::builder().max_capacity(MAX_BUCKETS).build(),
            per_ip: keyed_limiter_per_minute(per_ip_per_minute),
            per_tenant: keyed_limiter_per_minute(per_tenant_per_minute),
        }
    }

    /// Admission to an anonymous path: `429 anonymous_rate_limited` past the client address's
    /// or the tenant's budget.
    pub fn admit(&self, tenant: TenantId, ip: Option<IpAddr>) -> Result<(), Problem> {
        if let Some(ip) = ip {
            check_limit(self.per_ip.as_deref(), &ip, ErrorCode::AnonymousRateLimited)?;
        }
        check_limit(
            self.per_tenant.as_deref(),
            &tenant,
            ErrorCode::AnonymousRateLimited,
        )
    }

    /// Counts a failure; true when it is to be recorded in full (among the first
    /// [`FULL_EVENTS`] of its bucket), false when only counted.
    pub async fn note(
        &self,
        route: &Arc<TenantRoute>,
        ip: Option<IpAddr>,
        event_type: audit::EventType,
        reason: &str,
        now: OffsetDateTime,
    ) -> bool {
        let key = Key {
            tenant: route.tenant_id,
            ip,
            event_type,
            reason: reason.to_owned(),
            minute: minute_of(now),
        };
        let bucket = self
            .buckets
            .get_with(key, async {
                Arc::new(Bucket {
                    seen: AtomicU64::new(0),
                    route: route.clone(),
                })
            })
            .await;
        let n = bucket.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n > FULL_EVENTS {
            metrics::counter!("portico_anonymous_failures_aggregated_total").increment(1);
        }
        n <= FULL_EVENTS
    }

    /// Writes one `anonymous_failures` event for each bucket of a minute before `now`'s (all
    /// buckets when `all`, at shutdown) that counted more than it recorded, and drops them.
    pub async fn flush(&self, pools: &TenantPools, now: OffsetDateTime, all: bool) {
        let current = minute_of(now);
        let due: Vec<(Arc<Key>, Arc<Bucket>)> = self
            .buckets
            .iter()
            .filter(|(k, _)| all || k.minute < current)
            .collect();
        for (key, bucket) in due {
            self.buckets.invalidate(key.as_ref()).await;
            let seen = bucket.seen.load(Ordering::Relaxed);
            if seen <= FULL_EVENTS {
                continue;
            }
            let conn = match pools.get(&bucket.route).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(tenant_id = %key.tenant, error = %e, "cannot record aggregated failures");
                    continue;
                }
            };
            let minute = OffsetDateTime::from_unix_timestamp(key.minute)
                .ok()
                .and_then(|m| {
                    m.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
            let mut e = audit::Event::new(audit::EventType::AnonymousFailures, "-", false);
            e.client_ip = key.ip;
            e.target = Some(key.event_type.as_str());
            e.reason = Some(&key.reason);
            e.details = serde_json::json!({
                "event_type": key.event_type.as_str(),
                "minute": minute,
                "count": seen - FULL_EVENTS,
                "total": seen,
            });
            if let Err(err) = audit::record(&conn, &e).await {
                tracing::warn!(tenant_id = %key.tenant, error = %err, "cannot record aggregated failures");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_whole() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_099).unwrap();
        assert_eq!(minute_of(t), 1_700_000_040);
        assert_eq!(minute_of(t + time::Duration::seconds(1)), 1_700_000_100);
    }
}
