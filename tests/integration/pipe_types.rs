//! Every supported column type, NULLs, unicode and awkward identifiers
//! (schema, table, type and column names with spaces, quotes, mixed case and
//! reserved words) through the snapshot and through CDC.
//!
//! Both sides are read back in Rust, each column through a canonical text
//! form computed by the database itself (Postgres SQL on one side,
//! ClickHouse SQL on the other) that is exact for the type: decimals without
//! trailing zeros, floats as their IEEE bits, bytea and array text elements
//! as hex, timestamps in UTC with microseconds, time as microseconds, and
//! strings, json, interval, inet and enum labels verbatim. Rows are compared
//! by key, column by column, and the ClickHouse column types are checked
//! against the documented mapping.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;

/// How a column is turned into comparable text on each side.
#[derive(Clone, Copy, Debug)]
enum Canon {
    /// `c::text` / `toString(c)`: integers, bool, text, json, interval, uuid, enum.
    Text,
    /// The Postgres output function (what pgoutput and COPY send): keeps
    /// char(n) padding and prints inet without a default /32.
    Output,
    /// Decimal text without trailing fractional zeros.
    Numeric,
    /// IEEE bits, big-endian hex (NaN, ±Infinity, -0 and denormals exact).
    Float4,
    Float8,
    /// bytea as lowercase hex.
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    /// Microseconds since midnight.
    Time,
    /// Elements joined by ',' with NULL as `NULL` (NULL array = empty array).
    IntArray,
    NumericArray,
    /// Elements as hex of their UTF-8 text (commas, quotes, `NULL` strings
    /// and empty strings stay distinguishable).
    TextArray,
}

struct Col {
    name: &'static str,
    /// Postgres type; `{ty}` is the enum type's qualified name.
    decl: &'static str,
    canon: Canon,
    /// Expected ClickHouse type (system.columns spelling).
    ch_type: &'static str,
}

const fn col(name: &'static str, decl: &'static str, canon: Canon, ch: &'static str) -> Col {
    Col {
        name,
        decl,
        canon,
        ch_type: ch,
    }
}

const COLS: &[Col] = &[
    col("Id", "bigint PRIMARY KEY", Canon::Text, "Int64"),
    col("Select", "text", Canon::Text, "Nullable(String)"),
    col("order", "int", Canon::Text, "Nullable(Int32)"),
    col(
        "quo\"te col",
        "varchar(20)",
        Canon::Text,
        "Nullable(String)",
    ),
    col("c_int2", "smallint", Canon::Text, "Nullable(Int16)"),
    col("c_int4", "int NOT NULL", Canon::Text, "Int32"),
    col("c_int8", "bigint", Canon::Text, "Nullable(Int64)"),
    col(
        "c_num",
        "numeric(20,6)",
        Canon::Numeric,
        "Nullable(Decimal(20, 6))",
    ),
    col(
        "c_numu",
        "numeric",
        Canon::Numeric,
        "Nullable(Decimal(76, 38))",
    ),
    col("c_real", "real", Canon::Float4, "Nullable(Float32)"),
    col(
        "c_double",
        "double precision",
        Canon::Float8,
        "Nullable(Float64)",
    ),
    col("c_bool", "boolean", Canon::Text, "Nullable(Bool)"),
    col("c_text", "text", Canon::Text, "Nullable(String)"),
    col("c_varchar", "varchar(20)", Canon::Text, "Nullable(String)"),
    col("c_char", "char(5)", Canon::Output, "Nullable(String)"),
    col("c_bytea", "bytea", Canon::Bytea, "Nullable(String)"),
    col("c_date", "date", Canon::Date, "Nullable(Date32)"),
    col(
        "c_ts",
        "timestamp",
        Canon::Timestamp,
        "Nullable(DateTime64(6, 'UTC'))",
    ),
    col(
        "c_tstz",
        "timestamptz",
        Canon::TimestampTz,
        "Nullable(DateTime64(6, 'UTC'))",
    ),
    col("c_time", "time", Canon::Time, "Nullable(Int64)"),
    col("c_interval", "interval", Canon::Text, "Nullable(String)"),
    col("c_uuid", "uuid", Canon::Text, "Nullable(UUID)"),
    col("c_json", "json", Canon::Text, "Nullable(String)"),
    col("c_jsonb", "jsonb", Canon::Text, "Nullable(String)"),
    col("c_inet", "inet", Canon::Output, "Nullable(String)"),
    col(
        "c_enum",
        "{ty}",
        Canon::Text,
        "LowCardinality(Nullable(String))",
    ),
    col(
        "c_int_arr",
        "int[]",
        Canon::IntArray,
        "Array(Nullable(Int32))",
    ),
    col(
        "c_text_arr",
        "text[]",
        Canon::TextArray,
        "Array(Nullable(String))",
    ),
    col(
        "c_num_arr",
        "numeric[]",
        Canon::NumericArray,
        "Array(Nullable(Decimal(76, 38)))",
    ),
    col(
        "c_enum_arr",
        "{ty}[]",
        Canon::TextArray,
        "Array(LowCardinality(Nullable(String)))",
    ),
];

/// The table in ClickHouse: the source table's name.
const TABLE: &str = "Order\"s";
const ENUM: &str = "Mo od";

fn pg_q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn ch_q(ident: &str) -> String {
    format!("`{}`", ident.replace('\\', "\\\\").replace('`', "\\`"))
}

fn pg_expr(c: &Col) -> String {
    let q = pg_q(c.name);
    let arr = |elem: &str| {
        format!(
            "coalesce((SELECT string_agg(coalesce({elem}, 'NULL'), ',' ORDER BY i) \
             FROM unnest({q}) WITH ORDINALITY AS u(e, i)), '')"
        )
    };
    match c.canon {
        Canon::Text => format!("{q}::text"),
        Canon::Output => format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END"),
        Canon::Numeric => format!("trim_scale({q})::text"),
        Canon::Float4 => format!("encode(float4send({q}), 'hex')"),
        Canon::Float8 => format!("encode(float8send({q}), 'hex')"),
        Canon::Bytea => format!("encode({q}, 'hex')"),
        Canon::Date => format!("to_char({q}, 'YYYY-MM-DD')"),
        Canon::Timestamp => format!("to_char({q}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        Canon::TimestampTz => {
            format!("to_char({q} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        }
        Canon::Time => format!("(extract(epoch FROM {q}) * 1000000)::bigint::text"),
        Canon::IntArray => arr("e::text"),
        Canon::NumericArray => arr("trim_scale(e)::text"),
        Canon::TextArray => arr("encode(convert_to(e::text, 'UTF8'), 'hex')"),
    }
}

fn ch_expr(c: &Col) -> String {
    let q = ch_q(c.name);
    let bits = |uint: &str, digits: u32| {
        format!(
            "if(isNull({q}), NULL, leftPad(lower(hex(reinterpretAs{uint}(assumeNotNull({q})))), {digits}, '0'))"
        )
    };
    match c.canon {
        Canon::Text
        | Canon::Output
        | Canon::Numeric
        | Canon::Date
        | Canon::Timestamp
        | Canon::TimestampTz
        | Canon::Time => format!("toString({q})"),
        Canon::Float4 => bits("UInt32", 8),
        Canon::Float8 => bits("UInt64", 16),
        Canon::Bytea => format!("lower(hex({q}))"),
        Canon::IntArray | Canon::NumericArray => {
            format!("arrayStringConcat(arrayMap(x -> ifNull(toString(x), 'NULL'), {q}), ',')")
        }
        Canon::TextArray => {
            format!("arrayStringConcat(arrayMap(x -> ifNull(lower(hex(x)), 'NULL'), {q}), ',')")
        }
    }
}

struct Fixture {
    /// Postgres schema (mixed case with a space).
    schema: String,
    /// ClickHouse database.
    db: String,
    /// `"schema"."Order""s"`.
    table: String,
    enum_ty: String,
    pipe: String,
    /// Whether `c_int4` is NOT NULL (deletes then fail: see the ignored test).
    not_null: bool,
}

impl Fixture {
    fn new(prefix: &str, not_null: bool) -> Self {
        let u = unique(prefix);
        let schema = format!("Sch ema {u}");
        Fixture {
            table: format!("{}.{}", pg_q(&schema), pg_q(TABLE)),
            enum_ty: format!("{}.{}", pg_q(&schema), pg_q(ENUM)),
            schema,
            db: u.clone(),
            pipe: pipe_name(&u),
            not_null,
        }
    }

    fn decl(&self, c: &Col) -> String {
        let d = c.decl.replace("{ty}", &self.enum_ty);
        if self.not_null {
            d
        } else {
            d.replace(" NOT NULL", "")
        }
    }

    fn ch_type(&self, c: &Col) -> String {
        if !self.not_null && c.decl.contains(" NOT NULL") {
            format!("Nullable({})", c.ch_type)
        } else {
            c.ch_type.to_owned()
        }
    }

    async fn create(&self) {
        let cols = COLS
            .iter()
            .map(|c| format!("{} {}", pg_q(c.name), self.decl(c)))
            .collect::<Vec<_>>()
            .join(",\n  ");
        pg_exec(&format!(
            "CREATE SCHEMA {s};
                 CREATE TYPE {ty} AS ENUM ('happy', 'so-so', 'très \"bien\"', '😀 ok', 'a,b');
                 CREATE TABLE {t} (\n  {cols}\n);",
            s = pg_q(&self.schema),
            ty = self.enum_ty,
            t = self.table,
        ))
        .await;
    }

    /// Hand-written rows at `base + 1 ..= base + 7`: typical values, all
    /// NULL, the extremes of every type, special floats, long values.
    fn special_rows(&self, base: i64) -> String {
        let (t, ty) = (&self.table, &self.enum_ty);
        let cols = COLS
            .iter()
            .map(|c| pg_q(c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = [
            // typical
            format!(
                "({id1}, 'select me', 42, 'quote \"q\" col', 12, 123456, 1234567890123, 1234.5678,
                  3.14159265358979323846264338327950288419, 3.14, 2.718281828459045, true,
                  'hello, world', 'varchar', 'ab', '\\xdeadbeef'::bytea, '2024-02-29',
                  '2024-02-29 12:34:56.789012', '2024-02-29 23:30:00.123456+05:30', '13:14:15.161718',
                  '1 year 2 mons -3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                  '{{\"b\": 1,  \"a\": [1, 2], \"a\": \"dup\"}}', '{{\"b\": 1, \"a\": [1, 2, {{\"c\": \"é\"}}]}}',
                  '192.168.0.1', 'happy', ARRAY[1, 2, 3],
                  ARRAY['a', 'b,c', 'd\"e', NULL, 'NULL', '', '{{}}', 'back\\slash', ' spaced ', 'x''y'],
                  ARRAY[1.5, NULL, -0.001, 12345678901234567890.123]::numeric[],
                  ARRAY['happy', NULL, 'a,b']::{ty}[])",
                id1 = base + 1
            ),
            // NULL wherever allowed
            padded(base + 2, &["NULL", "NULL", "NULL", "NULL", "0"]),
            // extremes
            format!(
                "({}, '', -2147483648, '😀🎉 emoji 中文字符', -32768, 2147483647, -9223372036854775808,
                  99999999999999.999999,
                  12345678901234567890123456789012345678.12345678901234567890123456789012345678,
                  'NaN', 'Infinity', false,
                  E'日本語テキスト 한국어 العربية 🚀 tab:\\t nl:\\n cr:\\r bs:\\\\ quote:'' dq:\"', '', 'abcde',
                  '\\x00ff00'::bytea, '1900-01-01', '2299-12-31 23:59:59.999999', '1970-01-01 00:00:00+00',
                  '24:00:00', '-1 days -00:00:01', '00000000-0000-0000-0000-000000000000', '[]',
                  '{{\"emoji\": \"😀\", \"nested\": {{\"k\": null}}}}', '2001:db8::1/64', 'très \"bien\"',
                  '{{}}'::int[], '{{}}'::text[], ARRAY[]::numeric[], '{{}}'::{ty}[])",
                base + 3
            ),
            // the other ends; JSON null (not SQL NULL); long values
            format!(
                "({}, repeat('ü', 5000), 2147483647, 'x', 0, -2147483648, 9223372036854775807,
                  -0.000001, 1.500000000000000000000000000000000000000000, '-Infinity', '-0', NULL,
                  repeat('長い文字列 ', 3000), NULL, NULL,
                  decode(repeat('0123456789abcdef', 1000), 'hex'), '2299-12-31', '1900-01-01 00:00:00',
                  '2299-12-31 23:59:59.999999+00', '00:00:00', '0', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
                  '\"just a string\"', 'null', '10.0.0.0/8', '😀 ok', ARRAY[NULL, NULL]::int[],
                  ARRAY[NULL]::text[], ARRAY[0, 0.000, -1e-38, -99999999999999999999999999999999999999]::numeric[],
                  ARRAY['a,b', 'très \"bien\"', '😀 ok']::{ty}[])",
                base + 4
            ),
            // floats at the edges of their ranges
            format!(
                "({}, 'floats', 1, NULL, 1, 1, 1, 0, 0, '-0', 5e-324, true, NULL, NULL, NULL, '\\x'::bytea,
                  '1999-12-31', '2000-01-01 00:00:00.000001', '1999-12-31 23:59:59.999999-08', '23:59:59.999999',
                  '-178000000 years', NULL, '{{}}', '{{}}', '::1', 'a,b', ARRAY[-2147483648, 2147483647],
                  ARRAY[''], ARRAY[0.1]::numeric[], NULL)",
                base + 5
            ),
            padded(
                base + 6,
                &["'more floats'", "2", "NULL", "2", "2", "2", "0.5", "-0.5", "1.4e-45", "1.7976931348623157e308"],
            ),
            padded(
                base + 7,
                &["'more floats'", "3", "NULL", "3", "3", "3", "NULL", "NULL", "3.4028235e38", "-2.2250738585072014e-308"],
            ),
        ];
        format!("INSERT INTO {t} ({cols}) VALUES {};", rows.join(",\n"))
    }

    /// Generated rows `from ..= to`, with NULLs sprinkled in every column.
    fn bulk_rows(&self, from: i64, to: i64) -> String {
        let (t, ty) = (&self.table, &self.enum_ty);
        let cols = COLS
            .iter()
            .map(|c| pg_q(c.name))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {t} ({cols})
             SELECT g, 'row ' || g || ' 行', g % 100, CASE WHEN g % 5 = 0 THEN NULL ELSE 'q\"' || g END,
                    (g % 32767)::smallint, g, g::bigint * 1000003,
                    CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 1.000123)::numeric(20,6) END,
                    CASE WHEN g % 6 = 0 THEN NULL ELSE g / 7.0 END,
                    CASE WHEN g % 8 = 0 THEN NULL ELSE (g / 3.0)::real END,
                    CASE WHEN g % 9 = 0 THEN NULL ELSE g / 7.0::float8 END,
                    CASE g % 3 WHEN 0 THEN NULL ELSE g % 2 = 0 END,
                    md5(g::text) || ' ✓', left(md5(g::text), 20), CASE WHEN g % 4 = 0 THEN NULL ELSE left(md5(g::text), 3) END,
                    CASE WHEN g % 10 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
                    date '2000-01-01' + (g % 30000)::int,
                    timestamp '2000-01-01' + g * interval '1 hour 0.000001 second',
                    timestamptz '2020-01-01 00:00:00+00' - g * interval '1 day 1.000001 second',
                    time '00:00' + g * interval '1.5 second',
                    CASE WHEN g % 11 = 0 THEN NULL ELSE g * interval '1 hour 1 second' END,
                    md5(g::text)::uuid,
                    json_build_object('g', g, 's', 'x' || g), jsonb_build_object('g', g, 'arr', jsonb_build_array(g, null)),
                    ('10.' || (g / 65536) % 256 || '.' || (g / 256) % 256 || '.' || g % 256)::inet,
                    CASE WHEN g % 11 = 0 THEN NULL ELSE (enum_range(NULL::{ty}))[1 + g % 5] END,
                    CASE WHEN g % 12 = 0 THEN NULL ELSE ARRAY[g, NULL, -g]::int[] END,
                    ARRAY['t' || g, NULL, 'a,\"b\"', ''],
                    ARRAY[g * 0.5, NULL]::numeric[],
                    ARRAY[(enum_range(NULL::{ty}))[1 + g % 5], NULL]
             FROM generate_series({from}, {to}) g;"
        )
    }

    async fn pg_rows(&self) -> BTreeMap<String, Vec<Option<String>>> {
        let pg = pg().await;
        pg.batch_execute("SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'")
            .await
            .unwrap();
        let exprs = COLS.iter().map(pg_expr).collect::<Vec<_>>().join(", ");
        let rows = pg
            .query(&format!("SELECT {exprs} FROM {}", self.table), &[])
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let vals: Vec<Option<String>> = (0..COLS.len()).map(|i| r.get(i)).collect();
                (vals[0].clone().unwrap(), vals)
            })
            .collect()
    }

    async fn ch_rows(&self) -> Result<BTreeMap<String, Vec<Option<String>>>, String> {
        let exprs = COLS.iter().map(ch_expr).collect::<Vec<_>>().join(", ");
        let q = format!(
            "SELECT {exprs} FROM {}.{} FINAL WHERE _pgpipe_is_deleted = 0",
            ch_q(&self.db),
            ch_q(TABLE)
        );
        let mut out = BTreeMap::new();
        for row in ch_json(&q).await? {
            let vals: Vec<Option<String>> = row
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s),
                    other => panic!("unexpected JSON value {other}"),
                })
                .collect();
            let key = vals[0].clone().unwrap();
            assert!(
                out.insert(key.clone(), vals).is_none(),
                "key {key} twice under FINAL"
            );
        }
        Ok(out)
    }

    /// The differences, column by column (empty when equal).
    async fn differences(&self) -> Vec<String> {
        let pg = self.pg_rows().await;
        let ch = match self.ch_rows().await {
            Ok(ch) => ch,
            Err(e) => return vec![format!("reading ClickHouse: {e}")],
        };
        let mut out = Vec::new();
        let short = |v: &Option<String>| match v {
            None => "NULL".to_owned(),
            Some(s) if s.chars().count() > 80 => {
                format!(
                    "{:?}…({} chars)",
                    s.chars().take(80).collect::<String>(),
                    s.len()
                )
            }
            Some(s) => format!("{s:?}"),
        };
        let keys: std::collections::BTreeSet<&String> = pg.keys().chain(ch.keys()).collect();
        for k in keys {
            match (pg.get(k), ch.get(k)) {
                (Some(_), None) => out.push(format!("Id {k}: missing in ClickHouse")),
                (None, Some(_)) => out.push(format!("Id {k}: only in ClickHouse")),
                (Some(a), Some(b)) => {
                    for (i, c) in COLS.iter().enumerate() {
                        if a[i] != b[i] {
                            out.push(format!(
                                "Id {k} column {:?}: postgres {} clickhouse {}",
                                c.name,
                                short(&a[i]),
                                short(&b[i])
                            ));
                        }
                    }
                }
                (None, None) => unreachable!(),
            }
        }
        if out.is_empty() {
            assert!(!pg.is_empty(), "nothing compared");
        }
        out
    }

    async fn wait_equal(&self, c: &mut Client, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = self.differences().await;
            if d.is_empty() {
                return;
            }
            let p = get(c, &self.pipe).await;
            assert_ne!(
                p.status(),
                PipeStatus::Failed,
                "pipe failed in step {:?}: {}",
                p.failed_step,
                p.error
            );
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} and ClickHouse {}.{TABLE} still differ after {timeout:?} ({} differences):\n{}",
                    self.table,
                    self.db,
                    d.len(),
                    d.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The destination's column types match the documented mapping.
    async fn assert_types(&self) {
        let q = format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{}' ORDER BY position",
            self.db,
            TABLE.replace('\\', "\\\\").replace('\'', "\\'")
        );
        let got: Vec<(String, String)> = ch_json(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut want: Vec<(String, String)> = COLS
            .iter()
            .map(|c| (c.name.to_owned(), self.ch_type(c)))
            .collect();
        for (n, t) in [
            ("_pgpipe_version", "UInt64"),
            ("_pgpipe_is_deleted", "UInt8"),
            ("_pgpipe_synced_at", "DateTime64(6, 'UTC')"),
        ] {
            want.push((n.into(), t.into()));
        }
        assert_eq!(got, want, "ClickHouse column types");
    }

    async fn start_pipe(&self) -> (InProcess, Client) {
        let (srv, mut c) = engine().await;
        c.create_pipe(pipe_req(&self.pipe, &self.db, &[&self.table]))
            .await
            .unwrap();
        wait_running(&mut c, &self.pipe, Duration::from_secs(120)).await;
        (srv, c)
    }

    async fn exec(&self, sql: &str) {
        pg().await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
    }
}

/// A VALUES row: the key, `vals`, then NULL for the remaining columns.
fn padded(id: i64, vals: &[&str]) -> String {
    let mut all = vec![id.to_string()];
    all.extend(vals.iter().map(|v| v.to_string()));
    all.resize(COLS.len(), "NULL".into());
    format!("({})", all.join(", "))
}

/// Rows of a ClickHouse query as JSON arrays.
async fn ch_json(q: &str) -> Result<Vec<Vec<serde_json::Value>>, String> {
    let bytes = ch("default")
        .query(q)
        .fetch_bytes("JSONCompactEachRow")
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&bytes).map_err(|e| e.to_string())?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_type_survives_the_snapshot() {
    let f = Fixture::new("typs", true);
    f.create().await;
    f.exec(&format!(
        "{}\n{}",
        f.special_rows(0),
        f.bulk_rows(100, 5_099)
    ))
    .await;
    let (_srv, mut c) = f.start_pipe().await;
    let p = get(&mut c, &f.pipe).await;
    assert_eq!(p.tables[0].snapshot_rows, 5_007);
    assert_eq!(p.tables[0].destination_table, TABLE);
    f.assert_types().await;
    f.wait_equal(&mut c, Duration::from_secs(30)).await;
    c.delete_pipe(DeletePipeRequest {
        name: f.pipe.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // The comparison is sharp: a newer version of row 1 in ClickHouse with
    // another text and a double one ulp off shows as exactly those two.
    ch(&f.db)
        .query(&format!(
            "INSERT INTO {t} SELECT * REPLACE ('tampered' AS c_text, \
                 reinterpretAsFloat64(reinterpretAsUInt64(assumeNotNull(c_double)) + 1) AS c_double, \
                 _pgpipe_version + 1 AS _pgpipe_version) \
             FROM {t} FINAL WHERE Id = 1",
            t = ch_q(TABLE)
        ))
        .execute()
        .await
        .unwrap();
    let d = f.differences().await;
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d[0].starts_with("Id 1 column \"c_double\""), "{d:#?}");
    assert!(d[1].starts_with("Id 1 column \"c_text\""), "{d:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_in_a_table_with_a_not_null_column_is_replicated() {
    let f = Fixture::new("typn", true);
    f.create().await;
    f.exec(&f.bulk_rows(1, 50)).await;
    let (_srv, mut c) = f.start_pipe().await;
    let t = &f.table;
    f.exec(&format!(
        "DELETE FROM {t} WHERE \"Id\" = 7;
         UPDATE {t} SET \"Id\" = 100008 WHERE \"Id\" = 8;"
    ))
    .await;
    f.wait_equal(&mut c, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_type_survives_cdc_inserts_updates_and_deletes() {
    let f = Fixture::new("typc", false);
    f.create().await;
    // A few snapshot rows, so updates and deletes also hit loaded rows.
    f.exec(&f.bulk_rows(1, 50)).await;
    let (_srv, mut c) = f.start_pipe().await;
    f.assert_types().await;

    // Inserts, in several transactions.
    f.exec(&f.special_rows(1_000)).await;
    f.exec(&f.bulk_rows(2_000, 3_999)).await;
    f.wait_equal(&mut c, Duration::from_secs(60)).await;

    let (t, ty) = (&f.table, &f.enum_ty);
    let nulls = COLS
        .iter()
        .skip(1)
        .filter(|c| !f.decl(c).contains("NOT NULL"))
        .map(|c| format!("{} = NULL", pg_q(c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    f.exec(&format!(
        // Values to NULL (a special row and a snapshot row).
        "UPDATE {t} SET {nulls} WHERE \"Id\" IN (1001, 7);
         -- NULLs to values.
         UPDATE {t} SET \"Select\" = 'was null ✓', \"order\" = 0, \"quo\"\"te col\" = '''', c_int2 = -1,
                c_int8 = 0, c_num = -99999999999999.999999, c_numu = -0.00000000000000000000000000000000000001,
                c_real = 'Infinity', c_double = 'NaN', c_bool = true, c_text = E'line1\\nline2',
                c_varchar = '中文', c_char = ' x', c_bytea = '\\x0a0d00', c_date = '2000-02-29',
                c_ts = '2024-06-01 00:00:00', c_tstz = '2024-06-01 00:00:00-07', c_time = '12:00:00.5',
                c_interval = '3 days', c_uuid = gen_random_uuid(), c_json = '{{\"k\":[]}}', c_jsonb = '[1, \"a\"]',
                c_inet = '127.0.0.1/8', c_enum = 'so-so', c_int_arr = ARRAY[NULL]::int[],
                c_text_arr = ARRAY['{{', '}}', '\"', '\\\\'], c_num_arr = ARRAY[1e-38]::numeric[],
                c_enum_arr = ARRAY['so-so']::{ty}[]
           WHERE \"Id\" = 1002;
         -- Many rows, several columns at once.
         UPDATE {t} SET c_text_arr = array_append(c_text_arr, 'appended, \"too\"'), c_num = c_num * 2,
                c_tstz = c_tstz + interval '1.5 second', c_enum = 'a,b', c_bytea = c_bytea || '\\xff'::bytea,
                \"Select\" = \"Select\" || ' ✎', c_int_arr = '{{}}'
           WHERE \"Id\" % 10 = 0;
         -- Key changes (an update of the primary key).
         UPDATE {t} SET \"Id\" = \"Id\" + 100000 WHERE \"Id\" IN (3, 1003, 2500);
         DELETE FROM {t} WHERE \"Id\" % 13 = 0 OR \"Id\" = 1004;"
    ))
    .await;
    // Inside one transaction: a row inserted, updated and deleted; a row
    // deleted and inserted again with other values; an update of a row
    // inserted in the same transaction.
    f.exec(&format!(
        "BEGIN;
         {ins}
         UPDATE {t} SET c_text = 'updated in its transaction' WHERE \"Id\" = 900001;
         DELETE FROM {t} WHERE \"Id\" = 900002;
         DELETE FROM {t} WHERE \"Id\" = 1005;
         {again}
         COMMIT;",
        ins = f.special_rows(900_000),
        again = f.bulk_rows(1_005, 1_005),
    ))
    .await;
    f.wait_equal(&mut c, Duration::from_secs(60)).await;

    let p = get(&mut c, &f.pipe).await;
    assert_eq!(p.status(), PipeStatus::Running, "{p:?}");
    assert!(p.error.is_empty(), "{}", p.error);
    let deleted: u64 = ch_one(
        &f.db,
        &format!(
            "SELECT count() FROM {} WHERE _pgpipe_is_deleted = 1",
            ch_q(TABLE)
        ),
    )
    .await;
    assert!(deleted > 100, "deletes are soft deletes: {deleted}");
    c.delete_pipe(DeletePipeRequest {
        name: f.pipe.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
}
