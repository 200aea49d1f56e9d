//! [`TenantConn`]: the one connection type store code is handed, with the tenant's context
//! ready, whichever tier the tenant is on.
//!
//! - **Dedicated tier.** The connection is logged in as the tenant's own role to the tenant's
//!   own database; its search path (`portico_audit, public, pg_temp`) is pinned at start-up.
//!   Statements go to the server as they are, prepared once per connection and kept.
//! - **Pooled tier.** The connection is logged in as the shared database's pool role, which
//!   holds no privileges of its own (`NOINHERIT`) and may only `SET ROLE` to the tenant roles
//!   of that database. Statements run in transactions that first set role and search path
//!   *transaction-locally*, pipelined with the first statement in one round trip:
//!
//!   ```text
//!   BEGIN READ ONLY; SELECT set_config('role', 't_…', true), set_config('search_path', '…', true)
//!   <a read, prepared>                                                  (Bind/Execute/Sync)
//!   <more reads of the request: no extra command>
//!   COMMIT; BEGIN; SELECT set_config(…)      <a write>      COMMIT       (one round trip)
//!   ```
//!
//!   - **Reads share one read-only transaction per request** (a borrow of the connection):
//!     the first opens it, the next ones run in it as they are. A statement is a read when its
//!     text begins with `SELECT` or `WITH`; PostgreSQL itself refuses a write in a read-only
//!     transaction (`25006`), and such a statement is then rolled back, run as a write and
//!     remembered as one, so a wrong guess costs one retry and never a write. Under `READ
//!     COMMITTED` each read still sees what was committed before it, as in autocommit.
//!   - **A write runs in a transaction of its own**, which first ends the open read-only one
//!     (`COMMIT; BEGIN; set_config` as one message) and is committed at once: what a request
//!     wrote stays written whatever its later statements do, as in autocommit.
//!   - **Errors.** A failed statement aborts its transaction; a failed read rolls back the
//!     read-only transaction at once (it held nothing but reads), a failed write's `COMMIT`
//!     rolls it back.
//!   - **Release.** When the connection goes back to its pool the open read-only transaction is
//!     rolled back together with the session clean-up (one message, off the request's path),
//!     and only then is the connection handed to the next borrower. A future dropped half-way
//!     (a cancelled query, an abandoned request) has sent everything on its first poll; an
//!     abandoned request's connection is closed instead.
//!   - Explicit transactions ([`TenantConn::transaction`]) end the open read-only one and set
//!     the context right after `BEGIN`; dropping one uncommitted sends `ROLLBACK`.
//!   - Statements are prepared inside the context of the tenant that first needs them (a table
//!     name resolves against its search path), cached per connection by their text alone, and
//!     re-analysed by PostgreSQL whenever the search path differs from the one they were last
//!     planned under (documented behaviour of prepared statements): a shared connection serving
//!     hundreds of tenants keeps one prepared statement per text instead of one per tenant and
//!     text, and a tenant new to the connection costs no extra round trip to prepare.
//!
//! Store code calls the same methods either way and cannot tell the tiers apart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement, Transaction};

/// Statements a connection keeps prepared; past this the oldest are closed.
const STATEMENT_CACHE: usize = 512;

/// Search path of a dedicated tenant's sessions: the audit schema first (the tenant role can
/// create nothing there, so no object of its own can stand in for the audit log), temporary
/// objects last.
pub const DEDICATED_SEARCH_PATH: &str = "portico_audit,public,pg_temp";

/// A pooled tenant's role and search path, as the statement that sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantContext {
    role: String,
    search_path: String,
    /// `SELECT set_config(…)` of role and search path, transaction-locally.
    set: String,
    /// `BEGIN;` and `set`, as one simple-query message (a write).
    begin: String,
    /// `COMMIT;` of the open read-only transaction, then `begin` (a write after reads).
    commit_begin: String,
    /// `BEGIN READ ONLY;` and `set` (the request's first read).
    begin_read: String,
}

impl TenantContext {
    /// The context of tenant role `role` whose objects are in `schema` (and its audit log in
    /// `<schema>_audit`).
    pub fn new(role: &str, schema: &str) -> Self {
        let search_path = format!(
            "{}, {}, pg_temp",
            escape_identifier(&format!("{schema}_audit")),
            escape_identifier(schema)
        );
        let set = format!(
            "SELECT set_config('role', {}, true), set_config('search_path', {}, true)",
            escape_literal(role),
            escape_literal(&search_path)
        );
        Self {
            role: role.to_owned(),
            search_path,
            begin: format!("BEGIN; {set}"),
            commit_begin: format!("COMMIT; BEGIN; {set}"),
            begin_read: format!("BEGIN READ ONLY; {set}"),
            set,
        }
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn search_path(&self) -> &str {
        &self.search_path
    }
}

/// SQL given to [`TenantConn`]: text, or a statement it prepared.
pub trait Sql: Sync {
    #[doc(hidden)]
    fn sql(&self) -> SqlRef<'_>;
}

#[doc(hidden)]
pub enum SqlRef<'a> {
    Text(&'a str),
    Prepared(&'a Statement),
}

impl Sql for str {
    fn sql(&self) -> SqlRef<'_> {
        SqlRef::Text(self)
    }
}

impl Sql for String {
    fn sql(&self) -> SqlRef<'_> {
        SqlRef::Text(self)
    }
}

impl Sql for Statement {
    fn sql(&self) -> SqlRef<'_> {
        SqlRef::Prepared(self)
    }
}

/// Prepared statements of one connection, by text (on a shared connection, one per text for
/// all its tenants: PostgreSQL re-analyses a statement run under another tenant's search
/// path). The oldest entries go first when it is full.
#[derive(Default)]
pub struct StatementCache(Mutex<(HashMap<String, Statement>, VecDeque<String>)>);

impl StatementCache {
    fn get(&self, key: &str) -> Option<Statement> {
        self.0.lock().ok()?.0.get(key).cloned()
    }

    fn put(&self, key: String, statement: Statement) {
        if let Ok(mut guard) = self.0.lock() {
            let (map, order) = &mut *guard;
            while map.len() >= STATEMENT_CACHE {
                match order.pop_front() {
                    Some(old) => {
                        map.remove(&old);
                    }
                    None => map.clear(),
                }
            }
            if map.insert(key.clone(), statement).is_none() {
                order.push_back(key);
            }
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut guard) = self.0.lock() {
            guard.0.remove(key);
            guard.1.retain(|k| k != key);
        }
    }
}

/// Statement texts that began like reads but wrote (refused in a read-only transaction):
/// they run as writes from then on. Bounded: past this, a text is simply retried each time.
const KNOWN_WRITES: usize = 4096;
static WRITES: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// How a pooled statement runs: in the request's read-only transaction, or as a write in a
/// transaction of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

/// The mode of a statement text: a read when it begins with `SELECT` or `WITH` and has not
/// been seen writing.
fn mode_of(sql: &str) -> Mode {
    let head = sql.trim_start();
    let begins = |word: &str| {
        head.get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word))
            && head[word.len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_')
    };
    let wrote = || WRITES.lock().map(|w| w.contains(sql)).unwrap_or(true);
    if (begins("select") || begins("with")) && !wrote() {
        Mode::Read
    } else {
        Mode::Write
    }
}

fn learn_write(sql: &str) {
    if let Ok(mut w) = WRITES.lock()
        && w.len() < KNOWN_WRITES
    {
        w.insert(sql.to_owned());
    }
}

/// A read that turned out to write (PostgreSQL refused it in the read-only transaction).
fn is_write_in_read_only(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
}

/// What a [`TenantConn`] talks through.
pub(crate) trait Session: Send + Sync {
    fn client(&self) -> &Client;
    fn client_mut(&mut self) -> &mut Client;
    fn statements(&self) -> &StatementCache;
}

/// A direct connection (commands of the control plane, tests): no pool, no budget.
struct Direct {
    client: Client,
    statements: StatementCache,
}

impl Session for Direct {
    fn client(&self) -> &Client {
        &self.client
    }
    fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }
    fn statements(&self) -> &StatementCache {
        &self.statements
    }
}

/// A connection taken from a plain deadpool-postgres pool (benchmark baselines).
struct Borrowed {
    obj: deadpool_postgres::Object,
    statements: StatementCache,
}

impl Session for Borrowed {
    fn client(&self) -> &Client {
        &self.obj
    }
    fn client_mut(&mut self) -> &mut Client {
        &mut self.obj
    }
    fn statements(&self) -> &StatementCache {
        &self.statements
    }
}

impl SessionHandle for Borrowed {
    fn release(self: Box<Self>, _: bool) {}
}

/// A connection of one tenant, in that tenant's context. See the module docs.
pub struct TenantConn {
    pub(crate) session: Option<Box<dyn SessionHandle>>,
    pub(crate) context: Option<Arc<TenantContext>>,
    /// The tenant's admission ([`crate::pools`]' gate), held while connected.
    pub(crate) _share: Option<crate::pools::GateGuard>,
    /// Whose connection this is, and that tenant's key: code handed a connection never needs
    /// a tenant id beside it that could disagree.
    pub(crate) tenant: portico_core::TenantId,
    pub(crate) key: portico_core::keys::TenantKeyRef,
    /// Pooled tier: the request's read-only transaction is open (see the module docs).
    pub(crate) reads_open: AtomicBool,
}

/// A session together with what to do when its [`TenantConn`] is dropped.
pub(crate) trait SessionHandle: Session {
    /// Called once, when the connection is dropped; `reads_open`: a read-only transaction in
    /// the tenant's context is still open on it.
    fn release(self: Box<Self>, reads_open: bool);
}

impl SessionHandle for Direct {
    /// The client goes with it, and its connection (with anything open on it) closes.
    fn release(self: Box<Self>, _: bool) {}
}

/// Runs one statement: as it is (dedicated), or prepared and scoped (pooled) as a read or a
/// write (a read that writes runs again as a write), prepared again once if a cached plan's
/// result type changed under it (a migration).
macro_rules! run {
    ($self:ident, $sql:ident, $method:ident, $params:ident) => {{
        let client = $self.client();
        // A statement prepared by the caller runs as a write (its text is not known here).
        let (statement, text) = match $sql.sql() {
            SqlRef::Prepared(s) => (s.clone(), None),
            // Text is prepared once per connection and kept (on both tiers): a statement
            // costs one round trip, not a Parse round trip before every execution.
            SqlRef::Text(text) => ($self.prepared(text).await?, Some(text.to_owned())),
        };
        let mode = text.as_deref().map_or(Mode::Write, mode_of);
        match $self
            .scoped(mode, client.$method(&statement, $params))
            .await
        {
            Err(e) if mode == Mode::Read && is_write_in_read_only(&e) => {
                if let Some(text) = &text {
                    learn_write(text);
                }
                $self
                    .scoped(Mode::Write, client.$method(&statement, $params))
                    .await
            }
            Err(e) if is_result_type_change(&e) => match (&text, $sql.sql()) {
                (Some(text), SqlRef::Text(_)) => {
                    $self.session().statements().forget(text);
                    let statement = $self.prepared(text).await?;
                    $self
                        .scoped(mode, client.$method(&statement, $params))
                        .await
                }
                _ => Err(e),
            },
            other => other,
        }
    }};
}

/// "cached plan must not change result type" (a table changed under a prepared statement) is
/// reported as `feature_not_supported`; any other error of that code fails again on the retry.
fn is_result_type_change(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
}

impl TenantConn {
    /// A connection opened outside the runtime's pools (the control plane's commands): as
    /// the tenant's own role to its database (`context` `None`), or to its shared database
    /// with the tenant's context.
    pub fn direct(
        client: Client,
        tenant: portico_core::TenantId,
        key: portico_core::keys::TenantKeyRef,
        context: Option<TenantContext>,
    ) -> Self {
        Self {
            session: Some(Box::new(Direct {
                client,
                statements: StatementCache::default(),
            })),
            context: context.map(Arc::new),
            _share: None,
            tenant,
            key,
            reads_open: AtomicBool::new(false),
        }
    }

    /// A dedicated tenant's connection from a plain deadpool-postgres pool logged in as the
    /// tenant's role (benchmark baselines, which measure without the runtime's pools).
    pub fn borrowed(
        obj: deadpool_postgres::Object,
        tenant: portico_core::TenantId,
        key: portico_core::keys::TenantKeyRef,
    ) -> Self {
        Self {
            session: Some(Box::new(Borrowed {
                obj,
                statements: StatementCache::default(),
            })),
            context: None,
            _share: None,
            tenant,
            key,
            reads_open: AtomicBool::new(false),
        }
    }

    /// The tenant this connection belongs to.
    pub fn tenant(&self) -> portico_core::TenantId {
        self.tenant
    }

    /// The tenant's key reference (for what is encrypted under the tenant's key).
    pub fn key_ref(&self) -> &portico_core::keys::TenantKeyRef {
        &self.key
    }

    /// Whether statements run in a pooled tenant's context (for tests and metrics).
    pub fn context(&self) -> Option<&TenantContext> {
        self.context.as_deref()
    }

    fn session(&self) -> &dyn SessionHandle {
        match &self.session {
            Some(s) => s.as_ref(),
            None => unreachable!("a TenantConn holds its session until dropped"),
        }
    }

    fn client(&self) -> &Client {
        self.session().client()
    }

    /// Runs `body` (which must send its one request when first polled) in the tenant's
    /// context: as a read in the request's read-only transaction (opened by this statement if
    /// none is, pipelined with it), or as a write in a transaction of its own (ending the
    /// read-only one; `BEGIN`/`set_config`, the statement and `COMMIT` pipelined).
    async fn scoped<R>(
        &self,
        mode: Mode,
        body: impl Future<Output = Result<R, tokio_postgres::Error>>,
    ) -> Result<R, tokio_postgres::Error> {
        let Some(ctx) = &self.context else {
            return body.await;
        };
        let client = self.client();
        match mode {
            Mode::Read => {
                // Set before anything is sent: a future dropped half-way leaves the flag
                // saying a transaction may be open, and the release rolls it back.
                let result = if self.reads_open.swap(true, Ordering::AcqRel) {
                    body.await
                } else {
                    let (begun, result) = tokio::join!(client.batch_execute(&ctx.begin_read), body);
                    begun.and(result)
                };
                if result.is_err() {
                    // The read-only transaction is aborted; it held nothing but reads. Should
                    // the rollback fail too, the connection is broken: the clean-up on release
                    // fails and closes it. The statement's own error is the one to report.
                    self.reads_open.store(false, Ordering::Release);
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                result
            }
            Mode::Write => {
                let begin = if self.reads_open.swap(false, Ordering::AcqRel) {
                    &ctx.commit_begin
                } else {
                    &ctx.begin
                };
                let (begun, result, committed) = tokio::join!(
                    client.batch_execute(begin),
                    body,
                    client.batch_execute("COMMIT")
                );
                begun?;
                let result = result?;
                committed?;
                Ok(result)
            }
        }
    }

    /// Ends the request's read-only transaction, if one is open (before a long wait on
    /// something else, such as an upload's body, so no lock outlives the reads).
    pub async fn end_reads(&self) -> Result<(), tokio_postgres::Error> {
        if self.reads_open.swap(false, Ordering::AcqRel) {
            self.client().batch_execute("COMMIT").await?;
        }
        Ok(())
    }

    /// The prepared statement for `sql` (in the tenant's context, on a shared connection),
    /// cached by its text alone on both tiers: PostgreSQL re-analyses a statement run under
    /// another search path than it was planned under. Parsing writes nothing: it runs in the
    /// read-only transaction.
    async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let cache = self.session().statements();
        if let Some(s) = cache.get(sql) {
            return Ok(s);
        }
        let statement = self.scoped(Mode::Read, self.client().prepare(sql)).await?;
        cache.put(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub async fn query<S: Sql + ?Sized>(
        &self,
        sql: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        run!(self, sql, query, params)
    }

    pub async fn query_one<S: Sql + ?Sized>(
        &self,
        sql: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        run!(self, sql, query_one, params)
    }

    pub async fn query_opt<S: Sql + ?Sized>(
        &self,
        sql: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        run!(self, sql, query_opt, params)
    }

    pub async fn execute<S: Sql + ?Sized>(
        &self,
        sql: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        run!(self, sql, execute, params)
    }

    /// A statement prepared on this connection (in the tenant's context), kept for reuse. In
    /// the pooled tier, statements passed as text are better: a prepared one runs as a write
    /// (its text, which says whether it reads, is not known here).
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.prepared(sql).await
    }

    /// Statements without parameters or results (simple query protocol), in the context.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.scoped(Mode::Write, self.client().batch_execute(sql))
            .await
    }

    /// A transaction in the tenant's context (set right after `BEGIN`, transaction-locally).
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, tokio_postgres::Error> {
        self.end_reads().await?;
        let context = self.context.clone();
        let session = match &mut self.session {
            Some(s) => s,
            None => unreachable!("a TenantConn holds its session until dropped"),
        };
        let tx = session.client_mut().transaction().await?;
        if let Some(ctx) = context {
            tx.batch_execute(&ctx.set).await?;
        }
        Ok(tx)
    }

    /// The session's own role and search path, read *outside* any tenant context: what the
    /// next borrower of a pooled connection would start from. For the leak tests.
    #[doc(hidden)]
    /// Returns the role, the search path and whether a transaction was left open.
    pub async fn session_state(&self) -> Result<(String, String, bool), String> {
        // One simple-query message: within one implicit transaction the two timestamps are
        // equal, unless a transaction was already open before it.
        let rows = self
            .client()
            .simple_query(
                "select current_user::text, current_setting('search_path'),
                        (transaction_timestamp() < statement_timestamp())::text",
            )
            .await
            .map_err(|e| e.to_string())?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .ok_or("no row")?;
        let text = |i: usize| row.get(i).unwrap_or_default().to_owned();
        Ok((text(0), text(1), text(2) == "true"))
    }
}

impl Drop for TenantConn {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.release(self.reads_open.load(Ordering::Acquire));
        }
    }
}
