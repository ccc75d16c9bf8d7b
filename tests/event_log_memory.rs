//! The event log's memory levels off as events accumulate: a service
//! appends one CdcProgress per applied batch for as long as it runs, so
//! memory that follows the log's size would grow without end. (sled's
//! memory grows past its page cache limit with the data: at a 64 MiB limit
//! the measured 60,000 events below added about 15 MB; at 8 MiB, 2.)
//!
//! Alone in its binary, so the process's RSS is the log's.

use std::sync::Arc;

use pgpipe::proto::event::Payload;
use pgpipe::proto::*;
use pgpipe::store::event_log::{EventLog, new_event};

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_levels_off_while_cdc_progress_events_accumulate() {
    // The cache and sled's page table fill during the first ~80,000.
    const WARM_UP: u64 = 80_000;
    const MEASURED: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    log.replay(|_| {}).unwrap();
    log.start_writer(Arc::new(|_| {}));
    let id = "pipe-id";
    let created = Payload::PipeCreated(PipeCreated {
        name: "p".into(),
        config: None,
        resync_of: String::new(),
    });
    log.append("p", 0, vec![new_event(id, created)])
        .await
        .unwrap();
    let mut version = 1u64;
    let mut at = Vec::new();
    for n in [WARM_UP, MEASURED] {
        for _ in 0..n {
            let batch = CdcProgress {
                start_lsn: format!("0/{:X}", version * 100),
                lsn: format!("0/{:X}", version * 100 + 99),
                rows: 100,
                transactions: 10,
                tables: vec![TableChangeCounts {
                    source_table: "public.items".into(),
                    inserted: 90,
                    updated: 9,
                    deleted: 1,
                }],
                ..Default::default()
            };
            log.append(
                "p",
                version,
                vec![new_event(id, Payload::CdcProgress(batch))],
            )
            .await
            .unwrap();
            version += 1;
        }
        at.push(rss_mb());
    }
    println!(
        "RSS after {WARM_UP} events: {:.1} MB, after {}: {:.1} MB",
        at[0],
        WARM_UP + MEASURED,
        at[1]
    );
    assert!(
        at[1] - at[0] < 8.0,
        "the {MEASURED} events after the first {WARM_UP} added {:.1} MB (from {:.1} to {:.1} MB)",
        at[1] - at[0],
        at[0],
        at[1]
    );
    log.close().await.unwrap();
}
