//! `portico serve`: one process serving the tenant runtime (tenant hosts) and the operator API
//! (the operator host), or either alone, plus `/metrics` on its own address.
//!
//! [`Application::build`] connects, starts the runtime's background tasks and binds its
//! listeners (port 0 picks a free port; the bound ports are reported), then
//! [`Application::run_until_stopped`] serves until the shutdown future completes, letting
//! in-flight requests finish.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use portico_core::Settings;
use portico_http::{Problem, edge};
use portico_tenant_runtime::Runtime;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;

use crate::api::OperatorApi;
use crate::context::Platform;
use crate::error::{PlatformError, Result};

/// Which hosts this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    /// Tenant hosts and the operator host.
    All,
    /// Tenant hosts only.
    Tenant,
    /// The operator host only.
    Operator,
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub role: ServeRole,
    /// Apply the catalog migrations before serving (`serve --migrate`); otherwise only check
    /// that this binary may run against the catalog.
    pub migrate: bool,
}

pub struct Application {
    listener: TcpListener,
    metrics: Option<(TcpListener, PrometheusHandle)>,
    router: Router,
    runtime: Runtime,
    _platform: Arc<Platform>,
    role: ServeRole,
}

/// The process-wide Prometheus recorder (installed once; every `Application` in the process
/// reports through it).
fn prometheus() -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| PlatformError::InvalidState(format!("cannot set up metrics: {e}")))
}

impl Application {
    pub async fn build(settings: Settings, options: ServeOptions) -> Result<Self> {
        let rt = settings.runtime.clone();
        let platform = Arc::new(Platform::connect(settings.clone(), options.migrate).await?);
        let catalog = runtime_catalog_pool(&settings).await?;
        let state = runtime_state_pool(&settings).await?;
        let runtime = Runtime::start(
            &settings,
            catalog,
            state,
            platform.keyring.clone(),
            platform.store.clone(),
        )
        .with_exports(Arc::new(crate::exports::SelfService {
            platform: platform.clone(),
        }));

        let mut router = runtime.health_routes();
        if options.role != ServeRole::Operator {
            router = router.merge(runtime.tenant_routes());
        }
        if options.role != ServeRole::Tenant {
            let api = OperatorApi {
                platform: platform.clone(),
                operator_host: rt.operator_host.clone(),
            };
            router = router.merge(api.routes());
        }
        let router = router
            .fallback(|| async { Problem::not_found().into_response() })
            .layer(DefaultBodyLimit::max(rt.body_limit_bytes))
            .layer(axum::middleware::from_fn_with_state(
                runtime.edge.clone(),
                edge,
            ));

        let listener = bind(rt.listen).await?;
        let metrics = match rt.metrics_listen {
            Some(addr) => Some((bind(addr).await?, prometheus()?)),
            None => None,
        };
        Ok(Self {
            listener,
            metrics,
            router,
            runtime,
            _platform: platform,
            role: options.role,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| PlatformError::InvalidState(format!("no local address: {e}")))
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and waits for in-flight
    /// requests to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        // Aborted when this future ends or is dropped, so nothing keeps the runtime alive.
        let _metrics_task = self.metrics.map(|(listener, handle)| {
            let runtime = self.runtime.clone();
            let app = Router::new().route(
                "/metrics",
                get(move || {
                    let handle = handle.clone();
                    let runtime = runtime.clone();
                    async move { render_metrics(&handle, &runtime) }
                }),
            );
            AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }))
        });
        // The control plane anchors every tenant's audit chain head periodically (hourly; also
        // `portico audit anchor` on demand), unless this instance serves tenant hosts only.
        let _anchor_task = (self.role != ServeRole::Tenant).then(|| {
            let platform = self._platform.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    crate::audit_cli::anchor_all(&platform).await;
                }
            }))
        });
        // Tenants past their deletion grace are purged at start-up and every five minutes, by
        // one control-plane instance at a time (a catalog advisory lock; each purge also holds
        // its tenant's lock).
        let _purge_task = (self.role != ServeRole::Tenant).then(|| {
            let platform = self._platform.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
                loop {
                    tick.tick().await;
                    crate::deletion::purge_due_once(&platform).await;
                }
            }))
        });
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        // What is still only counted of anonymous failures reaches the audit log.
        self.runtime.flush_failures().await;
        served.map_err(|e| PlatformError::InvalidState(format!("server failed: {e}")))
    }
}

/// The runtime's own small catalog pool. Its sessions are read-only
/// (`default_transaction_read_only`), so the rule that the runtime never writes the catalog is
/// enforced by PostgreSQL, and operator work cannot starve it.
fn catalog_options(settings: &Settings) -> Result<PgConnectOptions> {
    settings
        .database_url
        .expose()
        .parse()
        .map_err(|e| PlatformError::catalog("reading the catalog URL", e))
}

pub async fn runtime_catalog_pool(settings: &Settings) -> Result<sqlx::PgPool> {
    let connect = catalog_options(settings)?;
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(
            connect
                .application_name("portico-runtime-catalog")
                .options([("default_transaction_read_only", "on")]),
        )
        .await
        .map_err(|e| PlatformError::catalog("connecting the runtime to the catalog", e))
}

/// The runtime's one writable control-plane pool: the shared SAML replay cache
/// (`saml_replay`) is its only use (see `identity::web::record_assertion`).
pub async fn runtime_state_pool(settings: &Settings) -> Result<sqlx::PgPool> {
    let connect = catalog_options(settings)?;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(connect.application_name("portico-runtime-state")))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| PlatformError::InvalidInput(format!("cannot listen on {addr}: {e}")))
}

fn render_metrics(handle: &PrometheusHandle, runtime: &Runtime) -> axum::response::Response {
    for s in runtime.pools.stats() {
        let server = s.db_server_id.to_string();
        let gauge = |state: &'static str, v: f64| {
            metrics::gauge!("portico_pool_connections", "db_server" => server.clone(), "state" => state)
                .set(v);
        };
        gauge("budget", f64::from(s.budget));
        gauge("open", f64::from(s.open));
        gauge("idle", s.idle as f64);
        gauge("waiting", s.waiting as f64);
        gauge("waiting_own", s.waiting_own as f64);
        metrics::gauge!("portico_pool_tenant_pools", "db_server" => server.clone())
            .set(s.tenant_pools as f64);
    }
    metrics::gauge!("portico_open_tenant_pools").set(runtime.pools.open_pools() as f64);
    metrics::gauge!("portico_catalog_listening").set(if runtime.listener.is_listening() {
        1.0
    } else {
        0.0
    });
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
