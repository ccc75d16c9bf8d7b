//! Argument parsing: clap definitions, labels, the token never shown.

use super::*;

#[test]
fn clap_definitions_are_valid() {
    TestCli::command().debug_assert();
}

#[test]
fn argument_parsing() {
    let cli = parse(&[
        "create",
        "orders",
        "--source",
        "host=db user=u",
        "--source-password-env",
        "PGPW",
        "--ch-url",
        "http://ch:8123",
        "--ch-database",
        "an",
        "--table",
        "public.orders::id,created_at",
        "--table",
        "public.items:items2",
        "--parallelism",
        "8",
        "--server",
        "10.0.0.1:50051",
    ])
    .unwrap();
    assert_eq!(cli.opts.server, "10.0.0.1:50051");
    let ClientCommand::Create(a) = cli.cmd else {
        panic!("not create");
    };
    assert_eq!(a.tables.len(), 2);
    assert_eq!(a.tables[0].order_by, vec!["id", "created_at"]);
    assert_eq!(a.tables[1].destination_table, "items2");
    assert_eq!(a.parallelism, Some(8));

    // Missing required options, bad specs and out-of-range values fail.
    assert!(parse(&["create", "x", "--source", "s"]).is_err());
    assert!(parse(&["create", "--file", "p.json"]).is_ok());
    assert!(
        parse(&[
            "create",
            "x",
            "--source",
            "s",
            "--ch-url",
            "u",
            "--ch-database",
            "d",
            "--table",
            "a.b.c"
        ])
        .is_err()
    );
    assert!(parse(&["create", "--file", "f", "--parallelism", "65"]).is_err());
    assert!(
        parse(&[
            "create",
            "--file",
            "f",
            "--source-password-stdin",
            "--ch-password-stdin"
        ])
        .is_err()
    );
    // get: a name or --id, not both, not neither.
    assert!(parse(&["get"]).is_err());
    assert!(parse(&["get", "x", "--id", "y"]).is_err());
    assert!(parse(&["get", "--id", "y"]).is_ok());
    let ClientCommand::Resync(r) = cmd(&[
        "resync",
        "orders",
        "--order-by",
        "public.orders=id,ts",
        "--dest",
        "public.orders=orders_v2",
        "--wait",
    ]) else {
        panic!("not resync");
    };
    assert_eq!(
        r.order_by,
        vec![("public.orders".into(), vec!["id".into(), "ts".into()])]
    );
    assert!(r.wait);
    assert!(parse(&["resync", "orders", "--order-by", "public.orders"]).is_err());
    let ClientCommand::Watch(w) = cmd(&["watch", "orders", "--after", "42", "--json"]) else {
        panic!("not watch");
    };
    assert_eq!((w.after, w.json, w.until_running), (Some(42), true, false));
}

#[test]
fn token_is_never_shown() {
    let cli = parse(&["--token", "hunter2", "list"]).unwrap();
    assert!(!format!("{cli:?}").contains("hunter2"));
    let help = TestCli::command().render_long_help().to_string();
    assert!(help.contains("PGPIPE_TOKEN"));
    assert!(AuthInterceptor::new(Some("bad\ntoken")).is_err());
    assert!(AuthInterceptor::new(Some("")).unwrap().header.is_none());
    assert_eq!(normalize_server("127.0.0.1:1"), "http://127.0.0.1:1");
    assert_eq!(normalize_server("https://x:1"), "https://x:1");
}

#[test]
fn label_arguments() {
    assert_eq!(
        parse_label_change("env=prod").unwrap(),
        LabelChange::Set("env".into(), "prod".into())
    );
    assert_eq!(
        parse_label_change("env-").unwrap(),
        LabelChange::Remove("env".into())
    );
    // A `-` before `=` is part of the key; the value may hold `=`.
    assert_eq!(
        parse_label_change("a-=x=y").unwrap(),
        LabelChange::Set("a-".into(), "x=y".into())
    );
    assert_eq!(
        parse_label_change("empty=").unwrap(),
        LabelChange::Set("empty".into(), String::new())
    );
    for bad in ["novalue", "=x", "-", ""] {
        assert!(parse_label_change(bad).is_err(), "{bad}");
    }
    assert!(parse_label("k").is_err());
}
