//! Three tenants created with the CLI get three databases, three roles, three keys and three
//! prefixes; each role reaches its own database and is refused on every other one (and on the
//! catalog). Run for both backend pairs.

use portico_core::TenantId;
use portico_provisioning::TenantDbNames;
use secrecy::ExposeSecret;

use crate::support::{Backend, TestEnv, admin_url, connect, tenant_id};

async fn three_tenants(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let slugs = ["alpha", "bravo", "charlie"];
    let mut outputs = String::new();
    for slug in slugs {
        outputs.push_str(&env.ok(&["tenant", "create", slug, "--name", &format!("{slug} Ltd")]));
    }
    let mut ids: Vec<TenantId> = Vec::new();
    for slug in slugs {
        let t = env.assert_provisioned(slug).await;
        assert_eq!(t["display_name"], format!("{slug} Ltd"));
        assert_eq!(t["domains"][0]["hostname"], format!("{slug}.portal.test"));
        ids.push(tenant_id(&t));
    }
    // Three distinct everything.
    let list = env.json(&["tenant", "list", "--json"]);
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 3);
    let distinct = |field: &str| {
        let mut v: Vec<String> = list.iter().map(|t| t[field].to_string()).collect();
        v.sort();
        v.dedup();
        v.len()
    };
    assert_eq!(distinct("key_id"), 3);
    assert_eq!(distinct("storage_prefix"), 3);

    let platform = env.platform().await;
    let server = env.server();
    let mut passwords = Vec::new();
    for slug in slugs {
        let pw = platform.tenant_role_password(slug).await.expect("password");
        assert!(
            !outputs.contains(pw.expose_secret()),
            "a role password was printed"
        );
        passwords.push(pw);
    }
    // Two independent layers refuse a tenant role outside its database: CONNECT revoked from
    // PUBLIC (always; checked through the ACL below too) and, on a server using
    // infra/postgresql/pg_hba.conf (the test cluster does), pg_hba.conf before that.
    let hardened = std::env::var("PORTICO_TEST_PG_HBA_HARDENED").is_ok_and(|v| v == "1");
    let refused = |e: &str| {
        e.contains("permission denied for database")
            || (hardened && e.contains("pg_hba.conf rejects connection"))
    };
    for (i, id) in ids.iter().enumerate() {
        let own = TenantDbNames::for_tenant(*id);
        for (j, other) in ids.iter().enumerate() {
            let target = TenantDbNames::for_tenant(*other);
            let result = server
                .connect_as(&target.database, &own.role, passwords[i].expose_secret())
                .await;
            if i == j {
                result.expect("own database");
            } else {
                let err = result.expect_err("another tenant's database must refuse the role");
                assert!(refused(&err.to_string()), "{err}");
            }
        }
        // Another tenant's password does not open this role either.
        let other_pw = &passwords[(i + 1) % passwords.len()];
        let err = server
            .connect_as(&own.database, &own.role, other_pw.expose_secret())
            .await
            .expect_err("wrong password");
        assert!(
            err.to_string().contains("password authentication failed"),
            "{err}"
        );
        // The catalog is out of reach.
        let err = server
            .connect_as(&env.catalog_db, &own.role, passwords[i].expose_secret())
            .await
            .expect_err("the catalog must refuse tenant roles");
        assert!(refused(&err.to_string()), "{err}");
        if hardened {
            for other in ["postgres", "template1"] {
                let err = server
                    .connect_as(other, &own.role, passwords[i].expose_secret())
                    .await
                    .expect_err("pg_hba.conf confines tenant roles to their own database");
                assert!(
                    err.to_string().contains("pg_hba.conf rejects connection"),
                    "{err}"
                );
            }
        }
    }

    // Role attributes, ownership, and what the catalog holds.
    let admin = connect(&admin_url("postgres")).await;
    for id in &ids {
        let names = TenantDbNames::for_tenant(*id);
        let row = admin
            .query_one(
                "select rolsuper, rolcreatedb, rolcreaterole, rolconnlimit, rolconfig::text,
                        (select count(*) from pg_shdepend s join pg_database d on d.oid = s.objid
                          where s.refobjid = r.oid and s.deptype = 'o' and s.classid = 'pg_database'::regclass
                            and d.datname <> $2)
                 from pg_roles r where rolname = $1",
                &[&names.role, &names.database],
            )
            .await
            .expect("role attributes");
        assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && !row.get::<_, bool>(2));
        assert_eq!(row.get::<_, i32>(3), 20);
        let config: String = row.get(4);
        assert!(config.contains("statement_timeout=30000ms"), "{config}");
        assert_eq!(row.get::<_, i64>(5), 0, "the role owns another database");
        let member: bool = admin
            .query_one(
                "select pg_has_role($1, 'portico_tenants', 'member')",
                &[&names.role],
            )
            .await
            .expect("membership")
            .get(0);
        assert!(member, "tenant roles belong to portico_tenants");
        // The database is the role's; its objects belong to `pg_database_owner`, i.e. to the
        // owner of this database and of no other.
        let inside = connect(&admin_url(&names.database)).await;
        let row = inside
            .query_one(
                "select pg_get_userbyid(d.datdba),
                        (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                          where n.nspname = 'public' and pg_get_userbyid(c.relowner) <> 'pg_database_owner'
),
                        (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                          where n.nspname = 'public' and c.relkind = 'r')
                 from pg_database d where d.datname = current_database()",
                &[],
            )
            .await
            .expect("ownership");
        assert_eq!(row.get::<_, String>(0), names.role, "database owner");
        assert_eq!(
            row.get::<_, i64>(1),
            0,
            "objects in public not owned by pg_database_owner (the audit log is in portico_audit)"
        );
        assert!(row.get::<_, i64>(2) >= 2, "the tenant schema is there");
        let public_connect: bool = admin
            .query_one(
                "select has_database_privilege('public', $1, 'connect')",
                &[&names.database],
            )
            .await
            .expect("acl")
            .get(0);
        assert!(!public_connect, "PUBLIC may connect to {}", names.database);
    }
    // Secrets are stored encrypted only.
    let catalog = env.catalog().await;
    for (slug, pw) in slugs.iter().zip(&passwords) {
        let ct: Vec<u8> = catalog
            .query_one(
                "select p.role_password_ciphertext from tenant_placements p join tenants t on t.id = p.tenant_id where t.slug = $1",
                &[slug],
            )
            .await
            .expect("ciphertext")
            .get(0);
        let needle = pw.expose_secret().as_bytes();
        assert!(!ct.windows(needle.len()).any(|w| w == needle));
    }
    let password_in_url = url::Url::parse(&admin_url("postgres"))
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .expect("the test cluster uses a password");
    let url_ct: Vec<u8> = catalog
        .query_one(
            "select admin_url_ciphertext from db_servers where name = 'default'",
            &[],
        )
        .await
        .expect("server row")
        .get(0);
    assert!(
        !url_ct
            .windows(password_in_url.len())
            .any(|w| w == password_in_url.as_bytes())
    );
    let shown = env.ok(&["db-server", "list", "--json"]);
    assert!(!shown.contains(&password_in_url), "{shown}");

    // Under KMS each tenant key sits behind its alias, and a ciphertext made for one tenant's
    // key does not decrypt under another tenant's id.
    if backend == Backend::S3Kms {
        let keyring = env.keyring().await;
        let t0 = env.json(&["tenant", "show", slugs[0], "--json"]);
        let key0 = portico_core::keys::TenantKeyRef::new(t0["key_id"].as_str().expect("key id"));
        let ct = keyring
            .encrypt_for_tenant(ids[0], &key0, b"bound to tenant 0")
            .await
            .expect("encrypt");
        assert!(
            keyring
                .decrypt_for_tenant(ids[1], &key0, &ct)
                .await
                .is_err()
        );
        assert_eq!(
            keyring
                .decrypt_for_tenant(ids[0], &key0, &ct)
                .await
                .expect("decrypt"),
            b"bound to tenant 0"
        );
        let portico_core::keys::Keyring::Kms(kms) = &keyring else {
            unreachable!()
        };
        for id in &ids {
            let alias = portico_core::keys::KmsKeyring::tenant_alias(*id);
            kms.client()
                .describe_key()
                .key_id(&alias)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{alias}: {e}"));
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn three_tenants_are_isolated_file_local() {
    three_tenants(Backend::FileLocal).await;
}

#[tokio::test]
async fn three_tenants_are_isolated_s3_kms() {
    three_tenants(Backend::S3Kms).await;
}
