//! The tenant migrations are embedded by a macro (`refinery::embed_migrations!`), which cargo
//! does not watch: without this, a migration file added or changed would not reach an
//! incremental build.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/tenant");
}
