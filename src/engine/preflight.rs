//! Checks both ends of a pipe before anything is recorded: after a
//! CreatePipe or ResyncPipe is accepted there is no going back, so a wrong
//! password, a missing table or a bad ORDER BY must be refused up front.

use crate::domain::validate;
use crate::proto::PipeConfig;
use crate::sink::ChSink;
use crate::source;
use crate::store::PipeSecrets;

/// Connects to both ends and checks the tables; the error says what to fix.
pub async fn check(config: &PipeConfig, secrets: &PipeSecrets) -> Result<(), String> {
    let src = config.source.clone().unwrap_or_default();
    let dst = config.destination.clone().unwrap_or_default();
    let pg = source::connect(&src.connection_string, secrets.source_password.as_deref())
        .await
        .map_err(|e| format!("source: {e}"))?;
    source::check_server(&pg)
        .await
        .map_err(|e| format!("source: {e}"))?;
    let names = config
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| validate::table(i, t).map(|(q, _)| q))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.0)?;
    let tables = source::describe_tables(&pg, &names)
        .await
        .map_err(|e| format!("source: {e}"))?;
    for (cfg, table) in config.tables.iter().zip(&tables) {
        for col in &cfg.order_by {
            if !table.columns.iter().any(|c| &c.name == col) {
                return Err(format!(
                    "order_by of {} names column {col:?}, which the table does not have; its columns are: {}",
                    cfg.source_table,
                    table
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for col in &table.columns {
            crate::sink::clickhouse_type(col).map_err(|e| {
                format!(
                    "column {:?} of {} cannot be replicated: {e}",
                    col.name, cfg.source_table
                )
            })?;
        }
    }
    let ch = ChSink::connect(
        &dst.url,
        &dst.user,
        secrets.destination_password.as_deref(),
        &dst.database,
    )
    .map_err(|e| format!("destination: {e}"))?;
    ch.ping().await.map_err(|e| format!("destination: {e}"))?;
    Ok(())
}
