//! The data plane (tenant resolution, per-tenant pools, SSO, sessions, portal API). A stub until
//! the routing issue: it may read the catalog and use tenant keys and storage through
//! `portico-core`, and it never creates or destroys tenant resources nor writes the catalog.
