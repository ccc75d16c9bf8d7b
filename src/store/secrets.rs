//! Passwords, kept out of the event log.
//!
//! Events are replayed, streamed to watchers and copied by other services,
//! so they must never carry a secret. Passwords live in their own sled tree
//! keyed by pipe id (same data directory, flushed with the log). Protect the
//! data directory like any credential store.

use serde::{Deserialize, Serialize};

use super::event_log::LogError;

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipeSecrets {
    pub source_password: Option<String>,
    pub destination_password: Option<String>,
}

impl std::fmt::Debug for PipeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the values, only whether they are set.
        f.debug_struct("PipeSecrets")
            .field(
                "source_password",
                &self.source_password.as_ref().map(|_| "***"),
            )
            .field(
                "destination_password",
                &self.destination_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

#[derive(Clone)]
pub struct SecretStore {
    tree: sled::Tree,
}

impl SecretStore {
    pub fn open(db: &sled::Db) -> Result<Self, LogError> {
        Ok(Self {
            tree: db.open_tree("secrets")?,
        })
    }

    /// Stores the secrets of a pipe incarnation. Durable with the next log
    /// flush, which the append that creates the pipe performs.
    pub fn put(&self, pipe_id: &str, secrets: &PipeSecrets) -> Result<(), LogError> {
        let bytes = serde_json::to_vec(secrets)
            .map_err(|e| LogError::Unavailable(format!("could not encode secrets: {e}")))?;
        self.tree.insert(pipe_id.as_bytes(), bytes)?;
        Ok(())
    }

    pub fn get(&self, pipe_id: &str) -> Result<PipeSecrets, LogError> {
        match self.tree.get(pipe_id.as_bytes())? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| {
                LogError::Unavailable(format!("unreadable secrets of {pipe_id}: {e}"))
            }),
            None => Ok(PipeSecrets::default()),
        }
    }

    pub fn remove(&self, pipe_id: &str) -> Result<(), LogError> {
        self.tree.remove(pipe_id.as_bytes())?;
        Ok(())
    }
}
