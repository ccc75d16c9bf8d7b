//! Publications and replication slots, all idempotent.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{SourceError, quote_ident, quote_table};
use crate::domain::validate::QualifiedName;
use crate::model::Lsn;

/// Creates the publication for exactly `tables` (`FOR TABLE ONLY ...`: rows
/// of inheritance children are neither snapshotted nor published), or, if
/// it exists, sets its table list to `tables` (and its options: a pipe
/// created by an older pgpipe gets them when its tables change).
///
/// Options, by server version (see [`publication_options`]): changes of a
/// partitioned table's partitions are published under the partitioned
/// table, and stored generated columns are published where the server can.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[QualifiedName],
) -> Result<(), SourceError> {
    let list = tables
        .iter()
        .map(|t| format!("ONLY {}", quote_table(t)))
        .collect::<Vec<_>>()
        .join(", ");
    let ctx = || format!("creating publication {name:?}");
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| SourceError::query(ctx(), &e))?
        .get(0);
    let options = publication_options(version);
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| SourceError::query(ctx(), &e))?
        .is_some();
    if !exists {
        let with = if options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({options})")
        };
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {list}{with}",
            quote_ident(name)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(publication = %name, tables = tables.len(), "created publication");
                return Ok(());
            }
            // Created concurrently: fall through to ALTER.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(SourceError::query(ctx(), &e)),
        }
    }
    let mut sql = format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(name));
    if !options.is_empty() {
        sql.push_str(&format!(
            "; ALTER PUBLICATION {} SET ({options})",
            quote_ident(name)
        ));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| SourceError::query(format!("updating publication {name:?}"), &e))?;
    tracing::info!(publication = %name, tables = tables.len(), "updated publication");
    Ok(())
}

/// The publication's options for a server version (`server_version_num`):
/// - from 13, `publish_via_partition_root`: a partitioned table's changes
///   arrive under its own relation whichever partition they touch, so it
///   maps to one ClickHouse table (and partitions created or attached later
///   are included);
/// - from 18, `publish_generated_columns = stored`: stored generated columns
///   are sent, so they are described and replicated like other columns
///   (before 18 they are left out and reported).
fn publication_options(version: i32) -> String {
    let mut options = Vec::new();
    if version >= 130_000 {
        options.push("publish_via_partition_root = true");
    }
    if version >= 180_000 {
        options.push("publish_generated_columns = stored");
    }
    options.join(", ")
}

/// Drops the publication if it exists.
pub async fn drop_publication(client: &Client, name: &str) -> Result<(), SourceError> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(|e| SourceError::query(format!("dropping publication {name:?}"), &e))?;
    tracing::info!(publication = %name, "dropped publication (if it existed)");
    Ok(())
}

/// Creates a logical replication slot with pgoutput and returns its
/// consistent point: decoding from it yields exactly the transactions that
/// commit at or after that LSN. Waits for transactions running at the time
/// (in any database) to finish. An existing slot is [`SourceError::SlotExists`].
pub async fn create_slot(client: &Client, name: &str) -> Result<Lsn, SourceError> {
    create_logical_slot(client, name, false).await
}

/// Creates a temporary logical slot (dropped when this session ends) and
/// returns its consistent point. A table loaded while CDC runs exports its
/// snapshot after this point and versions its rows just below it, exactly as
/// the pipe's own snapshot does with the pipe's slot.
pub async fn create_temporary_slot(client: &Client, name: &str) -> Result<Lsn, SourceError> {
    create_logical_slot(client, name, true).await
}

async fn create_logical_slot(
    client: &Client,
    name: &str,
    temporary: bool,
) -> Result<Lsn, SourceError> {
    let (what, parsing) = if temporary {
        ("temporary slot", "creating a temporary slot")
    } else {
        ("replication slot", "creating the replication slot")
    };
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', $2)",
            &[&name, &temporary],
        )
        .await
        .map_err(|e| {
            // A temporary slot's name is new each time: only the pipe's own
            // slot can be left over from an earlier run.
            if !temporary && e.code() == Some(&SqlState::DUPLICATE_OBJECT) {
                SourceError::SlotExists { slot: name.into() }
            } else {
                SourceError::query(format!("creating {what} {name:?}"), &e)
            }
        })?;
    let lsn = parse_lsn(row.get(0), parsing)?;
    tracing::info!(slot = %name, consistent_point = %lsn, "created {what}");
    Ok(lsn)
}

/// Drops the slot; a no-op if it does not exist. If a backend holds it
/// (e.g. a reader of a previous run), that backend is terminated first.
pub async fn drop_slot(client: &Client, name: &str) -> Result<(), SourceError> {
    let ctx = || format!("dropping replication slot {name:?}");
    for attempt in 0..50 {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| SourceError::query(ctx(), &e))?;
        let Some(row) = row else {
            return Ok(());
        };
        let pid: Option<i32> = row.get(0);
        if let Some(pid) = pid {
            tracing::warn!(slot = %name, pid, "terminating the backend holding the slot");
            client
                .query("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(|e| SourceError::query(ctx(), &e))?;
            tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
            continue;
        }
        match client
            .query("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
        {
            Ok(_) => {
                tracing::info!(slot = %name, "dropped replication slot");
                return Ok(());
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(()),
            // Became active between the check and the drop: retry.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
            }
            Err(e) => return Err(SourceError::query(ctx(), &e)),
        }
    }
    Err(SourceError::Query {
        context: ctx(),
        reason: "the slot stays in use by another connection".into(),
    })
}

/// The state of a replication slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Up to where the consumer confirmed (decoding resumes here).
    pub confirmed_flush: Lsn,
    /// Oldest WAL the slot retains; None once the slot is invalidated.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated: the
    /// pipe must be resynced); `unknown` before PostgreSQL 13.
    pub wal_status: String,
    pub active: bool,
}

impl SlotInfo {
    /// The slot was invalidated (its WAL was removed): it can never be
    /// read again.
    pub fn is_lost(&self) -> bool {
        self.wal_status == "lost"
    }
}

/// The slot's state, or None if it does not exist.
pub async fn slot_info(client: &Client, name: &str) -> Result<Option<SlotInfo>, SourceError> {
    // to_jsonb: wal_status exists only from PostgreSQL 13 on.
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, restart_lsn::text, \
                    coalesce(to_jsonb(s) ->> 'wal_status', 'unknown'), active \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| SourceError::query(format!("reading replication slot {name:?}"), &e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let confirmed: Option<&str> = row.get(0);
    let restart: Option<&str> = row.get(1);
    Ok(Some(SlotInfo {
        confirmed_flush: match confirmed {
            Some(s) => parse_lsn(s, "reading the replication slot")?,
            None => Lsn(0),
        },
        restart_lsn: restart
            .map(|s| parse_lsn(s, "reading the replication slot"))
            .transpose()?,
        wal_status: row.get(2),
        active: row.get(3),
    }))
}

/// The WAL position flushed to disk (`pg_current_wal_flush_lsn`): the end
/// up to which logical decoding can read (the slot's lag is measured
/// against it).
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SourceError> {
    let row = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(|e| SourceError::query("reading the current WAL position", &e))?;
    parse_lsn(row.get(0), "reading the current WAL position")
}

pub(crate) fn parse_lsn(s: &str, context: &str) -> Result<Lsn, SourceError> {
    s.parse()
        .map_err(|e: crate::model::LsnParseError| SourceError::Protocol {
            context: context.into(),
            reason: e.to_string(),
        })
}

/// Classifies an error the server sent to a slot reader, from its text
/// (message, detail and SQLSTATE): a missing or invalidated slot is
/// [`SourceError::SlotLost`], a missing publication
/// [`SourceError::PublicationMissing`], a slot busy elsewhere
/// [`SourceError::SlotActive`]; None for anything else.
pub(crate) fn slot_error_text(slot: &str, publication: &str, text: &str) -> Option<SourceError> {
    if text.contains("publication") && text.contains("does not exist") {
        return Some(SourceError::PublicationMissing {
            publication: publication.into(),
        });
    }
    if let Some(rest) = text.split("is active for PID ").nth(1) {
        let pid = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        return Some(SourceError::SlotActive {
            slot: slot.into(),
            pid,
        });
    }
    let dropped = text.contains("replication slot") && text.contains("does not exist");
    let lost = dropped
        || text.contains("can no longer get changes from replication slot")
        || text.contains("can no longer access replication slot")
        || text.contains("has been invalidated")
        || text.contains("has already been removed");
    if lost {
        // Say which of the two it is in words: the server's own text
        // ("never previously reserved WAL, or ... invalidated") is vague.
        let why = if dropped {
            "it was dropped"
        } else {
            "the server invalidated it after removing WAL it still needed \
             (max_slot_wal_keep_size exceeded)"
        };
        return Some(SourceError::SlotLost {
            slot: slot.into(),
            reason: format!("{why}: {text}"),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::publication_options;

    #[test]
    fn publication_options_follow_the_server_version() {
        assert_eq!(publication_options(120_000), "");
        assert_eq!(
            publication_options(150_004),
            "publish_via_partition_root = true"
        );
        assert_eq!(
            publication_options(180_000),
            "publish_via_partition_root = true, publish_generated_columns = stored"
        );
    }
}
