//! Slot health as events: while a pipe runs or is paused, its replication
//! slot is sampled and a SlotHealthWarning is recorded when the slot holds
//! too much WAL or its wal_status turns unreserved/lost, and a
//! SlotHealthRecovered when that stops holding. Real Postgres and
//! ClickHouse front.

use std::time::Duration;

use crate::common::data::*;
use crate::common::peers::*;
use crate::common::*;
use pgpipe::engine::slot_health;
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;
use tonic::Code;

fn slot_settings(lag_bytes: u64) -> PipeSettings {
    PipeSettings {
        snapshot_parallelism: 2,
        snapshot_rows_per_partition: 1_000,
        cdc_batch_size: 5_000,
        cdc_sync_interval_ms: 100,
        slot_lag_warning_bytes: lag_bytes,
        slot_check_interval_seconds: 1,
        ..Default::default()
    }
}

async fn slot_history(c: &mut Client, name: &str) -> Vec<Event> {
    history(c, name, Some(HistoryKind::SlotHealth)).await
}

fn warnings(events: &[Event], kind: SlotWarningKind) -> Vec<SlotHealthWarning> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::SlotHealthWarning(w)) if w.kind() == kind => Some(w.clone()),
            _ => None,
        })
        .collect()
}

fn recoveries(events: &[Event], kind: SlotWarningKind) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.payload, Some(Payload::SlotHealthRecovered(r)) if r.kind() == kind))
        .count()
}

fn holds(p: &Pipe, kind: SlotWarningKind) -> bool {
    p.slot_warnings.iter().any(|w| w.kind() == kind)
}

/// Waits until the pipe holds a slot warning of `kind`; the pipe.
async fn wait_warning(
    c: &mut Client,
    name: &str,
    kind: SlotWarningKind,
    timeout: Duration,
) -> Pipe {
    let what = format!("a {kind:?} warning");
    wait_pipe(c, name, &what, timeout, |p| holds(p, kind)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_pipe_holding_wal_past_the_threshold_warns_once_and_recovers_on_resume() {
    let schema = unique("shlag");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.items (id bigint PRIMARY KEY, pad text);
             INSERT INTO {schema}.items SELECT g, 'x' FROM generate_series(1, 100) g;"
    ))
    .await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let mut req = pipe_req(&name, &schema, &[&format!("{schema}.items")]);
    req.settings = Some(slot_settings(64 * 1024));
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    pause(&mut c, &name).await;

    // About 1 MB of WAL the paused slot must keep.
    pg_exec(&format!(
        "INSERT INTO {schema}.items SELECT g, repeat('p', 500) FROM generate_series(1000, 3000) g"
    ))
    .await;
    let p = wait_warning(&mut c, &name, SlotWarningKind::Lag, Duration::from_secs(30)).await;
    assert_eq!(p.status(), PipeStatus::Paused, "a warning is not a failure");
    let w = &p.slot_warnings[0];
    assert_eq!(w.slot_name, p.slot_name);
    assert_eq!(w.threshold, 64 * 1024);
    assert!(w.lag_bytes > 64 * 1024, "{w:?}");
    assert!(
        w.message.contains("resume"),
        "says what to do: {}",
        w.message
    );
    assert_eq!(p.slot_wal_status, "reserved");

    // It holds for several samples (and grows): still one warning.
    pg_exec(&format!(
        "UPDATE {schema}.items SET pad = repeat('q', 500) WHERE id >= 1000"
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = slot_history(&mut c, &name).await;
    assert_eq!(
        warnings(&events, SlotWarningKind::Lag).len(),
        1,
        "{events:?}"
    );
    assert_eq!(recoveries(&events, SlotWarningKind::Lag), 0);

    resume(&mut c, &name).await;
    let p = wait_pipe(&mut c, &name, "recovered", Duration::from_secs(60), |p| {
        p.slot_warnings.is_empty()
    })
    .await;
    assert_eq!(p.status(), PipeStatus::Running);
    let events = slot_history(&mut c, &name).await;
    assert_eq!(recoveries(&events, SlotWarningKind::Lag), 1, "{events:?}");
    assert!(
        events.iter().all(|e| matches!(
            e.payload,
            Some(Payload::SlotHealthWarning(_) | Payload::SlotHealthRecovered(_))
        )),
        "the slot health history holds only slot health events"
    );
    // Not a failure: the errors history stays empty.
    let errors = history(&mut c, &name, Some(HistoryKind::Errors)).await;
    assert!(errors.is_empty(), "{errors:?}");
    env_cleanup(&name, &mut c).await;
}

async fn env_cleanup(name: &str, c: &mut Client) {
    c.delete_pipe(DeletePipeRequest {
        name: name.into(),
        drop_destination_tables: true,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_losing_its_wal_is_reported_before_the_pipe_fails() {
    let env = PrivateEnv::up().await;
    env.limit_slot_wal().await;
    let admin = env.pg().await;
    let schema = unique("shlost");
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text);
             INSERT INTO {schema}.items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
             CREATE TABLE scratch (id int, pad text);"
        ))
        .await
        .unwrap();
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let mut req = env.pipe_req(&name, &schema, &[&format!("{schema}.items")]);
    // No lag warning in the way: only wal_status matters here.
    req.settings = Some(slot_settings(1 << 40));
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    pause(&mut c, &name).await;

    // WAL past max_slot_wal_keep_size, written in the background until the
    // pipe reports the slot lost.
    let churner = tokio::spawn(async move {
        loop {
            churn_wal(&admin).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    });
    let p = wait_pipe(&mut c, &name, "slot lost", Duration::from_secs(120), |p| {
        p.slot_wal_status == "lost"
    })
    .await;
    churner.abort();
    assert!(holds(&p, SlotWarningKind::WalStatus), "{p:?}");
    assert_eq!(p.status(), PipeStatus::Paused);
    let events = slot_history(&mut c, &name).await;
    let ws = warnings(&events, SlotWarningKind::WalStatus);
    let lost = ws.iter().find(|w| w.wal_status == "lost").unwrap();
    assert!(
        lost.message.contains("is lost") && lost.message.contains("resync"),
        "{}",
        lost.message
    );
    // Each change of wal_status once (unreserved may be skipped between
    // two samples), never a repeat of the same one.
    let statuses: Vec<_> = ws.iter().map(|w| w.wal_status.as_str()).collect();
    assert!(
        statuses == ["lost"] || statuses == ["unreserved", "lost"],
        "{statuses:?}"
    );

    // Resumed, the pipe fails for good; the warning came first.
    resume(&mut c, &name).await;
    wait_pipe(&mut c, &name, "FAILED", Duration::from_secs(60), |p| {
        p.status() == PipeStatus::Failed
    })
    .await;
    let all = history(&mut c, &name, Some(HistoryKind::All)).await;
    let warned = all
        .iter()
        .position(
            |e| matches!(&e.payload, Some(Payload::SlotHealthWarning(w)) if w.wal_status == "lost"),
        )
        .unwrap();
    let failed = all
        .iter()
        .position(|e| matches!(&e.payload, Some(Payload::PipeFailed(f)) if !f.retrying))
        .unwrap();
    assert!(warned < failed);
}

/// ClickHouse down while the source keeps writing: the running pipe's slot
/// stands still as the WAL moves on, which is reported as STALLED after
/// `slot_stall_warning_seconds`; once ClickHouse is back and CDC catches up,
/// it recovers. The pipe never fails meanwhile (it retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_pipe_whose_slot_stands_still_is_reported_stalled_and_recovers() {
    let env = PrivateEnv::up().await;
    let schema = unique("shstall");
    env.pg()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text);
             INSERT INTO {schema}.items SELECT g, 'item ' || g FROM generate_series(1, 100) g;"
        ))
        .await
        .unwrap();
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let mut req = env.pipe_req(&name, &schema, &[&format!("{schema}.items")]);
    let mut settings = slot_settings(1 << 40);
    settings.slot_stall_warning_seconds = 10;
    req.settings = Some(settings);
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;

    env.kill_ch().await;
    let writer = {
        let url = env.pg_url();
        let schema = schema.clone();
        tokio::spawn(async move {
            let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for i in 0..120i64 {
                let from = 1_000 + i * 10;
                // (Errors once the test is over and the env is gone.)
                if pg
                    .batch_execute(&format!(
                        "INSERT INTO {schema}.items SELECT g, 'late' FROM generate_series({from}, {from} + 9) g"
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let p = wait_warning(
        &mut c,
        &name,
        SlotWarningKind::Stalled,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        p.status(),
        PipeStatus::Running,
        "retrying, not failed: {}",
        p.error
    );
    let w = p
        .slot_warnings
        .iter()
        .find(|w| w.kind() == SlotWarningKind::Stalled)
        .unwrap();
    assert!(w.lag_bytes > 0, "{w:?}");
    assert!(
        w.message.contains("for 10s"),
        "names the time: {}",
        w.message
    );

    env.start().await;
    writer.await.unwrap();
    let p = wait_pipe(&mut c, &name, "recovered", Duration::from_secs(90), |p| {
        p.slot_warnings.is_empty()
    })
    .await;
    assert_eq!(p.status(), PipeStatus::Running);
    env.wait_same(&schema, "items", "id, name", Duration::from_secs(60))
        .await;
    let events = slot_history(&mut c, &name).await;
    assert_eq!(
        warnings(&events, SlotWarningKind::Stalled).len(),
        1,
        "{events:?}"
    );
    assert_eq!(
        recoveries(&events, SlotWarningKind::Stalled),
        1,
        "{events:?}"
    );
    env_cleanup(&name, &mut c).await;
}

#[tokio::test]
async fn the_sampler_reads_a_slot_and_reports_a_missing_one() {
    let client = pg().await;
    let slot = unique("shsample");
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    let s = slot_health::sample(&client, &slot, false).await;
    let _ = client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await;
    let s = s.unwrap();
    assert_eq!(s.wal_status, "reserved");
    assert!(!s.active);
    assert!(s.confirmed.0 > 0 && s.wal.0 >= s.confirmed.0, "{s:?}");

    let missing = slot_health::sample(&client, &slot, false).await.unwrap();
    assert_eq!(missing.wal_status, "missing");
    assert_eq!(missing.confirmed.0, 0);
}

#[tokio::test]
async fn out_of_range_slot_settings_are_refused_with_what_to_use() {
    let (_srv, mut c) = control_plane().await;
    let cases = [
        (
            PipeSettings {
                slot_lag_warning_bytes: 100,
                ..Default::default()
            },
            "slot_lag_warning_bytes",
        ),
        (
            PipeSettings {
                slot_stall_warning_seconds: 5,
                ..Default::default()
            },
            "slot_stall_warning_seconds",
        ),
        (
            PipeSettings {
                slot_check_interval_seconds: 3601,
                ..Default::default()
            },
            "slot_check_interval_seconds",
        ),
    ];
    for (i, (settings, field)) in cases.into_iter().enumerate() {
        let mut req = create_req(&format!("p{i}"));
        req.settings = Some(settings);
        let err = c.create_pipe(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
        assert!(
            err.message().contains("0 means the default"),
            "{}",
            err.message()
        );
    }
    // Unset, they take their defaults.
    let p = create_pipe(&mut c, create_req("defaults")).await;
    let s = p.config.unwrap().settings.unwrap();
    assert_eq!(s.slot_lag_warning_bytes, 1 << 30);
    assert_eq!(s.slot_stall_warning_seconds, 300);
    assert_eq!(s.slot_check_interval_seconds, 30);
}
