//! Creating a small file exactly once, atomically: concurrent creators never see a partial
//! file, and the first complete one wins. Used for key files (the master key, wrapped tenant
//! keys), which must never be overwritten.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes `bytes` to `path` with `mode` unless `path` already exists; returns whether this call
/// created it. The content goes to a temporary file in the same directory (created with mode
/// 0700 if missing), is synced, then hard-linked into place — `link` fails if the name exists,
/// so a concurrent creator that lost keeps the winner's file. The directory is synced after.
pub fn create_once(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let suffix = crate::keys::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let tmp = dir.join(format!(".{name}.tmp-{}-{suffix}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    });
    let _ = std::fs::remove_file(&tmp);
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    linked
}
