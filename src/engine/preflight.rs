//! Checks both ends of a pipe before anything is recorded: after a
//! CreatePipe or ResyncPipe is accepted there is no going back, so a wrong
//! password, a missing table or a bad ORDER BY must be refused up front.

use crate::proto::PipeConfig;
use crate::source;
use crate::store::PipeSecrets;

/// Connects to both ends and checks the tables; the error says what to fix.
pub async fn check(config: &PipeConfig, secrets: &PipeSecrets) -> Result<(), String> {
    let src = config.source.clone().unwrap_or_default();
    let pg = source::connect(&src.connection_string, secrets.source_password.as_deref())
        .await
        .map_err(|e| format!("source: {e}"))?;
    source::check_server(&pg)
        .await
        .map_err(|e| format!("source: {e}"))?;
    let names = super::source_tables(config).map_err(|e| e.0)?;
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
    let ch = super::sink_for(config, secrets).map_err(|e| format!("destination: {e}"))?;
    ch.ping().await.map_err(|e| format!("destination: {e}"))?;
    Ok(())
}
