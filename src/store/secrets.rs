//! Passwords, kept out of the event log.
//!
//! Events are replayed, streamed to watchers and copied by other services,
//! so they must never carry a secret. Passwords live in their own file,
//! `secrets.json` in the data directory (mode 0600, the directory 0700),
//! keyed by pipe id, and not in the sled database of the log: sled keeps old
//! values in its files until it compacts them, so a secret in a sled tree
//! would sit in the same files as the log, which get copied around. A pipe
//! without passwords has no entry at all.
//!
//! Writes replace the file atomically (temporary file, fsync, rename, fsync
//! of the directory), so a secret is durable before the event that needs it
//! is appended.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::event_log::{LogError, WriteFailure};

const FILE: &str = "secrets.json";
const TMP_FILE: &str = "secrets.json.tmp";
/// The sled tree older versions kept secrets in (migrated on open).
const LEGACY_TREE: &str = "secrets";

pub use crate::domain::conn::PipeSecrets;

#[derive(Default, Serialize, Deserialize)]
struct SecretsFile {
    pipes: BTreeMap<String, PipeSecrets>,
}

struct Inner {
    dir: PathBuf,
    file: SecretsFile,
}

/// The pipes' passwords by pipe id, in `secrets.json` beside the log (owner-only,
/// rewritten whole on each change); cheap to clone.
#[derive(Clone)]
pub struct SecretStore {
    inner: Arc<Mutex<Inner>>,
}

fn not_writable(e: &std::io::Error) -> LogError {
    LogError::NotWritable(WriteFailure::from_io(e))
}

impl SecretStore {
    /// Loads `dir/secrets.json`, moving secrets an older version kept in
    /// the log's sled database into it.
    pub fn open(dir: &Path, db: &sled::Db) -> Result<Self, LogError> {
        let path = dir.join(FILE);
        let mut file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<SecretsFile>(&bytes).map_err(|e| {
                LogError::Unavailable(format!("{} is unreadable: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretsFile::default(),
            Err(e) => {
                return Err(LogError::Unavailable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let legacy = db.tree_names().iter().any(|n| n == LEGACY_TREE.as_bytes());
        let mut inner = Inner {
            dir: dir.to_owned(),
            file: SecretsFile::default(),
        };
        if legacy {
            let tree = db.open_tree(LEGACY_TREE)?;
            for item in tree.iter() {
                let (k, v) = item?;
                let id = String::from_utf8_lossy(&k).into_owned();
                // The file wins: it is only written after the tree.
                if let Ok(s) = serde_json::from_slice::<PipeSecrets>(&v)
                    && !s.is_empty()
                {
                    file.pipes.entry(id).or_insert(s);
                }
            }
            inner.file = file;
            inner.write()?;
            db.drop_tree(LEGACY_TREE)?;
            db.flush()?;
            tracing::info!(
                pipes = inner.file.pipes.len(),
                "moved secrets out of the event log database"
            );
        } else {
            inner.file = file;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic mid-update of the map; the file
        // on disk is the last complete write.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the secrets of a pipe incarnation, durably.
    pub(crate) fn put(&self, pipe_id: &str, secrets: &PipeSecrets) -> Result<(), LogError> {
        if secrets.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let old = inner.file.pipes.insert(pipe_id.to_owned(), secrets.clone());
        if let Err(e) = inner.write() {
            match old {
                Some(o) => inner.file.pipes.insert(pipe_id.to_owned(), o),
                None => inner.file.pipes.remove(pipe_id),
            };
            return Err(e);
        }
        Ok(())
    }

    /// The passwords of an incarnation (none when it has none stored).
    pub fn get(&self, pipe_id: &str) -> Result<PipeSecrets, LogError> {
        Ok(self
            .lock()
            .file
            .pipes
            .get(pipe_id)
            .cloned()
            .unwrap_or_default())
    }

    /// Forgets an incarnation's passwords (nothing to do when it has none).
    pub fn remove(&self, pipe_id: &str) -> Result<(), LogError> {
        let mut inner = self.lock();
        if inner.file.pipes.remove(pipe_id).is_some() {
            inner.write()?;
        }
        Ok(())
    }
}

impl Inner {
    /// Replaces the file with the current map (owner-only).
    fn write(&self) -> Result<(), LogError> {
        let bytes = serde_json::to_vec(&self.file)
            .map_err(|e| LogError::Unavailable(format!("could not encode secrets: {e}")))?;
        let tmp = self.dir.join(TMP_FILE);
        // A leftover keeps its old mode; the new one is created 0600.
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| not_writable(&e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| not_writable(&e))?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join(FILE)).map_err(|e| not_writable(&e))?;
        // The rename is durable once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| not_writable(&e))?;
        Ok(())
    }
}
