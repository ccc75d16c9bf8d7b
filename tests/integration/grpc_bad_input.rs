//! Hostile and malformed input on every RPC, through a real server (control
//! plane): oversized strings, empty strings, injection-shaped names, bad
//! overrides. Each case asserts its status and message, and that nothing was
//! recorded (ListPipes unchanged, no event appended). The data-plane checks
//! (missing key, unsupported types, ORDER BY, identifiers replicated
//! literally) are in tests/hostile_tables.rs.

use std::future::Future;
use std::pin::Pin;

use crate::common::*;
use pgpipe::proto::*;
use tonic::{Code, Status};

type Reply = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

struct Case {
    what: String,
    call: Box<dyn Fn(Client) -> Reply>,
    code: Code,
    needle: &'static str,
}

fn case<F, Fut>(what: impl Into<String>, code: Code, needle: &'static str, f: F) -> Case
where
    F: Fn(Client) -> Fut + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    Case {
        what: what.into(),
        call: Box::new(move |c| Box::pin(f(c))),
        code,
        needle,
    }
}

async fn snapshot(c: &mut Client) -> (Vec<Pipe>, u64) {
    let l = list_all(c).await;
    (l, log_head(c).await)
}

const MB: usize = 1 << 20;

/// Names shaped like SQL injection, comment tricks and unicode; pipe names
/// must refuse them (they become slot names).
const HOSTILE: &[&str] = &[
    "a'; drop table x; --",
    "a\"b",
    "a`b",
    "a;b",
    "a;--",
    "a/*b*/",
    "café",
    "a\u{202e}b",
    "a b",
    "a\0b",
    "A",
];

fn create_with(
    f: impl Fn(&mut CreatePipeRequest) + Send + Sync + 'static,
) -> impl Fn(Client) -> Reply {
    let f = std::sync::Arc::new(f);
    move |mut c| {
        let f = std::sync::Arc::clone(&f);
        Box::pin(async move {
            let mut r = create_req("fresh");
            f(&mut r);
            c.create_pipe(r).await.map(|_| ())
        })
    }
}

fn cases() -> Vec<Case> {
    let big = "x".repeat(MB);
    let long_ident = "t".repeat(64);
    let mut v = vec![];

    // Oversized and empty strings on every RPC that takes a name.
    for (label, name, needle) in [
        ("1 MB name", big.clone(), "at most 63"),
        ("64-byte name", "p".repeat(64), "at most 63"),
        ("empty name", String::new(), "required"),
    ] {
        let n = name.clone();
        v.push(case(
            format!("create: {label}"),
            Code::InvalidArgument,
            needle,
            move |mut c| {
                let r = create_req(&n);
                async move { c.create_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = name.clone();
        v.push(case(
            format!("delete: {label}"),
            Code::InvalidArgument,
            needle,
            move |mut c| {
                let r = DeletePipeRequest {
                    name: n.clone(),
                    ..Default::default()
                };
                async move { c.delete_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = name.clone();
        v.push(case(
            format!("pause: {label}"),
            Code::InvalidArgument,
            needle,
            move |mut c| {
                let r = PausePipeRequest { name: n.clone() };
                async move { c.pause_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = name.clone();
        v.push(case(
            format!("resume: {label}"),
            Code::InvalidArgument,
            needle,
            move |mut c| {
                let r = ResumePipeRequest { name: n.clone() };
                async move { c.resume_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = name.clone();
        v.push(case(
            format!("resync: {label}"),
            Code::InvalidArgument,
            needle,
            move |mut c| {
                let r = ResyncPipeRequest {
                    name: n.clone(),
                    ..Default::default()
                };
                async move { c.resync_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = name.clone();
        v.push(case(
            format!("watch pipe: {label}"),
            Code::InvalidArgument,
            needle,
            move |mut c| {
                let r = WatchPipeRequest {
                    name: n.clone(),
                    ..Default::default()
                };
                async move { c.watch_pipe(r).await.map(|_| ()) }
            },
        ));
        if !name.is_empty() {
            let n = name.clone();
            v.push(case(
                format!("get: {label}"),
                Code::InvalidArgument,
                needle,
                move |mut c| {
                    let r = GetPipeRequest {
                        name: n.clone(),
                        ..Default::default()
                    };
                    async move { c.get_pipe(r).await.map(|_| ()) }
                },
            ));
            let n = name.clone();
            v.push(case(
                format!("watch events: {label}"),
                Code::InvalidArgument,
                needle,
                move |mut c| {
                    let r = WatchEventsRequest {
                        pipe_name: n.clone(),
                        ..Default::default()
                    };
                    async move { c.watch_events(r).await.map(|_| ()) }
                },
            ));
        }
    }
    let b = big.clone();
    v.push(case(
        "get: 1 MB id",
        Code::InvalidArgument,
        "too long",
        move |mut c| {
            let r = GetPipeRequest {
                id: b.clone(),
                ..Default::default()
            };
            async move { c.get_pipe(r).await.map(|_| ()) }
        },
    ));
    v.push(case(
        "get: unknown id",
        Code::NotFound,
        "no pipe has id",
        |mut c| {
            let r = GetPipeRequest {
                id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            };
            async move { c.get_pipe(r).await.map(|_| ()) }
        },
    ));
    v.push(case(
        "get: id shaped like injection",
        Code::NotFound,
        "no pipe has id",
        |mut c| {
            let r = GetPipeRequest {
                id: "' OR '1'='1".into(),
                ..Default::default()
            };
            async move { c.get_pipe(r).await.map(|_| ()) }
        },
    ));

    // Injection-shaped pipe names: refused by every RPC.
    for h in HOSTILE {
        let n = h.to_string();
        v.push(case(
            format!("create: name {h:?}"),
            Code::InvalidArgument,
            "not allowed",
            move |mut c| {
                let r = create_req(&n);
                async move { c.create_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = h.to_string();
        v.push(case(
            format!("get: name {h:?}"),
            Code::InvalidArgument,
            "not allowed",
            move |mut c| {
                let r = GetPipeRequest {
                    name: n.clone(),
                    ..Default::default()
                };
                async move { c.get_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = h.to_string();
        v.push(case(
            format!("delete: name {h:?}"),
            Code::InvalidArgument,
            "not allowed",
            move |mut c| {
                let r = DeletePipeRequest {
                    name: n.clone(),
                    ..Default::default()
                };
                async move { c.delete_pipe(r).await.map(|_| ()) }
            },
        ));
        let n = h.to_string();
        v.push(case(
            format!("watch events: name {h:?}"),
            Code::InvalidArgument,
            "not allowed",
            move |mut c| {
                let r = WatchEventsRequest {
                    pipe_name: n.clone(),
                    ..Default::default()
                };
                async move { c.watch_events(r).await.map(|_| ()) }
            },
        ));
    }

    // CreatePipe fields: oversized, empty, malformed.
    let b = big.clone();
    v.push(case(
        "create: 1 MB source table",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.tables[0].source_table = b.clone()),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB source table with an open quote",
        Code::InvalidArgument,
        "unterminated quote",
        create_with(move |r| r.tables[0].source_table = format!("\"{b}")),
    ));
    let l = long_ident.clone();
    v.push(case(
        "create: 64-byte table name",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.tables[0].source_table = format!("public.{l}")),
    ));
    let l = long_ident.clone();
    v.push(case(
        "create: 64-byte schema name",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.tables[0].source_table = format!("{l}.t")),
    ));
    let l = long_ident.clone();
    v.push(case(
        "create: 64-byte destination table",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.tables[0].destination_table = l.clone()),
    ));
    let l = long_ident.clone();
    v.push(case(
        "create: 64-byte order_by column",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.tables[0].order_by = vec![l.clone()]),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB order_by column",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.tables[0].order_by = vec![b.clone()]),
    ));
    v.push(case(
        "create: NUL in a table name",
        Code::InvalidArgument,
        "NUL",
        create_with(|r| r.tables[0].source_table = "public.a\0b".into()),
    ));
    v.push(case(
        "create: empty source table",
        Code::InvalidArgument,
        "is required",
        create_with(|r| r.tables[0].source_table = String::new()),
    ));
    v.push(case(
        "create: blank source table",
        Code::InvalidArgument,
        "is required",
        create_with(|r| r.tables[0].source_table = "   ".into()),
    ));
    v.push(case(
        "create: empty schema part",
        Code::InvalidArgument,
        "empty part",
        create_with(|r| r.tables[0].source_table = ".orders".into()),
    ));
    v.push(case(
        "create: empty quoted part",
        Code::InvalidArgument,
        "empty part",
        create_with(|r| r.tables[0].source_table = "public.\"\"".into()),
    ));
    v.push(case(
        "create: same table quoted and unquoted",
        Code::InvalidArgument,
        "listed twice",
        create_with(|r| r.tables[1].source_table = "\"public\".\"orders\"".into()),
    ));
    v.push(case(
        "create: default schema twice",
        Code::InvalidArgument,
        "listed twice",
        create_with(|r| r.tables[1].source_table = "orders".into()),
    ));
    v.push(case(
        "create: 1001 tables",
        Code::InvalidArgument,
        "at most 1000",
        create_with(|r| r.tables = (0..1001).map(|i| table(&format!("public.t{i}"))).collect()),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB connection string",
        Code::InvalidArgument,
        "at most 4096",
        create_with(move |r| {
            r.source.as_mut().unwrap().connection_string = format!("postgres://u@h/{b}")
        }),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB source password",
        Code::InvalidArgument,
        "source.password is 1048576 bytes",
        create_with(move |r| {
            let s = r.source.as_mut().unwrap();
            s.connection_string = "postgres://app@127.0.0.1:5432/app".into();
            s.password = b.clone();
        }),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB destination url",
        Code::InvalidArgument,
        "destination.url is",
        create_with(move |r| {
            r.destination.as_mut().unwrap().url = format!("http://{}", &b[..b.len() - 7])
        }),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB destination database",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.destination.as_mut().unwrap().database = b.clone()),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB destination user",
        Code::InvalidArgument,
        "at most 63",
        create_with(move |r| r.destination.as_mut().unwrap().user = b.clone()),
    ));
    let b = big.clone();
    v.push(case(
        "create: 1 MB destination password",
        Code::InvalidArgument,
        "destination.password is 1048576 bytes",
        create_with(move |r| r.destination.as_mut().unwrap().password = b.clone()),
    ));
    v.push(case(
        "create: empty destination url",
        Code::InvalidArgument,
        "destination.url is required",
        create_with(|r| r.destination.as_mut().unwrap().url.clear()),
    ));
    v.push(case(
        "create: destination url with credentials",
        Code::InvalidArgument,
        "must not carry credentials",
        create_with(|r| r.destination.as_mut().unwrap().url = "http://u:p@h:8123".into()),
    ));
    v.push(case(
        "create: empty table entry",
        Code::InvalidArgument,
        "is required",
        create_with(|r| r.tables.push(TableConfig::default())),
    ));
    v.push(case(
        "create: order_by with an empty column",
        Code::InvalidArgument,
        "is empty",
        create_with(|r| r.tables[0].order_by = vec!["id".into(), String::new()]),
    ));

    // ResyncPipe overrides on an existing pipe ("base").
    let ov = |o: TableConfig| {
        move |mut c: Client| {
            let r = ResyncPipeRequest {
                name: "base".into(),
                overrides: vec![o.clone()],
                tables: vec![],
                ..Default::default()
            };
            async move { c.resync_pipe(r).await.map(|_| ()) }
        }
    };
    v.push(case(
        "resync: 1 MB override table",
        Code::InvalidArgument,
        "at most 63",
        ov(TableConfig {
            source_table: big.clone(),
            ..Default::default()
        }),
    ));
    v.push(case(
        "resync: empty override table",
        Code::InvalidArgument,
        "empty part",
        ov(TableConfig::default()),
    ));
    v.push(case(
        "resync: 64-byte override order_by",
        Code::InvalidArgument,
        "at most 63",
        ov(TableConfig {
            source_table: "orders".into(),
            order_by: vec![long_ident.clone()],
            ..Default::default()
        }),
    ));
    v.push(case(
        "resync: override destination with _resync",
        Code::InvalidArgument,
        "_resync",
        ov(TableConfig {
            source_table: "orders".into(),
            destination_table: "orders_resync".into(),
            ..Default::default()
        }),
    ));
    v.push(case(
        "resync: override onto another table's destination",
        Code::InvalidArgument,
        "used by two tables",
        ov(TableConfig {
            source_table: "orders".into(),
            destination_table: "customers".into(),
            ..Default::default()
        }),
    ));
    v.push(case(
        "resync: injection-shaped unknown table",
        Code::InvalidArgument,
        "not part of this pipe",
        ov(TableConfig {
            source_table: "public.\"x\"\"; drop table orders; --\"".into(),
            ..Default::default()
        }),
    ));
    v.push(case(
        "resync: override listed twice",
        Code::InvalidArgument,
        "overridden twice",
        |mut c| {
            let o = TableConfig {
                source_table: "orders".into(),
                ..Default::default()
            };
            let r = ResyncPipeRequest {
                name: "base".into(),
                overrides: vec![o.clone(), o],
                tables: vec![],
                ..Default::default()
            };
            async move { c.resync_pipe(r).await.map(|_| ()) }
        },
    ));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_hostile_input_and_records_nothing() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("base")).await.unwrap();
    let before = snapshot(&mut c).await;
    let mut failures = Vec::new();
    let all = cases();
    for k in &all {
        let r = (k.call)(c.clone()).await;
        match r {
            Ok(()) => failures.push(format!("{}: accepted", k.what)),
            Err(e) if e.code() != k.code || !e.message().contains(k.needle) => {
                failures.push(format!(
                    "{}: got {:?} {:?}, want {:?} mentioning {:?}",
                    k.what,
                    e.code(),
                    e.message().chars().take(300).collect::<String>(),
                    k.code,
                    k.needle
                ))
            }
            Err(e) => assert!(
                e.message().len() < 2048,
                "{}: the message echoes the input ({} bytes)",
                k.what,
                e.message().len()
            ),
        }
        let now = snapshot(&mut c).await;
        assert_eq!(now, before, "{}: something was recorded", k.what);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn identifiers_with_sql_metacharacters_are_accepted_verbatim_and_round_trip() {
    // Quotes, backticks, semicolons, comments and unicode are legal in
    // PostgreSQL and ClickHouse identifiers: they are stored as given (the
    // data plane quotes them; tests/hostile_tables.rs replicates them).
    let (_srv, mut c) = control_plane().await;
    let mut r = create_req("meta");
    r.tables = vec![
        TableConfig {
            source_table: "\"we\"\"ird; --\".\"t`1 /* x */\"".into(),
            destination_table: "d'; DROP TABLE x; --".into(),
            order_by: vec!["é\"`;--".into(), "id".into()],
            ..Default::default()
        },
        table("public.\"名前\""),
    ];
    let p = create_pipe(&mut c, r).await;
    let t = &p.config.unwrap().tables;
    assert_eq!(t[0].source_table, "\"we\"\"ird; --\".\"t`1 /* x */\"");
    assert_eq!(t[0].destination_table, "d'; DROP TABLE x; --");
    assert_eq!(t[0].order_by, ["é\"`;--", "id"]);
    assert_eq!(t[1].source_table, "public.\"名前\"");
    assert_eq!(t[1].destination_table, "名前");
}
