//! Integration tests of `dev/chfront.py`, the ClickHouse HTTP front over chDB that the
//! dev environment and CI use as the ClickHouse server, driven by the `clickhouse`
//! crate with its default features (LZ4 compression on).
//!
//! Needs a running front: `dev/env up` (it prints `PGPIPE_TEST_CH_URL`), then
//! `source .dev/env.sh && cargo test --test integration chfront::`.

use std::time::{Duration, Instant};

use clickhouse::{Client, Row, error::Error};
use serde::{Deserialize, Serialize};

use crate::common::{AuthFront, http_get};

fn ch_url() -> String {
    std::env::var("PGPIPE_TEST_CH_URL").unwrap_or_else(|_| {
        panic!(
            "PGPIPE_TEST_CH_URL is not set: run `dev/env up` first, then \
             `source .dev/env.sh` (or `eval \"$(dev/env print)\"`)"
        )
    })
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap().to_string()
}

fn client() -> Client {
    Client::default().with_url(ch_url())
}

/// A client bound to a fresh database `name` (created if missing).
async fn client_in(name: &str) -> Client {
    client()
        .query(&format!("CREATE DATABASE IF NOT EXISTS {name}"))
        .execute()
        .await
        .expect("CREATE DATABASE");
    client().with_database(name)
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    price: f64,
}

fn item(i: u64) -> Item {
    Item {
        id: i,
        name: format!("name-{i}"),
        price: i as f64 / 4.0,
    }
}

async fn create_items(c: &Client, table: &str) {
    c.query(&format!(
        "CREATE OR REPLACE TABLE {table} (id UInt64, name String, price Float64) \
         ENGINE = MergeTree ORDER BY id"
    ))
    .execute()
    .await
    .expect("CREATE TABLE");
}

async fn insert_items(c: &Client, table: &str, n: u64) {
    let mut ins = c.insert::<Item>(table).await.expect("insert");
    for i in 0..n {
        ins.write(&item(i)).await.expect("write");
    }
    ins.end().await.expect("insert end");
}

/// A client of the fresh database `name` whose table `items` got `n` rows;
/// how long the insert took.
async fn items_in(name: &str, n: u64) -> (Client, Duration) {
    let c = client_in(name).await;
    create_items(&c, "items").await;
    let t = Instant::now();
    insert_items(&c, "items", n).await;
    (c, t.elapsed())
}

/// The one number the query `q` returns (a count, a sum).
async fn number(c: &Client, q: &str) -> u64 {
    c.query(q).fetch_one().await.unwrap()
}

#[tokio::test]
async fn ping() {
    let (status, body) = http_get(&host_port(&ch_url()), "/ping")
        .await
        .expect("GET /ping");
    assert_eq!((status, body.as_str()), (200, "Ok.\n"));
    let one: u8 = client()
        .query("SELECT 1")
        .fetch_one()
        .await
        .expect("SELECT 1");
    assert_eq!(one, 1);
}

#[tokio::test]
async fn insert_100k_rows_and_count() {
    let (c, took) = items_in("chfront_t_insert", 100_000).await;
    eprintln!("inserted 100k rows in {took:?}");
    assert_eq!(number(&c, "SELECT count() FROM items").await, 100_000);
    let sum = number(&c, "SELECT sum(id) FROM items").await;
    assert_eq!(sum, 99_999 * 100_000 / 2);
}

#[tokio::test]
async fn insert_200k_rows_is_fast() {
    let (c, took) = items_in("chfront_t_fast", 200_000).await;
    eprintln!("inserted 200k rows in {took:?}");
    assert_eq!(number(&c, "SELECT count() FROM items").await, 200_000);
    // Typically well under a second; the bound only catches pathological slowness.
    assert!(
        took < Duration::from_secs(15),
        "200k-row insert took {took:?}"
    );
}

#[tokio::test]
async fn fetch_all_with_binds() {
    let (c, _) = items_in("chfront_t_binds", 1000).await;
    let rows = c
        .query("SELECT ?fields FROM items WHERE id BETWEEN ? AND ? AND name != ? ORDER BY id")
        .bind(10)
        .bind(14)
        .bind("name-12")
        .fetch_all::<Item>()
        .await
        .unwrap();
    assert_eq!(rows, vec![item(10), item(11), item(13), item(14)]);
    let none = c
        .query("SELECT ?fields FROM items WHERE id > ?")
        .bind(5000)
        .fetch_all::<Item>()
        .await;
    assert_eq!(none.unwrap(), vec![]);
}

#[tokio::test]
async fn fetch_one_row() {
    let (c, _) = items_in("chfront_t_one", 10).await;
    let row: Item = c
        .query("SELECT ?fields FROM items WHERE id = ?")
        .bind(7)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(row, item(7));
    let missing = c
        .query("SELECT ?fields FROM items WHERE id = 99")
        .fetch_one::<Item>()
        .await;
    assert!(matches!(missing, Err(Error::RowNotFound)), "{missing:?}");
}

#[tokio::test]
async fn large_select_streams_all_rows() {
    let mut cursor = client()
        .query("SELECT number FROM system.numbers LIMIT 1000000")
        .fetch::<u64>()
        .unwrap();
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(v) = cursor.next().await.unwrap() {
        n += 1;
        sum += v;
    }
    assert_eq!((n, sum), (1_000_000, 999_999 * 1_000_000 / 2));
}

#[tokio::test]
async fn bad_query_is_bad_response_with_server_message() {
    match client()
        .query("SELECT * FROM chfront_no_such_db.nope")
        .execute()
        .await
    {
        Err(Error::BadResponse(msg)) => {
            assert!(
                msg.contains("UNKNOWN_DATABASE") || msg.contains("does not exist"),
                "{msg}"
            );
            assert!(msg.contains("Code: 81"), "{msg}");
        }
        other => panic!("expected BadResponse, got {other:?}"),
    }
    match client().query("SELEC 1").fetch_all::<u8>().await {
        Err(Error::BadResponse(msg)) => assert!(msg.contains("Syntax error"), "{msg}"),
        other => panic!("expected BadResponse, got {other:?}"),
    }
}

#[tokio::test]
async fn error_after_streaming_started_is_reported() {
    let mut cursor = client()
        .query("SELECT number FROM numbers(3000000) WHERE NOT throwIf(number = 2500000, 'boom-midstream')")
        .fetch::<u64>()
        .unwrap();
    let mut n = 0u64;
    let err = loop {
        match cursor.next().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("stream ended without the error after {n} rows"),
            Err(e) => break e,
        }
    };
    match err {
        Error::BadResponse(msg) => assert!(msg.contains("boom-midstream"), "{msg}"),
        other => panic!("expected BadResponse, got {other:?}"),
    }
}

#[tokio::test]
async fn settings_and_database_do_not_leak_between_requests() {
    let c = client();
    let q = "SELECT toString(getSetting('max_block_size'))";
    let before: String = c.query(q).fetch_one().await.unwrap();
    assert_ne!(before, "12345");
    for _ in 0..3 {
        // The same client reuses its keep-alive connection, i.e. the same front thread.
        let with: String = c
            .query(q)
            .with_setting("max_block_size", "12345")
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(with, "12345");
        let after: String = c.query(q).fetch_one().await.unwrap();
        assert_eq!(after, before, "setting leaked into the next request");
    }
    let c2 = client_in("chfront_t_leak").await;
    let db: String = c2
        .query("SELECT currentDatabase()")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(db, "chfront_t_leak");
    let db: String = c
        .query("SELECT currentDatabase()")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(db, "default", "database leaked into the next request");
}

#[tokio::test]
async fn server_side_query_parameters() {
    let tricky = "it's a \"test\"\twith\\back\nslash ✓";
    #[derive(Debug, PartialEq, Row, Deserialize)]
    struct P {
        s: String,
        n: u32,
        a: Vec<i64>,
    }
    let got: P = client()
        .query("SELECT {s:String} AS s, toUInt32({n:UInt32} + 1) AS n, {a:Array(Int64)} AS a")
        .param("s", tricky)
        .param("n", 41u32)
        .param("a", vec![-1i64, 2, 3])
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        got,
        P {
            s: tricky.into(),
            n: 42,
            a: vec![-1, 2, 3]
        }
    );
    let (c, _) = items_in("chfront_t_params", 5).await;
    let ids: Vec<u64> = c
        .query("SELECT id FROM {t:Identifier} WHERE id >= {min:UInt64} ORDER BY id")
        .param("t", "items")
        .param("min", 3u64)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ids, vec![3, 4]);
}

#[derive(Debug, PartialEq, Row, Serialize, Deserialize)]
struct Versioned {
    id: u64,
    val: String,
    version: u64,
    is_deleted: u8,
}

#[tokio::test]
async fn exchange_tables_replacing_merge_tree_final() {
    let c = client_in("chfront_t_rmt").await;
    for t in ["live", "staging"] {
        c.query(&format!(
            "CREATE OR REPLACE TABLE {t} (id UInt64, val String, version UInt64, is_deleted UInt8) \
             ENGINE = ReplacingMergeTree(version, is_deleted) ORDER BY id"
        ))
        .execute()
        .await
        .unwrap();
    }
    let v = |id, val: &str, version, is_deleted| Versioned {
        id,
        val: val.into(),
        version,
        is_deleted,
    };
    // Separate inserts make separate parts, so FINAL has to merge them at read time.
    for batch in [
        vec![v(1, "a1", 1, 0), v(2, "b1", 1, 0), v(3, "c1", 1, 0)],
        vec![v(1, "a2", 2, 0), v(2, "b0", 0, 0)],
        vec![v(3, "c1", 5, 1)],
    ] {
        let mut ins = c.insert::<Versioned>("staging").await.unwrap();
        for r in &batch {
            ins.write(r).await.unwrap();
        }
        ins.end().await.unwrap();
    }
    let raw: u64 = c
        .query("SELECT count() FROM staging")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(raw, 6);
    c.query("INSERT INTO live VALUES (100, 'old', 1, 0)")
        .execute()
        .await
        .unwrap();
    c.query("EXCHANGE TABLES live AND staging")
        .execute()
        .await
        .unwrap();

    let rows: Vec<Versioned> = c
        .query("SELECT ?fields FROM live FINAL ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![v(1, "a2", 2, 0), v(2, "b1", 1, 0)]);
    let old: Vec<u64> = c
        .query("SELECT id FROM staging FINAL")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(old, vec![100]);
    let tables: Vec<String> = c
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(tables, vec!["live", "staging"]);
}

#[tokio::test]
async fn wrong_password_is_rejected_when_auth_is_on() {
    let front = AuthFront::start("pgpipe", "s3cret").await;
    let ok: u8 = Client::default()
        .with_url(&front.url)
        .with_user("pgpipe")
        .with_password("s3cret")
        .query("SELECT 7")
        .fetch_one()
        .await
        .expect("right password");
    assert_eq!(ok, 7);
    for (user, password) in [("pgpipe", "wrong"), ("default", ""), ("other", "s3cret")] {
        let res = Client::default()
            .with_url(&front.url)
            .with_user(user)
            .with_password(password)
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await;
        match res {
            Err(Error::BadResponse(msg)) => assert!(msg.contains("Authentication failed"), "{msg}"),
            other => panic!("{user}/{password}: expected BadResponse, got {other:?}"),
        }
    }
    let res = Client::default()
        .with_url(&front.url)
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await;
    assert!(
        matches!(res, Err(Error::BadResponse(_))),
        "no credentials: {res:?}"
    );
}
