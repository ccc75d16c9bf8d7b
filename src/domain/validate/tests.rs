//! Unit tests of the request checks in `domain::validate`.

use super::*;

#[test]
fn label_keys_follow_the_rule() {
    for ok in [
        "a",
        "0",
        "team",
        "app.kubernetes.io/name",
        "a-b_c",
        &"k".repeat(63),
    ] {
        assert!(label_key("labels", ok).is_ok(), "{ok}");
    }
    for bad in ["", "A", "-a", ".a", "a b", "ä", "a:b", &"k".repeat(64)] {
        let e = label_key("labels", bad).unwrap_err();
        assert!(e.0.contains("[a-z0-9]"), "{bad}: {e}");
    }
}

#[test]
fn pipe_names_follow_slot_rules() {
    assert!(pipe_name("orders_to_ch-2").is_ok());
    assert!(pipe_name("").is_err());
    assert!(pipe_name("Orders").is_err());
    assert!(pipe_name("1abc").is_err());
    assert!(pipe_name("a;drop").is_err());
    assert!(pipe_name(&"a".repeat(64)).is_err());
}

#[test]
fn qualified_names_parse_quotes_and_default_schema() {
    let q = qualified_name("t", "orders").unwrap();
    assert_eq!((q.schema.as_str(), q.table.as_str()), ("public", "orders"));
    let q = qualified_name("t", r#""My Schema"."a.b""c""#).unwrap();
    assert_eq!(
        (q.schema.as_str(), q.table.as_str()),
        ("My Schema", "a.b\"c")
    );
    assert_eq!(q.canonical(), r#""My Schema"."a.b""c""#);
    assert!(qualified_name("t", "a.b.c").is_err());
    assert!(qualified_name("t", "a.").is_err());
    assert!(qualified_name("t", "\"open").is_err());
}

#[test]
fn tls_parameters_are_checked_here_not_by_tokio_postgres() {
    let src = |c: &str| {
        source(Some(&SourceConfig {
            connection_string: c.into(),
            password: String::new(),
        }))
    };
    // tokio-postgres alone would refuse verify-full and sslrootcert.
    let (cfg, _) = src("postgres://u@db/app?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
    assert!(cfg.connection_string.contains("sslmode=verify-full"));
    assert!(src("host=db dbname=app sslmode=verify-ca sslrootcert=/ca.pem").is_ok());
    let e = src("host=db dbname=app sslmode=strict password=pw").unwrap_err();
    assert!(e.0.contains("sslmode=\"strict\""), "{}", e.0);
    assert!(!e.0.contains("pw"), "{}", e.0);
}

#[test]
fn ca_cert_needs_an_https_destination() {
    let dst = |url: &str| DestinationConfig {
        url: url.into(),
        database: "db".into(),
        ca_cert: "/etc/ca.pem".into(),
        ..Default::default()
    };
    assert!(destination(Some(&dst("https://ch:8443"))).is_ok());
    let e = destination(Some(&dst("http://ch:8123"))).unwrap_err();
    assert!(e.0.contains("only used with an https"), "{}", e.0);
}

#[test]
fn check_request_reports_every_part_and_keeps_the_good_ones() {
    let r = check_request("", None, None, &[], None, &BTreeMap::new());
    let fields: Vec<&str> = r.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["name", "source", "destination", "tables"]);
    assert!(r.source.is_none() && r.destination.is_none() && r.tables.is_empty());

    let t = |s: &str| TableConfig {
        source_table: s.into(),
        ..Default::default()
    };
    let src = SourceConfig {
        connection_string: "postgres://u:pw@db/app".into(),
        password: String::new(),
    };
    let r = check_request(
        "ok",
        Some(&src),
        None,
        &[t("a"), t("public.a"), t("x.y.z"), t("b")],
        None,
        &BTreeMap::new(),
    );
    let fields: Vec<&str> = r.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["destination", "tables[1]", "tables[2]"]);
    assert_eq!(r.problems[2].table, "x.y.z");
    let (cfg, pw) = r.source.unwrap();
    assert_eq!(
        (cfg.connection_string.as_str(), pw.as_deref()),
        ("postgres://u@db/app", Some("pw"))
    );
    let kept: Vec<&str> = r.tables.iter().map(|t| t.source_table.as_str()).collect();
    assert_eq!(kept, ["public.a", "public.b"]);
}

#[test]
fn duplicate_tables_are_rejected() {
    let t = |s: &str| TableConfig {
        source_table: s.into(),
        ..Default::default()
    };
    let problems = |list: &[TableConfig]| {
        check_request("ok", None, None, list, None, &BTreeMap::new())
            .problems
            .into_iter()
            .filter(|p| p.field.starts_with("tables"))
            .map(|p| p.invalid.0)
            .collect::<Vec<_>>()
    };
    let same_source = problems(&[t("public.a"), t("a")]);
    assert!(same_source[0].contains("listed twice"), "{same_source:?}");
    let same_destination = problems(&[t("s1.a"), t("s2.a")]);
    assert!(
        same_destination[0].contains("used by two entries"),
        "{same_destination:?}"
    );
}
