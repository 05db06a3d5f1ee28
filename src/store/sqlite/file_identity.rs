//! Which database file a store opened (device and inode), so that a file deleted or replaced
//! under a running store is noticed before the next write instead of silently written past.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::{Result, StoreError};

/// Which file the store opened: its path, device and inode.
pub(super) struct FileIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    pub(super) fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let m = std::fs::metadata(path)?;
        Ok(FileIdentity {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// An error when the path no longer names the file that was opened: a run that went on
    /// would write into a deleted file, or report progress the database at the path never saw.
    pub(super) fn check(&self) -> Result<()> {
        let path = self.path.display();
        let changed = |what: String| {
            Err(StoreError::FileChanged(format!(
                "the database file {path} {what} while munja had it open; writes since then \
                 are not in {path}. Restore the file (or `munja init` a new one) and run again"
            )))
        };
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == (self.dev, self.ino) => Ok(()),
            Ok(_) => changed("was replaced by another file".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => changed("was deleted".into()),
            Err(e) => changed(format!("can no longer be checked ({e})")),
        }
    }
}
