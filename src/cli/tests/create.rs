//! The CreatePipe and ResyncPipe requests assembled from options, env, stdin and files.

use super::*;

/// `create NAME --source SOURCE --ch-url http://ch:8123 --ch-database an
/// --table TABLE`, then `rest`.
fn create_args(name: &str, source: &str, table: &str, rest: &[&str]) -> CreateArgs {
    let mut args = vec![
        "create",
        name,
        "--source",
        source,
        "--ch-url",
        "http://ch:8123",
        "--ch-database",
        "an",
        "--table",
        table,
    ];
    args.extend_from_slice(rest);
    let ClientCommand::Create(a) = cmd(&args) else {
        panic!("not a create command: {args:?}")
    };
    *a
}

/// The request of `create NAME --table TABLE` with `flags`, no environment
/// and nothing on stdin.
fn flags_request(table: &str, flags: &[&str]) -> CreatePipeRequest {
    let a = create_args("p", "host=db", table, flags);
    build_create_request(&a, &|_: &str| None, &mut Cursor::new("")).unwrap()
}

#[test]
fn create_request_from_options_env_stdin_and_file() {
    let env = |var: &str| match var {
        "PGPW" => Some("pg-secret".into()),
        _ => None,
    };
    let a = create_args(
        "orders",
        "host=db user=u",
        "public.orders",
        &[
            "--source-password-env",
            "PGPW",
            "--ch-password-stdin",
            "--batch-size",
            "500",
            "--drop-dropped-columns",
        ],
    );
    let req = build_create_request(&a, &env, &mut Cursor::new("ch-secret\r\nrest\n")).unwrap();
    let source = req.source.unwrap();
    assert_eq!(source.connection_string, "host=db user=u");
    assert_eq!(source.password, "pg-secret");
    let dest = req.destination.unwrap();
    assert_eq!(dest.password, "ch-secret");
    assert_eq!(dest.database, "an");
    let settings = req.settings.unwrap();
    assert_eq!(settings.cdc_batch_size, 500);
    assert_eq!(settings.snapshot_parallelism, 0, "0 = server default");
    assert!(settings.drop_dropped_columns);

    // A missing env var or an empty stdin is an error.
    let a = create_args("x", "s", "t", &["--ch-password-env", "NOPE"]);
    let err = build_create_request(&a, &env, &mut Cursor::new("")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable NOPE (named by --ch-password-env) is not set"
    );
    let a = create_args("x", "s", "t", &["--source-password-stdin"]);
    assert!(build_create_request(&a, &env, &mut Cursor::new("")).is_err());

    // --file - from stdin, with options overriding it.
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "--file",
        "-",
        "--table",
        "public.b",
        "--parallelism",
        "2",
    ]) else {
        panic!()
    };
    let file = r#"{"name": "from-file", "source": {"connection_string": "host=a"},
                   "destination": {"url": "http://ch", "database": "d"},
                   "tables": ["public.a"], "settings": {"snapshot_parallelism": 16, "cdcBatchSize": 7}}"#;
    let req = build_create_request(&a, &env, &mut Cursor::new(file)).unwrap();
    assert_eq!(req.name, "from-file");
    assert_eq!(req.tables.len(), 1);
    assert_eq!(req.tables[0].source_table, "public.b");
    let s = req.settings.unwrap();
    assert_eq!((s.snapshot_parallelism, s.cdc_batch_size), (2, 7));
}

#[test]
fn create_takes_column_options_for_listed_tables() {
    let env = |_: &str| None;
    let req = flags_request(
        "public.users",
        &[
            "--exclude",
            "public.users=password_hash",
            "--rename",
            "users=desc:description,note:remark",
        ],
    );
    let t = &req.tables[0];
    assert_eq!(t.exclude_columns, ["password_hash"]);
    assert_eq!(t.rename_columns["desc"], "description");
    assert_eq!(t.rename_columns["note"], "remark");

    // From a file too; an option for a table not listed is a usage error.
    let ClientCommand::Create(a) = cmd(&["create", "--file", "-", "--exclude", "public.other=x"])
    else {
        panic!()
    };
    let file = r#"{"name": "f", "source": {"connection_string": "host=a"},
                   "destination": {"url": "http://ch", "database": "d"},
                   "tables": [{"sourceTable": "public.users", "excludeColumns": ["password_hash"],
                               "renameColumns": {"desc": "description"}}]}"#;
    let err = build_create_request(&a, &env, &mut Cursor::new(file)).unwrap_err();
    assert!(err.to_string().contains("no --table"), "{err}");
    let req =
        crate::cli::json::create_request_from_json(&serde_json::from_str(file).unwrap()).unwrap();
    assert_eq!(req.tables[0].exclude_columns, ["password_hash"]);
    assert_eq!(req.tables[0].rename_columns["desc"], "description");
}

#[test]
fn create_and_resync_take_column_types() {
    let req = flags_request(
        "public.people",
        &[
            "--type",
            "public.people=score:Decimal(20, 4),born:Int32",
            "--type",
            "people=doc:JSON",
        ],
    );
    let types = &req.tables[0].column_types;
    assert_eq!(types["score"], "Decimal(20, 4)");
    assert_eq!(types["born"], "Int32");
    assert_eq!(types["doc"], "JSON");
    // A malformed flag is a usage error before anything is sent.
    assert!(parse(&["create", "x", "--type", "public.people=born"]).is_err());

    let file = r#"{"name": "f", "source": {"connection_string": "host=a"},
                   "destination": {"url": "http://ch", "database": "d"},
                   "tables": [{"sourceTable": "public.people",
                               "columnTypes": {"born": "String"}}]}"#;
    let req =
        crate::cli::json::create_request_from_json(&serde_json::from_str(file).unwrap()).unwrap();
    assert_eq!(req.tables[0].column_types["born"], "String");

    let ClientCommand::Resync(r) = cmd(&["resync", "people", "--type", "people=born:String"])
    else {
        panic!()
    };
    assert_eq!(
        r.columns.types,
        [(
            "people".to_string(),
            vec![("born".to_string(), "String".to_string())]
        )]
    );
}
