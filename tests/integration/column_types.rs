//! Values ClickHouse cannot hold by default, and the per-column type choice
//! (`TableConfig.column_types`), against the real Postgres and ClickHouse:
//! dates and timestamps outside Date32/DateTime64 fail the pipe naming
//! table, column and value, unless the column chose String, Int32 days or
//! Clamp; numeric NaN/±Infinity and 50-digit values through Float64 and
//! String; jsonb as ClickHouse JSON; a date key as String; choices that do
//! not fit refused; a resync changing a choice. Stored values are checked
//! exactly, rows from the initial load and from CDC alike.

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;

/// Dates outside ClickHouse's range (and one inside) as Postgres prints
/// them.
const DATES: &[&str] = &[
    "0001-01-01",
    "1850-06-01",
    "9999-12-31",
    "infinity",
    "-infinity",
    "0044-03-15 BC",
    "2024-02-29",
];

fn req(name: &str, schema: &str, table: &str, types: &[(&str, &str)]) -> CreatePipeRequest {
    let mut r = pipe_req(name, schema, &[&format!("{schema}.{table}")]);
    r.tables[0].column_types = types
        .iter()
        .map(|(c, t)| ((*c).into(), (*t).into()))
        .collect();
    r
}

fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_date_outside_clickhouse_range_in_the_initial_load_fails_the_pipe_naming_it() {
    let schema = unique("ctl");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.ev (id int PRIMARY KEY, d date, ts timestamp);
         INSERT INTO {schema}.ev VALUES (1, '2024-01-01', '2024-01-01 00:00'),
                                        (2, '1850-06-01', '2024-01-01 00:00');"
        ),
    )
    .await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    c.create_pipe(req(&name, &schema, "ev", &[])).await.unwrap();
    let p = wait_failed(&mut c, &name, WAIT).await;
    println!("reason: {}", p.error);
    for says in ["ev", "column \"d\"", "\"1850-06-01\"", "column_types"] {
        assert!(p.error.contains(says), "{says}: {}", p.error);
    }
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timestamp_outside_clickhouse_range_arriving_by_cdc_fails_the_pipe_naming_it() {
    let schema = unique("ctc");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.ev (id int PRIMARY KEY, d date, tz timestamptz);
         INSERT INTO {schema}.ev VALUES (1, '2024-01-01', '2024-01-01 00:00+00');"
        ),
    )
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "ev", &[])).await;
    pg_exec(&format!(
        "INSERT INTO {schema}.ev VALUES (2, '2024-01-02', 'infinity');"
    ))
    .await;
    let p = wait_failed(&mut c, &name, WAIT).await;
    for says in ["ev", "column \"tz\"", "\"infinity\"", "column_types"] {
        assert!(p.error.contains(says), "{says}: {}", p.error);
    }
    // A date by CDC likewise (a new pipe over the fixed table).
    delete_pipe(&mut c, &name).await;
    pg_exec(&format!("DELETE FROM {schema}.ev WHERE id = 2;")).await;
    let name2 = format!("{name}-2");
    let mut r = req(&name2, &format!("{schema}_2"), "ev", &[]);
    r.tables[0].source_table = format!("{schema}.ev");
    c.create_pipe(r).await.unwrap();
    wait_running(&mut c, &name2, WAIT).await;
    pg_exec(&format!(
        "INSERT INTO {schema}.ev VALUES (3, '0001-01-01', now());"
    ))
    .await;
    let p = wait_failed(&mut c, &name2, WAIT).await;
    for says in ["column \"d\"", "\"0001-01-01\""] {
        assert!(p.error.contains(says), "{says}: {}", p.error);
    }
    delete_pipe(&mut c, &name2).await;
}

/// `ev`: every date of [`DATES`] in a date, a timestamp and a timestamptz
/// column for each choice; rows 1.. loaded, rows 101.. by CDC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dates_and_timestamps_are_stored_as_chosen_in_the_load_and_by_cdc() {
    let schema = unique("ctd");
    let cols = [
        "d_str date",
        "d_days date",
        "d_clamp date",
        "ts_str timestamp",
        "ts_clamp timestamp",
        "tz_str timestamptz",
        "tz_clamp timestamptz",
    ];
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.ev (id int PRIMARY KEY, {});",
            cols.join(", ")
        ),
    )
    .await;
    let insert = |first: usize| {
        let rows: Vec<String> = DATES
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (ts, tz) = match *d {
                    "infinity" | "-infinity" => (d.to_string(), d.to_string()),
                    _ => match d.strip_suffix(" BC") {
                        Some(day) => (
                            format!("{day} 12:34:56.5 BC"),
                            format!("{day} 12:34:56.5+02 BC"),
                        ),
                        None => (format!("{d} 12:34:56.5"), format!("{d} 12:34:56.5+02")),
                    },
                };
                format!(
                    "({}, {d}, {d}, {d}, {ts}, {ts}, {tz}, {tz})",
                    first + i,
                    d = sq(d),
                    ts = sq(&ts),
                    tz = sq(&tz)
                )
            })
            .collect();
        format!("INSERT INTO {schema}.ev VALUES {};", rows.join(", "))
    };
    pg_exec(&insert(1)).await;
    let name = pipe_name(&schema);
    let types = [
        ("d_str", "String"),
        ("d_days", "Int32"),
        ("d_clamp", "Clamp"),
        ("ts_str", "String"),
        ("ts_clamp", "Clamp"),
        ("tz_str", "String"),
        ("tz_clamp", "Clamp"),
    ];
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "ev", &types)).await;
    pg_exec(&insert(101)).await;
    let nullable = |t: &str| format!("Nullable({t})");
    assert_eq!(
        ch_column_types(&schema, "ev").await,
        [
            ("id", "Int32".to_string()),
            ("d_str", nullable("String")),
            ("d_days", nullable("Int32")),
            ("d_clamp", nullable("Date32")),
            ("ts_str", nullable("String")),
            ("ts_clamp", nullable("DateTime64(6, 'UTC')")),
            ("tz_str", nullable("String")),
            ("tz_clamp", nullable("DateTime64(6, 'UTC')")),
        ]
        .map(|(n, t)| (n.to_string(), t))
    );
    // What each choice must store, computed by Postgres: its text, days
    // since 1970 (±infinity as the Int32 ends), the value clamped to
    // ClickHouse's range as ClickHouse prints it.
    let clamp_ts = |c: &str| {
        format!(
            "to_char(greatest(least({c}, '2299-12-31 23:59:59.999999'), '1900-01-01'), \
             'YYYY-MM-DD HH24:MI:SS.US')"
        )
    };
    let want = pg_rows(&format!(
        "SELECT id, d_str::text,
                CASE WHEN d_days = 'infinity' THEN 2147483647
                     WHEN d_days = '-infinity' THEN -2147483648
                     ELSE d_days - date '1970-01-01' END,
                greatest(least(d_clamp, '2299-12-31'), '1900-01-01')::text,
                ts_str::text, {}, tz_str::text, {}
         FROM {schema}.ev ORDER BY id",
        clamp_ts("ts_clamp"),
        clamp_ts("(tz_clamp AT TIME ZONE 'UTC')")
    ))
    .await;
    assert_eq!(want.len(), 2 * DATES.len());
    // Spot checks of the rule itself, not only of Postgres' arithmetic.
    assert_eq!(want[1][1..4], ["1850-06-01", "-43678", "1900-01-01"]);
    assert_eq!(want[3][1..4], ["infinity", "2147483647", "2299-12-31"]);
    assert_eq!(want[5][1..4], ["0044-03-15 BC", "-735160", "1900-01-01"]);
    assert_eq!(want[2][6], "9999-12-31 10:34:56.5+00");
    wait_ch_rows(
        &schema,
        "SELECT id, d_str, d_days, toString(d_clamp), ts_str, toString(ts_clamp), tz_str, \
         toString(tz_clamp) FROM ev FINAL ORDER BY id",
        &want,
    )
    .await;
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn numeric_nan_infinity_and_50_digits_through_float64_and_string() {
    let schema = unique("ctn");
    let big = "12345678901234567890123456789012345678901234567890";
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.num (id int PRIMARY KEY, f numeric, s numeric, big numeric);
         INSERT INTO {schema}.num VALUES
             (1, 'NaN', 'NaN', '{big}'),
             (2, 'Infinity', 'Infinity', '-{big}.000001'),
             (3, '-Infinity', '-Infinity', '0.{big}'),
             (4, '1.50', '1.50', NULL);"
        ),
    )
    .await;
    let name = pipe_name(&schema);
    let types = [("f", "Float64"), ("s", "String"), ("big", "string")];
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "num", &types)).await;
    pg_exec(&format!(
        "INSERT INTO {schema}.num SELECT id + 100, f, s, big FROM {schema}.num;"
    ))
    .await;
    let p = get(&mut c, &name).await;
    assert_eq!(
        p.config.unwrap().tables[0].column_types["big"],
        "String",
        "stored in the canonical spelling"
    );
    let mut want = Vec::new();
    for first in [0, 100] {
        for (id, f, s, b) in [
            (1, "nan", "NaN", big.to_string()),
            (2, "inf", "Infinity", format!("-{big}.000001")),
            (3, "-inf", "-Infinity", format!("0.{big}")),
            (4, "1.5", "1.50", "\\N".to_string()),
        ] {
            want.push(vec![
                (first + id).to_string(),
                f.to_string(),
                s.to_string(),
                b,
            ]);
        }
    }
    wait_ch_rows(
        &schema,
        "SELECT id, toString(f), s, big FROM num FINAL ORDER BY id",
        &want,
    )
    .await;
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jsonb_as_clickhouse_json_in_the_load_by_cdc_and_with_unchanged_toast() {
    let schema = unique("ctj");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.docs (id int PRIMARY KEY, j jsonb, v int);
         INSERT INTO {schema}.docs VALUES
             (1, '{{\"a\": 1, \"b\": {{\"c\": [1, 2]}}, \"s\": \"x\"}}', 0),
             (2, NULL, 0),
             (3, jsonb_build_object('big', (SELECT string_agg(md5(k::text), '') FROM generate_series(1, 300) k)), 0);"
    ))
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "docs", &[("j", "JSON")])).await;
    assert_eq!(
        ch_column_types(&schema, "docs").await[1],
        ("j".to_string(), "Nullable(JSON)".to_string())
    );
    // CDC: a new row, and an update of `v` only (the big jsonb is sent as
    // an unchanged TOAST value and read back from ClickHouse's JSON).
    pg_exec(&format!(
        "INSERT INTO {schema}.docs VALUES (4, '{{\"k\": \"v\"}}', 0);
         UPDATE {schema}.docs SET v = 1 WHERE id = 3;"
    ))
    .await;
    let big: String =
        pg_rows(&format!("SELECT j->>'big' FROM {schema}.docs WHERE id = 3")).await[0][0].clone();
    let want = vec![
        vec!["1", r#"{"a":1,"b":{"c":[1,2]},"s":"x"}"#, "0"],
        vec!["2", "\\N", "0"],
        vec!["3", &format!(r#"{{"big":"{big}"}}"#), "1"],
        vec!["4", r#"{"k":"v"}"#, "0"],
    ]
    .into_iter()
    .map(|r| r.into_iter().map(String::from).collect())
    .collect::<Vec<Vec<String>>>();
    wait_ch_rows(
        &schema,
        "SELECT id, toString(j), v FROM docs FINAL ORDER BY id",
        &want,
    )
    .await;
    // ClickHouse's JSON holds objects only: an array fails the pipe, named.
    pg_exec(&format!(
        "INSERT INTO {schema}.docs VALUES (5, '[1, 2]', 0);"
    ))
    .await;
    let p = wait_failed(&mut c, &name, WAIT).await;
    for says in ["column \"j\"", "[1, 2]", "not an object"] {
        assert!(p.error.contains(says), "{says}: {}", p.error);
    }
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_date_key_stored_as_string_keeps_out_of_range_keys_apart() {
    let schema = unique("ctk");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.days (d date PRIMARY KEY, v int);
         INSERT INTO {schema}.days VALUES ('0001-01-01', 1), ('1850-06-01', 2), ('infinity', 3),
                                          ('2024-02-29', 4);"
        ),
    )
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "days", &[("d", "String")])).await;
    pg_exec(&format!(
        "UPDATE {schema}.days SET v = 10 WHERE d = '0001-01-01';
         DELETE FROM {schema}.days WHERE d = 'infinity';
         INSERT INTO {schema}.days VALUES ('9999-12-31', 5);"
    ))
    .await;
    let want = rows(&[
        ["0001-01-01", "10"],
        ["1850-06-01", "2"],
        ["2024-02-29", "4"],
        ["9999-12-31", "5"],
    ]);
    wait_ch_rows(
        &schema,
        "SELECT d, v FROM days FINAL WHERE _pgpipe_is_deleted = 0 ORDER BY d",
        &want,
    )
    .await;
    assert_eq!(
        ch_column_types(&schema, "days").await[0],
        ("d".to_string(), "String".to_string())
    );
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn column_types_that_do_not_fit_are_refused_naming_the_field() {
    let schema = unique("ctv");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.t (id bigint PRIMARY KEY, d date, n numeric(10, 2), arr int[],
                                  secret text);"
        ),
    )
    .await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let with = |types: &[(&str, &str)]| {
        let mut r = req(&name, &schema, "t", types);
        r.tables[0].exclude_columns = vec!["secret".into()];
        r
    };
    let field = |c: &str| format!("tables[0].column_types[\"{c}\"]");
    let mut ordered = with(&[("d", "Clamp")]);
    ordered.tables[0].order_by = vec!["id".into(), "d".into()];
    // (request, field at fault, what the message says)
    let cases = [
        (
            with(&[("d", "Float64")]),
            field("d"),
            "String, Int32, Clamp",
        ),
        (with(&[("nope", "String")]), field("nope"), "does not have"),
        (with(&[("secret", "String")]), field("secret"), "excluded"),
        (
            with(&[("n", "Decimal(9, 2)")]),
            field("n"),
            "cannot hold every numeric(10, 2)",
        ),
        (with(&[("arr", "Clamp")]), field("arr"), "arrays"),
        (with(&[("d", "Date64")]), field("d"), "unknown column type"),
        (ordered, field("d"), "order_by"),
    ];
    for (req, field, says) in cases {
        let p = the_column_problem(&mut c, req.clone(), &field).await;
        assert!(p.message.contains(says), "{says}: {p:?}");
        let err = c.create_pipe(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(&field), "{field}: {}", err.message());
    }
    // A table added to a running pipe is checked the same way.
    pg_exec(&format!(
        "CREATE TABLE {schema}.ok (id int PRIMARY KEY); INSERT INTO {schema}.ok VALUES (1);"
    ))
    .await;
    c.create_pipe(req(&name, &schema, "ok", &[])).await.unwrap();
    wait_running(&mut c, &name, WAIT).await;
    let mut added = table(&format!("{schema}.t"));
    added.column_types = [("d".to_string(), "Float64".to_string())].into();
    let err = c
        .update_pipe(add_tables_req(&name, vec![added]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("column_types"), "{}", err.message());
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_can_change_a_column_type_and_the_rows_stay_equal() {
    let schema = unique("ctr");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.ev (id int PRIMARY KEY, d date NOT NULL, n date);
         INSERT INTO {schema}.ev VALUES (1, '0001-01-01', NULL), (2, '2024-02-29', NULL),
                                        (3, 'infinity', NULL), (4, '1970-01-01', NULL),
                                        (9, '1850-06-01', NULL);"
        ),
    )
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "ev", &[("d", "String")])).await;
    let live = "SELECT id, d FROM ev FINAL WHERE _pgpipe_is_deleted = 0 ORDER BY id";
    // A deleted row: its tombstone (d a String filler) is carried over into
    // the rebuilt table although d becomes Int32.
    pg_exec(&format!("DELETE FROM {schema}.ev WHERE id = 9;")).await;
    wait_ch_rows(
        &schema,
        live,
        &rows(&[
            ["1", "0001-01-01"],
            ["2", "2024-02-29"],
            ["3", "infinity"],
            ["4", "1970-01-01"],
        ]),
    )
    .await;
    // Without the flag a resync refuses the change; with it, the table is
    // rebuilt with the new type.
    let mut o = table(&format!("{schema}.ev"));
    o.column_types = [("d".to_string(), "Int32".to_string())].into();
    let refused = resync_overrides(&mut c, &name, vec![o.clone()], false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("replace_column_options"));
    // A choice that cannot hold the column is refused before anything
    // changes, naming the field.
    let mut wrong = table(&format!("{schema}.ev"));
    wrong.column_types = [("d".to_string(), "Float64".to_string())].into();
    let refused = resync_overrides(&mut c, &name, vec![wrong], true)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("column_types[\"d\"]"),
        "{}",
        refused.message()
    );
    let new = resync_overrides(&mut c, &name, vec![o], true)
        .await
        .unwrap();
    assert_eq!(
        new.config.as_ref().unwrap().tables[0].column_types["d"],
        "Int32"
    );
    let running = wait_running(&mut c, &name, WAIT).await;
    assert_eq!(running.id, new.id);
    assert_eq!(
        ch_column_types(&schema, "ev").await[1],
        ("d".to_string(), "Int32".to_string())
    );
    let deleted = ch_rows(
        &schema,
        "SELECT id FROM ev WHERE _pgpipe_is_deleted = 1 ORDER BY id",
    )
    .await;
    assert_eq!(deleted, [["9"]], "soft-deleted row carried over");
    pg_exec(&format!(
        "INSERT INTO {schema}.ev VALUES (5, '-infinity', NULL);"
    ))
    .await;
    wait_ch_rows(
        &schema,
        live,
        &rows(&[
            ["1", "-719162"],
            ["2", "19782"],
            ["3", "2147483647"],
            ["4", "0"],
            ["5", "-2147483648"],
        ]),
    )
    .await;
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_destination_table_must_have_the_chosen_type() {
    let schema = unique("cte");
    create_schema(
        &schema,
        &format!(
            "CREATE TABLE {schema}.ev (id int PRIMARY KEY, d date);
         INSERT INTO {schema}.ev VALUES (1, '2024-02-29');"
        ),
    )
    .await;
    // A pipe with the default mapping leaves `ev` (d Date32) behind.
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(req(&name, &schema, "ev", &[])).await;
    delete_pipe(&mut c, &name).await;
    let with = |types: &[(&str, &str)]| validate_req(req(&name, &schema, "ev", types));
    let v = c
        .validate_pipe(with(&[("d", "String")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.problems.len(), 1, "{v:?}");
    assert_eq!(v.problems[0].kind(), ProblemKind::DestinationTable);
    for says in [
        "Nullable(Date32)",
        "column_types String",
        "Nullable(String)",
    ] {
        assert!(v.problems[0].message.contains(says), "{says}: {v:?}");
    }
    // Clamp keeps the default type: the table fits.
    let v = c
        .validate_pipe(with(&[("d", "Clamp")]))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}
