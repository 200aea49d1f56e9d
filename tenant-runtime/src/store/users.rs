//! Users of this tenant, their identities, local credentials (argon2id, TOTP, lockout) and
//! invitations.
//!
//! A user is found by an identity: (SSO connection, subject) for single sign-on, or the local
//! e-mail for a local account. An e-mail claim from an IdP never links to another identity's
//! user: a first login through connection C creates a new user even when the e-mail matches a
//! user of another connection.

use crate::conn::TenantConn;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::ids::UserId;

use crate::error::RuntimeError;
use crate::store::roles::RoleName as Role;
use crate::store::roles::{Permission, Permissions};
use crate::store::tokens;

/// Failed local sign-ins before the account is locked.
pub const LOCK_AFTER: i32 = 5;
/// The first lock lasts this long, and doubles with each further failure (at most an hour).
const FIRST_LOCK: Duration = Duration::minutes(1);
const MAX_LOCK: Duration = Duration::hours(1);
/// How long an invitation link stays valid.
pub const INVITATION_TTL: Duration = Duration::days(7);
const INVITATION_PREFIX: &str = "pin_";
pub const MIN_PASSWORD_LEN: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub active: bool,
    /// Sites this user is limited to; `None`: every site.
    pub site_scope: Option<Vec<String>>,
}

fn user(row: &tokio_postgres::Row) -> Result<User, RuntimeError> {
    let role: String = row.get(3);
    let status: String = row.get(4);
    Ok(User {
        id: row.get(0),
        email: row.get(1),
        display_name: row.get(2),
        role: Role::parse(&role).ok_or_else(|| RuntimeError::Query {
            operation: "reading a user",
            message: format!("unknown role '{role}'"),
        })?,
        active: status == "active",
        site_scope: row.get(5),
    })
}

const USER_COLUMNS: &str = "u.id, u.email, u.display_name, u.role, u.status, u.site_scope";

pub async fn get(client: &TenantConn, id: UserId) -> Result<Option<User>, RuntimeError> {
    let row = client
        .query_opt(
            &format!("select {USER_COLUMNS} from users u where u.id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a user", e))?;
    row.as_ref().map(user).transpose()
}

/// A user with the permissions of their role, in one query (the session caller's hot path).
pub async fn with_permissions(
    client: &TenantConn,
    id: UserId,
) -> Result<Option<(User, Permissions)>, RuntimeError> {
    let row = client
        .query_opt(
            &format!(
                "select {USER_COLUMNS},
                        array(select p.permission from role_permissions p where p.role = u.role)
                   from users u where u.id = $1"
            ),
            &[&id],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a user", e))?;
    row.map(|r| {
        let perms: Vec<String> = r.get(6);
        Ok((
            user(&r)?,
            perms.iter().filter_map(|p| Permission::parse(p)).collect(),
        ))
    })
    .transpose()
}

/// The permissions of a role.
pub async fn permissions_of(client: &TenantConn, role: &Role) -> Result<Permissions, RuntimeError> {
    let rows = client
        .query(
            "select permission from role_permissions where role = $1",
            &[&role.as_str()],
        )
        .await
        .map_err(|e| RuntimeError::query("reading permissions", e))?;
    Ok(rows
        .iter()
        .filter_map(|r| Permission::parse(r.get::<_, &str>(0)))
        .collect())
}

/// Gives a user another role (which must exist).
pub async fn set_role(client: &TenantConn, id: UserId, role: &Role) -> Result<User, RuntimeError> {
    let row = client
        .query_opt(
            &format!("update users u set role = $2 where u.id = $1 returning {USER_COLUMNS}"),
            &[&id, &role.as_str()],
        )
        .await
        .map_err(|e| match RuntimeError::constraint_of(&e) {
            Some("users_role_fkey") => {
                RuntimeError::InvalidInput(format!("there is no role '{role}'"))
            }
            _ => RuntimeError::query("changing a role", e),
        })?
        .ok_or_else(|| RuntimeError::NotFound("no such user".into()))?;
    user(&row)
}

/// Limits a user to sites (`None`: every site). Every site must exist.
pub async fn set_sites(
    client: &TenantConn,
    id: UserId,
    sites: Option<&[String]>,
) -> Result<User, RuntimeError> {
    if let Some(sites) = sites {
        crate::store::sites::require_all(client, sites).await?;
    }
    let row = client
        .query_opt(
            &format!("update users u set site_scope = $2 where u.id = $1 returning {USER_COLUMNS}"),
            &[&id, &sites],
        )
        .await
        .map_err(|e| RuntimeError::query("changing sites", e))?
        .ok_or_else(|| RuntimeError::NotFound("no such user".into()))?;
    user(&row)
}

/// Deactivates one user and ends their sessions (their tokens stop working with it).
pub async fn deactivate_id(client: &mut TenantConn, id: UserId) -> Result<User, RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| RuntimeError::query("starting a transaction", e))?;
    let row = tx
        .query_opt(
            &format!(
                "update users u set status = 'deactivated' where u.id = $1 returning {USER_COLUMNS}"
            ),
            &[&id],
        )
        .await
        .map_err(|e| RuntimeError::query("deactivating a user", e))?
        .ok_or_else(|| RuntimeError::NotFound("no such user".into()))?;
    tx.execute("delete from sessions where user_id = $1", &[&id])
        .await
        .map_err(|e| RuntimeError::query("ending sessions", e))?;
    tx.commit()
        .await
        .map_err(|e| RuntimeError::query("committing", e))?;
    user(&row)
}

pub async fn list(client: &TenantConn) -> Result<Vec<User>, RuntimeError> {
    client
        .query(
            &format!("select {USER_COLUMNS} from users u order by u.created_at, u.email"),
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("listing users", e))?
        .iter()
        .map(user)
        .collect()
}

/// The user behind an SSO identity, created on first login (just-in-time provisioning) with
/// `role`; on later logins the role is set to `role` (mappings are evaluated on every login).
/// Returns the user and whether it was created.
pub async fn upsert_sso_user(
    client: &mut TenantConn,
    connection_id: Uuid,
    subject: &str,
    verified_email: Option<&str>,
    role: Role,
) -> Result<(User, bool), RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| RuntimeError::query("starting a transaction", e))?;
    let existing = tx
        .query_opt(
            &format!(
                "select {USER_COLUMNS} from user_identities i join users u on u.id = i.user_id
                  where i.connection_id = $1 and i.subject = $2 for update of u"
            ),
            &[&connection_id, &subject],
        )
        .await
        .map_err(|e| RuntimeError::query("finding an identity", e))?;
    let (row, created) = match existing {
        Some(row) => {
            let row = tx
                .query_one(
                    // A verified e-mail replaces the stored one unless another user holds it.
                    &format!(
                        "update users u set role = $2, last_login_at = now(),
                                email = case when $3::text is not null and not exists (
                                    select 1 from users o where o.id <> u.id and lower(o.email) = lower($3))
                                  then $3 else u.email end
                          where u.id = $1 returning {USER_COLUMNS}"
                    ),
                    &[&row.get::<_, Uuid>(0), &role.as_str(), &verified_email],
                )
                .await
                .map_err(|e| RuntimeError::query("updating a user", e))?;
            (row, false)
        }
        None => {
            let id = Uuid::new_v4();
            let row = tx
                .query_one(
                    // No e-mail (empty) unless verified and held by no other user.
                    &format!(
                        "insert into users as u (id, email, role, last_login_at)
                         values ($1, coalesce((select $2::text where $2::text is not null and not exists (
                                    select 1 from users o where lower(o.email) = lower($2::text))), ''),
                                 $3, now())
                         returning {USER_COLUMNS}"
                    ),
                    &[&id, &verified_email, &role.as_str()],
                )
                .await
                .map_err(|e| RuntimeError::query("creating a user", e))?;
            // Concurrent first logins of one identity: the unique index lets one win; the
            // other fails here and the browser retries into the existing user.
            tx.execute(
                "insert into user_identities (user_id, connection_id, subject) values ($1, $2, $3)",
                &[&id, &connection_id, &subject],
            )
            .await
            .map_err(|e| RuntimeError::query("linking an identity", e))?;
            (row, true)
        }
    };
    tx.commit()
        .await
        .map_err(|e| RuntimeError::query("committing a login", e))?;
    Ok((user(&row)?, created))
}

/// Deactivates a user by e-mail (every user with that e-mail) and ends their sessions.
pub async fn deactivate(client: &mut TenantConn, email: &str) -> Result<Vec<User>, RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| RuntimeError::query("starting a transaction", e))?;
    let rows = tx
        .query(
            &format!(
                "update users u set status = 'deactivated' where lower(u.email) = lower($1)
                 returning {USER_COLUMNS}"
            ),
            &[&email],
        )
        .await
        .map_err(|e| RuntimeError::query("deactivating a user", e))?;
    if rows.is_empty() {
        return Err(RuntimeError::NotFound(format!(
            "no user with e-mail '{email}'"
        )));
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    tx.execute("delete from sessions where user_id = any($1)", &[&ids])
        .await
        .map_err(|e| RuntimeError::query("ending sessions", e))?;
    tx.commit()
        .await
        .map_err(|e| RuntimeError::query("committing", e))?;
    rows.iter().map(user).collect()
}

// ---- passwords -------------------------------------------------------------------------------

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password (argon2id, random salt, PHC string). CPU-heavy: call it off the runtime's
/// worker threads.
pub fn hash_password(password: &SecretString) -> Result<String, RuntimeError> {
    let salt = SaltString::encode_b64(&portico_core::keys::random_bytes::<16>())
        .map_err(|_| RuntimeError::InvalidInput("salt".into()))?;
    argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| RuntimeError::InvalidInput("the password cannot be hashed".into()))
}

/// Checks a password against a stored PHC string (constant-time comparison inside argon2).
pub fn verify_password(password: &SecretString, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            argon2()
                .verify_password(password.expose_secret().as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A PHC hash of a random password, checked when the e-mail is unknown so that the answer
/// takes as long as for a known account.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = SecretString::from(hex::encode(portico_core::keys::random_bytes::<16>()));
        hash_password(&random).unwrap_or_default()
    })
}

pub fn check_password_policy(password: &SecretString, email: &str) -> Result<(), RuntimeError> {
    let p = password.expose_secret();
    if p.chars().count() < MIN_PASSWORD_LEN || p.len() > 1024 {
        return Err(RuntimeError::InvalidInput(format!(
            "a password must be {MIN_PASSWORD_LEN} to 1024 characters long"
        )));
    }
    if p.eq_ignore_ascii_case(email) {
        return Err(RuntimeError::InvalidInput(
            "a password must not be the e-mail address".into(),
        ));
    }
    Ok(())
}

/// A local account as sign-in sees it.
#[derive(Debug, Clone)]
pub struct LocalAccount {
    pub user: User,
    pub password_hash: String,
    pub totp_secret_ciphertext: Option<Vec<u8>>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<i64>,
    /// A new secret waiting for its first code (enrolment or re-enrolment).
    pub totp_pending_ciphertext: Option<Vec<u8>>,
    pub failed_attempts: i32,
    pub locked_until: Option<OffsetDateTime>,
}

pub async fn local_account(
    client: &TenantConn,
    email: &str,
) -> Result<Option<LocalAccount>, RuntimeError> {
    let row = client
        .query_opt(
            &format!(
                "select {USER_COLUMNS}, c.password_hash, c.totp_secret_ciphertext, c.totp_enabled,
                        c.totp_last_step, c.failed_attempts, c.locked_until,
                        c.totp_pending_ciphertext
                   from user_identities i join users u on u.id = i.user_id
                   join local_credentials c on c.user_id = u.id
                  where i.connection_id is null and lower(i.subject) = lower($1)"
            ),
            &[&email],
        )
        .await
        .map_err(|e| RuntimeError::query("finding a local account", e))?;
    row.map(|r| {
        Ok(LocalAccount {
            user: user(&r)?,
            password_hash: r.get(6),
            totp_secret_ciphertext: r.get(7),
            totp_enabled: r.get(8),
            totp_last_step: r.get(9),
            failed_attempts: r.get(10),
            locked_until: r.get(11),
            totp_pending_ciphertext: r.get(12),
        })
    })
    .transpose()
}

pub async fn local_account_by_user(
    client: &TenantConn,
    user_id: UserId,
) -> Result<Option<LocalAccount>, RuntimeError> {
    let email: Option<String> = client
        .query_opt(
            "select subject from user_identities where user_id = $1 and connection_id is null",
            &[&user_id],
        )
        .await
        .map_err(|e| RuntimeError::query("finding a local account", e))?
        .map(|r| r.get(0));
    match email {
        Some(e) => local_account(client, &e).await,
        None => Ok(None),
    }
}

/// Records a failed attempt; locks the account from the `LOCK_AFTER`th failure on, for a time
/// that doubles with every further failure. Returns the lock's end, if locked.
pub async fn record_failure(
    client: &TenantConn,
    user_id: UserId,
) -> Result<Option<OffsetDateTime>, RuntimeError> {
    let row = client
        .query_one(
            "update local_credentials set failed_attempts = failed_attempts + 1, updated_at = now()
              where user_id = $1 returning failed_attempts",
            &[&user_id],
        )
        .await
        .map_err(|e| RuntimeError::query("recording a failed sign-in", e))?;
    let failures: i32 = row.get(0);
    if failures < LOCK_AFTER {
        return Ok(None);
    }
    let doublings = (failures - LOCK_AFTER).min(10) as u32;
    let lock = (FIRST_LOCK * 2i32.pow(doublings)).min(MAX_LOCK);
    let until = OffsetDateTime::now_utc() + lock;
    client
        .execute(
            "update local_credentials set locked_until = $2 where user_id = $1",
            &[&user_id, &until],
        )
        .await
        .map_err(|e| RuntimeError::query("locking an account", e))?;
    Ok(Some(until))
}

pub async fn reset_failures(client: &TenantConn, user_id: UserId) -> Result<(), RuntimeError> {
    client
        .execute(
            "update local_credentials set failed_attempts = 0, locked_until = null,
                    updated_at = now() where user_id = $1",
            &[&user_id],
        )
        .await
        .map_err(|e| RuntimeError::query("resetting failures", e))?;
    client
        .execute(
            "update users set last_login_at = now() where id = $1",
            &[&user_id],
        )
        .await
        .map_err(|e| RuntimeError::query("recording a login", e))?;
    Ok(())
}

/// Stores a new, not yet confirmed TOTP secret (encrypted) beside the active one, which stays
/// in force until [`confirm_totp`] replaces it.
pub async fn set_pending_totp(
    client: &TenantConn,
    user_id: UserId,
    ciphertext: &[u8],
) -> Result<(), RuntimeError> {
    client
        .execute(
            "update local_credentials set totp_pending_ciphertext = $2, updated_at = now()
              where user_id = $1",
            &[&user_id, &ciphertext],
        )
        .await
        .map_err(|e| RuntimeError::query("storing a TOTP secret", e))?;
    Ok(())
}

/// Makes the pending secret the active one, if it is still the one the code was checked
/// against, and records the code's step as used. False if it changed meanwhile.
pub async fn confirm_totp(
    client: &TenantConn,
    user_id: UserId,
    pending: &[u8],
    step: i64,
) -> Result<bool, RuntimeError> {
    let n = client
        .execute(
            "update local_credentials
                set totp_secret_ciphertext = totp_pending_ciphertext, totp_pending_ciphertext = null,
                    totp_enabled = true, totp_last_step = $3, updated_at = now()
              where user_id = $1 and totp_pending_ciphertext = $2",
            &[&user_id, &pending, &step],
        )
        .await
        .map_err(|e| RuntimeError::query("enabling TOTP", e))?;
    Ok(n == 1)
}

/// Removes the second factor (active and pending).
pub async fn remove_totp(client: &TenantConn, user_id: UserId) -> Result<(), RuntimeError> {
    client
        .execute(
            "update local_credentials
                set totp_secret_ciphertext = null, totp_pending_ciphertext = null,
                    totp_enabled = false, updated_at = now()
              where user_id = $1",
            &[&user_id],
        )
        .await
        .map_err(|e| RuntimeError::query("removing TOTP", e))?;
    Ok(())
}

/// Marks a TOTP step as used (a code is accepted once) and, on enrolment, enables TOTP.
/// Returns false when the step was already used (replayed code).
pub async fn consume_totp_step(
    client: &TenantConn,
    user_id: UserId,
    step: i64,
    enable: bool,
) -> Result<bool, RuntimeError> {
    let n = client
        .execute(
            "update local_credentials
                set totp_last_step = $2, totp_enabled = totp_enabled or $3, updated_at = now()
              where user_id = $1 and (totp_last_step is null or totp_last_step < $2)",
            &[&user_id, &step, &enable],
        )
        .await
        .map_err(|e| RuntimeError::query("recording a TOTP code", e))?;
    Ok(n == 1)
}

// ---- invitations -----------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Invitation {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    /// Sites the user will be limited to (`None`: every site).
    pub sites: Option<Vec<String>>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && email.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Creates an invitation; the token (`pin_…`) is returned once and only its digest is kept.
pub async fn invite(
    client: &TenantConn,
    email: &str,
    role: Role,
    sites: Option<&[String]>,
) -> Result<(Invitation, SecretString), RuntimeError> {
    let email = email.trim();
    if !valid_email(email) {
        return Err(RuntimeError::InvalidInput(format!(
            "'{email}' is not an e-mail address"
        )));
    }
    if local_account(client, email).await?.is_some() {
        return Err(RuntimeError::Conflict(format!(
            "a local account for '{email}' already exists"
        )));
    }
    if let Some(sites) = sites {
        crate::store::sites::require_all(client, sites).await?;
    }
    let (secret, hash) = tokens::generate(INVITATION_PREFIX);
    let expires_at = OffsetDateTime::now_utc() + INVITATION_TTL;
    let id = Uuid::new_v4();
    client
        .execute(
            "insert into invitations (id, email, role, site_scope, token_hash, expires_at)
             values ($1, $2, $3, $4, $5, $6)",
            &[&id, &email, &role.as_str(), &sites, &hash, &expires_at],
        )
        .await
        .map_err(|e| match RuntimeError::constraint_of(&e) {
            Some("invitations_role_fkey") => {
                RuntimeError::InvalidInput(format!("there is no role '{role}'"))
            }
            _ => RuntimeError::query("creating an invitation", e),
        })?;
    Ok((
        Invitation {
            id,
            email: email.to_owned(),
            role,
            sites: sites.map(<[String]>::to_vec),
            expires_at,
        },
        secret,
    ))
}

/// The open invitation behind a presented token, if any.
pub async fn open_invitation(
    client: &TenantConn,
    token: &str,
) -> Result<Option<Invitation>, RuntimeError> {
    let Some(hash) = tokens::presented_digest(INVITATION_PREFIX, token) else {
        return Ok(None);
    };
    let row = client
        .query_opt(
            "select id, email, role, expires_at, site_scope from invitations
              where token_hash = $1 and accepted_at is null and expires_at > now()",
            &[&hash],
        )
        .await
        .map_err(|e| RuntimeError::query("reading an invitation", e))?;
    Ok(row.map(|r| Invitation {
        id: r.get(0),
        email: r.get(1),
        role: Role::parse(r.get::<_, &str>(2)).unwrap_or(Role::member()),
        sites: r.get(4),
        expires_at: r.get(3),
    }))
}

/// Accepts an invitation: consumes it (single use) and creates the local account, atomically.
pub async fn accept_invitation(
    client: &mut TenantConn,
    token: &str,
    password_hash: &str,
) -> Result<Option<User>, RuntimeError> {
    let Some(hash) = tokens::presented_digest(INVITATION_PREFIX, token) else {
        return Ok(None);
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| RuntimeError::query("starting a transaction", e))?;
    let Some(inv) = tx
        .query_opt(
            "update invitations set accepted_at = now()
              where token_hash = $1 and accepted_at is null and expires_at > now()
              returning id, email, role, site_scope",
            &[&hash],
        )
        .await
        .map_err(|e| RuntimeError::query("consuming an invitation", e))?
    else {
        return Ok(None);
    };
    let email: String = inv.get(1);
    let role: String = inv.get(2);
    let sites: Option<Vec<String>> = inv.get(3);
    let id = Uuid::new_v4();
    let row = tx
        .query_one(
            &format!(
                "insert into users as u (id, email, role, site_scope, last_login_at)
                 values ($1, $2, $3, $4, now())
                 returning {USER_COLUMNS}"
            ),
            &[&id, &email, &role, &sites],
        )
        .await
        .map_err(|e| RuntimeError::query("creating a user", e))?;
    tx.execute(
        "insert into user_identities (user_id, connection_id, subject) values ($1, null, $2)",
        &[&id, &email],
    )
    .await
    .map_err(|e| match RuntimeError::constraint_of(&e) {
        Some("user_identities_local_key") => {
            RuntimeError::Conflict(format!("a local account for '{email}' already exists"))
        }
        _ => RuntimeError::query("linking a local identity", e),
    })?;
    tx.execute(
        "insert into local_credentials (user_id, password_hash) values ($1, $2)",
        &[&id, &password_hash],
    )
    .await
    .map_err(|e| RuntimeError::query("storing a credential", e))?;
    tx.execute(
        "update invitations set accepted_by = $2 where id = $1",
        &[&inv.get::<_, Uuid>(0), &id],
    )
    .await
    .map_err(|e| RuntimeError::query("closing an invitation", e))?;
    tx.commit()
        .await
        .map_err(|e| RuntimeError::query("committing", e))?;
    Ok(Some(user(&row)?))
}

/// Creates a local account directly (the embedded demo's seed user).
pub async fn create_local(
    client: &TenantConn,
    email: &str,
    role: Role,
    password_hash: &str,
) -> Result<UserId, RuntimeError> {
    let id = UserId::random();
    client
        .execute(
            "insert into users (id, email, role) values ($1, $2, $3)",
            &[&id, &email, &role.as_str()],
        )
        .await
        .map_err(|e| RuntimeError::query("creating a user", e))?;
    client
        .execute(
            "insert into user_identities (user_id, connection_id, subject) values ($1, null, $2)",
            &[&id, &email],
        )
        .await
        .map_err(|e| RuntimeError::query("linking a local identity", e))?;
    client
        .execute(
            "insert into local_credentials (user_id, password_hash) values ($1, $2)",
            &[&id, &password_hash],
        )
        .await
        .map_err(|e| RuntimeError::query("storing a credential", e))?;
    Ok(id)
}
