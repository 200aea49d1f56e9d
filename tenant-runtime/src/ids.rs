//! Typed ids of the entities in a tenant's database. Each is a newtype over a UUID with one
//! parse point (a path segment, through [`parse`](UserId::parse)), stored and read as `uuid`,
//! serialised as the bare UUID: passing a document id where a user id belongs is a compile
//! error. (Tenant and run ids live in `portico-core`; they name control-plane things.)

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, accepts, to_sql_checked};
use uuid::Uuid;

/// An id that a path segment names: parsed once, where the path is read.
pub trait PathId: Sized {
    fn from_path(s: &str) -> Option<Self>;
}

impl PathId for Uuid {
    fn from_path(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok()
    }
}

/// [`portico_core::uuid_id!`] plus what a tenant-database id needs: a path-segment parse,
/// and `ToSql`/`FromSql` as `uuid`.
macro_rules! tenant_id_type {
    ($(#[$doc:meta])* $name:ident) => {
        portico_core::uuid_id!($(#[$doc])* $name);

        impl $name {
            /// The id in a path segment or other text, if it is one.
            pub fn parse(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }

        impl PathId for $name {
            fn from_path(s: &str) -> Option<Self> {
                Self::parse(s)
            }
        }

        impl ToSql for $name {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_uuid().to_sql(ty, out)
            }
            accepts!(UUID);
            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(
                ty: &Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Uuid::from_sql(ty, raw).map(Self::from_uuid)
            }
            accepts!(UUID);
        }
    };
}

tenant_id_type!(
    /// A user of the tenant (local or SSO).
    UserId
);
tenant_id_type!(
    /// A document (its metadata; content lives in its versions).
    DocumentId
);
tenant_id_type!(
    /// One version of a document (one stored, encrypted object).
    VersionId
);
tenant_id_type!(
    /// A four-eyes approval request.
    ApprovalId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_once_and_serialise_as_the_bare_uuid() {
        let id = UserId::random();
        assert_eq!(UserId::parse(&id.to_string()), Some(id));
        assert_eq!(UserId::parse("not-a-uuid"), None);
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!(id.as_uuid())
        );
        assert!(format!("{id:?}").starts_with("UserId("));
    }
}
