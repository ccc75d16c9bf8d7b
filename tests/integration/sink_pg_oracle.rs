//! Values as a real Postgres prints them (simple-query protocol: text output
//! format, unescaped) go through the sink, and ClickHouse's `postgresql()`
//! table function reading the same rows is the oracle. Needs `dev/env up`
//! (both `PGPIPE_TEST_PG_URL` and `PGPIPE_TEST_CH_URL`).

use pgpipe::model::{Cell, PgType, Row, SourceColumn, SourceTable};
use pgpipe::sink::{ChSink, CreateMode, quote_ident};
use tokio_postgres::{NoTls, SimpleQueryMessage};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run dev/env up first (then `source .dev/env.sh`)")
    })
}

fn col(name: &str, type_name: &str, pg_type: PgType) -> SourceColumn {
    SourceColumn {
        name: name.into(),
        type_name: type_name.into(),
        type_oid: 0,
        pg_type,
        not_null: name == "id",
        repr: None,
        attnum: 0,
        typmod: -1,
    }
}

#[tokio::test]
async fn postgres_text_output_round_trips() {
    let pg_url = env("PGPIPE_TEST_PG_URL");
    let ch_url = env("PGPIPE_TEST_CH_URL");
    let (pg, conn) = tokio_postgres::connect(&pg_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let schema = format!("sink_oracle_{}", std::process::id());
    pg.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TYPE {schema}.mood AS ENUM ('sad', 'happy', 'it''s \"ok\"');
         CREATE TABLE {schema}.t (
           id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
           n numeric, n2 numeric(12,2), n3 numeric(30,10), txt text, vc varchar(20), c char(5),
           by bytea, d date, ts timestamp, tz timestamptz, tm time, iv interval, u uuid,
           j json, jb jsonb, ip inet, e {schema}.mood,
           ai int4[], at text[], an numeric(10,2)[], atz timestamptz[], aby bytea[]);
         SELECT setseed(0.42);
         INSERT INTO {schema}.t
         SELECT i,
           CASE WHEN i % 9 = 0 THEN NULL ELSE i % 2 = 0 END,
           (i * 37 % 65536 - 32768)::int2,
           CASE WHEN i % 9 = 1 THEN NULL ELSE (i * 7919 * 271)::int4 END,
           (i::int8 * 92233720368547 * (CASE WHEN i % 2 = 0 THEN 1 ELSE -1 END)),
           CASE WHEN i = 1 THEN 'NaN'::float4 WHEN i = 2 THEN 'Infinity' WHEN i = 3 THEN 3.4028235e38
                ELSE ((random() - 0.5) * 10 ^ (random() * 70 - 35))::float4 END,
           CASE WHEN i = 1 THEN '-Infinity'::float8 WHEN i = 2 THEN 2.2250738585072014e-308 WHEN i = 3 THEN -0.0
                ELSE (random() - 0.5) * 10 ^ (random() * 600 - 300) END,
           CASE WHEN i % 9 = 2 THEN NULL
                ELSE round(((random() - 0.5) * 10 ^ (random() * 18))::numeric, (i % 12)) END,
           round(((random() - 0.5) * 2e10)::numeric, 2),
           round(((random() - 0.5) * 2e20)::numeric, 10),
           CASE WHEN i % 9 = 3 THEN NULL
                ELSE 'row ' || i || E' \\t tab \\n nl \\\\ bs \"q\" ''s'' é 🌍 ' || repeat('x', i) END,
           'v' || i, 'c' || (i % 10),
           CASE WHEN i % 9 = 4 THEN NULL ELSE decode(md5(i::text) || '00ff5c22', 'hex') END,
           DATE '1970-01-01' + ((random() - 0.4) * 60000)::int,
           TIMESTAMP '1970-01-01' + (random() - 0.4) * INTERVAL '60000 days',
           TIMESTAMPTZ '1901-01-01 00:00:00+00' + random() * INTERVAL '130 years',
           TIME '00:00' + random() * INTERVAL '86399 seconds' + (i % 1000) * INTERVAL '1 microsecond',
           make_interval(years => i % 3, days => i, secs => i / 7.0),
           md5(i::text)::uuid,
           ('{{\"k\": ' || i || ', \"s\": \"é\\\\\"}}')::json,
           ('{{\"k\": ' || i || ', \"arr\": [1, null, \"x\"]}}')::jsonb,
           ('10.' || (i % 256) || '.0.1/' || (8 + i % 24))::inet,
           CASE WHEN i % 9 = 5 THEN NULL ELSE (ARRAY['sad', 'happy', 'it''s \"ok\"'])[1 + i % 3]::{schema}.mood END,
           CASE WHEN i % 9 = 6 THEN NULL ELSE ARRAY[i, NULL, -i] END,
           ARRAY['a,b', NULL, 'NULL', '', 'q\"uote', 'back\\slash', ' sp ', '{{}}', 'é' || i],
           ARRAY[1.5, NULL, -i]::numeric(10,2)[],
           ARRAY[TIMESTAMPTZ '2024-01-02 03:04:05.123456+00' + i * INTERVAL '1 hour', NULL],
           ARRAY[decode('00ff' || lpad(to_hex(i), 4, '0'), 'hex'), NULL]
         FROM generate_series(1, 300) i;"
    ))
    .await
    .unwrap();

    let mood = PgType::Enum {
        labels: vec!["sad".into(), "happy".into(), "it's \"ok\"".into()],
    };
    let num = |p, s| PgType::Numeric {
        precision: p,
        scale: s,
    };
    let arr = |t: PgType| PgType::Array(Box::new(t));
    let source = SourceTable {
        schema: schema.clone(),
        name: "t".into(),
        oid: 0,
        columns: vec![
            col("id", "bigint", PgType::Int8),
            col("b", "boolean", PgType::Bool),
            col("i2", "smallint", PgType::Int2),
            col("i4", "integer", PgType::Int4),
            col("i8", "bigint", PgType::Int8),
            col("f4", "real", PgType::Float4),
            col("f8", "double precision", PgType::Float8),
            col("n", "numeric", num(None, None)),
            col("n2", "numeric(12,2)", num(Some(12), Some(2))),
            col("n3", "numeric(30,10)", num(Some(30), Some(10))),
            col("txt", "text", PgType::Text),
            col("vc", "character varying(20)", PgType::Text),
            col("c", "character(5)", PgType::Text),
            col("by", "bytea", PgType::Bytea),
            col("d", "date", PgType::Date),
            col("ts", "timestamp without time zone", PgType::Timestamp),
            col("tz", "timestamp with time zone", PgType::TimestampTz),
            col("tm", "time without time zone", PgType::Time),
            col("iv", "interval", PgType::Interval),
            col("u", "uuid", PgType::Uuid),
            col("j", "json", PgType::Json),
            col("jb", "jsonb", PgType::Jsonb),
            col("ip", "inet", PgType::Inet),
            col("e", "mood", mood.clone()),
            col("ai", "integer[]", arr(PgType::Int4)),
            col("at", "text[]", arr(PgType::Text)),
            col("an", "numeric(10,2)[]", arr(num(Some(10), Some(2)))),
            col(
                "atz",
                "timestamp with time zone[]",
                arr(PgType::TimestampTz),
            ),
            col("aby", "bytea[]", arr(PgType::Bytea)),
        ],
        key: vec![0],
        estimated_rows: 300,
        pages: 1,
        partitioned: false,
        generated_columns: Vec::new(),
    };

    // Read as the source would, in a session with an odd time zone
    // (Amsterdam had a +00:19:32 offset until 1937).
    let names: Vec<String> = source
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let msgs = pg
        .simple_query(&format!(
            "SET TimeZone = 'Europe/Amsterdam'; SELECT {} FROM {schema}.t ORDER BY id",
            names.join(", ")
        ))
        .await
        .unwrap();
    let rows: Vec<(Row, u64, bool)> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .map(|r| {
            let row: Row = (0..r.len())
                .map(|i| match r.get(i) {
                    Some(s) => Cell::Text(s.as_bytes().to_vec()),
                    None => Cell::Null,
                })
                .collect();
            (row, 1, false)
        })
        .collect();
    assert_eq!(rows.len(), 300);
    let samples: Vec<&Cell> = rows.iter().map(|r| &r.0[16]).take(3).collect();
    println!("timestamptz as Postgres printed it: {samples:?}");

    let db = format!("pgpipe_sink_oracle_{}", std::process::id());
    let sink = ChSink::connect(&ch_url, "default", None, &db).unwrap();
    sink.create_database_if_missing().await.unwrap();
    sink.create_table("t", &source, &[], CreateMode::OrReplace)
        .await
        .unwrap();
    let mut w = sink.writer("t", &source).await.unwrap();
    w.write_batch(&rows).await.unwrap();
    w.end().await.unwrap();

    // Column by column: what ClickHouse shows for our table vs for the
    // rows read straight from Postgres.
    let pg_host = pg_url
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap()
        .to_string();
    let pg_db = pg_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let oracle = format!("postgresql('{pg_host}', '{pg_db}', 't', 'postgres', '', '{schema}')");
    let mut failures = Vec::new();
    for c in &source.columns {
        let q = quote_ident(&c.name);
        let (mine, theirs) = match c.name.as_str() {
            // The oracle reads bool as UInt8.
            "b" => (
                format!("toString(toUInt8(m.{q}))"),
                format!("toString(p.{q})"),
            ),
            "by" => (format!("hex(m.{q})"), format!("upper(substring(p.{q}, 3))")),
            "tm" => (
                format!("toString(m.{q})"),
                format!(
                    "toString(toUnixTimestamp64Micro(toDateTime64(concat('1970-01-01 ', p.{q}), 6, 'UTC')))"
                ),
            ),
            // Our arrays of bytea hold the bytes; the oracle's the text.
            "aby" => (
                format!("toString(arrayMap(x -> hex(x), m.{q}))"),
                format!("toString(arrayMap(x -> upper(substring(x, 3)), p.{q}))"),
            ),
            _ => (format!("toString(m.{q})"), format!("toString(p.{q})")),
        };
        let sql = format!(
            "SELECT toString(m.id) AS id, ifNull({mine}, 'NULL') AS mine, ifNull({theirs}, 'NULL') AS theirs \
             FROM {}.t AS m FINAL INNER JOIN {oracle} AS p ON m.id = p.id \
             WHERE mine != theirs ORDER BY m.id LIMIT 3",
            quote_ident(&db)
        );
        let bytes = sink
            .client()
            .query_raw(&sql)
            .fetch_bytes("TabSeparated")
            .unwrap()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let text = String::from_utf8_lossy(&bytes).to_string();
        if !text.is_empty() {
            failures.push(format!("column {}:\n{text}", c.name));
        }
    }
    let joined = sink
        .client()
        .query_raw(&format!(
            "SELECT count() FROM {}.t AS m FINAL INNER JOIN {oracle} AS p ON m.id = p.id",
            quote_ident(&db)
        ))
        .fetch_one::<u64>()
        .await
        .unwrap();
    assert_eq!(joined, 300);

    let _ = sink
        .client()
        .query_raw(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&db)))
        .execute()
        .await;
    pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
