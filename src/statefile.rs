//! Small state files (flannel's saved delegate config, multinet's attachment records,
//! host-device's saved device, the dhcp daemon's leases, libcni's result cache): written
//! whole or not at all, so a crash mid-write never leaves a truncated file that a later
//! DEL would misread.

use anyhow::{Context, Result};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Replace `path` with `data` (mode 0600): a temp file beside it, synced, renamed over
/// it, and the directory synced so the rename survives a power cut. The directory is
/// created (0700) if needed.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("failed to write {}", path.display()))
}

/// The file's bytes, or `None` if it does not exist (any other failure is an error).
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Remove `path`; already gone is fine.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_read_remove() {
        let dir = std::env::temp_dir().join(format!("cnibox-statefile-{}", std::process::id()));
        let p = dir.join("sub/ctr1");
        assert_eq!(read_optional(&p).unwrap(), None);
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(read_optional(&p).unwrap().as_deref(), Some(&b"two"[..]));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp file left beside it.
        assert_eq!(fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(read_optional(&p).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
