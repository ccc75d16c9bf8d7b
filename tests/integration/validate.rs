//! ValidatePipe, the dry run of CreatePipe, against the real Postgres and
//! ClickHouse: one test per kind of problem, several problems at once,
//! nothing created, the happy path, the CLI and grpcurl.

use std::process::Stdio;
use std::time::Duration;

use crate::common::data::*;
use crate::common::peers::{PrivateEnv, free_port};
use crate::common::*;
use pgpipe::proto::*;

async fn validate(c: &mut Client, r: CreatePipeRequest) -> ValidatePipeResponse {
    c.validate_pipe(validate_req(r)).await.unwrap().into_inner()
}

/// The one problem of `kind`, failing with every problem shown otherwise.
fn only(resp: &ValidatePipeResponse, kind: ProblemKind) -> Problem {
    assert!(!resp.ok, "{resp:?}");
    let of: Vec<&Problem> = resp
        .problems
        .iter()
        .filter(|p| p.kind == kind as i32)
        .collect();
    assert_eq!(of.len(), 1, "one {kind:?} expected: {:#?}", resp.problems);
    of[0].clone()
}

fn kinds(resp: &ValidatePipeResponse) -> Vec<ProblemKind> {
    resp.problems.iter().map(|p| p.kind()).collect()
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{p:?} not in {msg:?}");
    }
}

/// A new role that may read `schema`'s tables but has no REPLICATION
/// privilege: its name and a source URL logging in as it.
async fn reader_without_replication(schema: &str) -> (String, String) {
    let role = unique("norepl");
    pg_exec(&format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};"
    ))
    .await;
    let mut url = url::Url::parse(&pg_url()).unwrap();
    url.set_username(&role).unwrap();
    (role, url.to_string())
}

/// A schema with a good table `items` and whatever `extra` SQL adds.
async fn schema_with(prefix: &str, extra: &str) -> String {
    let schema = unique(prefix);
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text, qty int);
             INSERT INTO {schema}.items SELECT g, 'item ' || g, g FROM generate_series(1, 20) g;
             {}",
        extra.replace("{schema}", &schema)
    ))
    .await;
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_request_is_ok_and_create_then_accepts_it() {
    let schema = schema_with("vok", "").await;
    let (_srv, mut c) = engine().await;
    let req = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.items")]);
    let resp = validate(&mut c, req.clone()).await;
    assert!(resp.ok, "{:#?}", resp.problems);
    assert!(resp.problems.is_empty());
    let pipe = create_pipe(&mut c, req).await;
    wait_running(&mut c, &pipe.name, Duration::from_secs(120)).await;
    // A name now taken is a problem of its own.
    let req = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.items")]);
    let resp = validate(&mut c, req).await;
    let p = only(&resp, ProblemKind::NameTaken);
    assert_mentions(&p.message, &["already exists", "pick another name"]);
    // The pipe's own destination table fits the source: not a problem.
    assert_eq!(kinds(&resp), vec![ProblemKind::NameTaken], "{resp:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_reported_field_by_field_not_refused() {
    let (_srv, mut c) = engine().await;
    let resp = c
        .validate_pipe(ValidatePipeRequest {
            name: String::new(),
            source: None,
            destination: Some(DestinationConfig {
                url: "ftp://x".into(),
                database: "db".into(),
                ..Default::default()
            }),
            tables: vec![table("a.b.c"), table("public.ok")],
            settings: Some(PipeSettings {
                snapshot_parallelism: 1000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.ok);
    let fields: Vec<&str> = resp.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["name", "source", "destination", "tables[0]", "settings"],
        "{resp:#?}"
    );
    assert!(
        resp.problems
            .iter()
            .all(|p| p.kind() == ProblemKind::InvalidRequest)
    );
    assert_mentions(&resp.problems[0].message, &["name is required"]);
    assert_mentions(&resp.problems[1].message, &["source is required"]);
    assert_mentions(&resp.problems[2].message, &["must use http or https"]);
    assert_eq!(resp.problems[3].table, "a.b.c");
    assert_mentions(&resp.problems[3].message, &["write `schema.table`"]);
    assert_mentions(&resp.problems[4].message, &["snapshot_parallelism"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ends_are_reported_both() {
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req("unreach", "unreach", &["public.t"]);
    let (pg_port, ch_port) = (free_port(), free_port());
    req.source.as_mut().unwrap().connection_string =
        format!("postgres://app:Unreach-Pw-7@127.0.0.1:{pg_port}/app");
    req.destination.as_mut().unwrap().url = format!("http://127.0.0.1:{ch_port}");
    let resp = validate(&mut c, req).await;
    assert_eq!(
        kinds(&resp),
        vec![ProblemKind::Unreachable, ProblemKind::Unreachable],
        "{resp:#?}"
    );
    assert_mentions(
        &resp.problems[0].message,
        &[
            &format!("cannot reach PostgreSQL at 127.0.0.1:{pg_port}/app"),
            "check the host and port",
        ],
    );
    assert_mentions(
        &resp.problems[1].message,
        &["ClickHouse at", "is unreachable"],
    );
    assert!(!format!("{resp:?}").contains("Unreach-Pw-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_problem() {
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req("creds", "creds", &["public.t"]);
    let role = unique("nobody");
    let mut url = url::Url::parse(&pg_url()).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("Cred-Pw-3")).unwrap();
    req.source.as_mut().unwrap().connection_string = url.to_string();
    let resp = validate(&mut c, req).await;
    let p = only(&resp, ProblemKind::Credentials);
    assert_mentions(
        &p.message,
        &[&format!("rejected user \"{role}\""), "check the user name"],
    );
    assert!(!format!("{resp:?}").contains("Cred-Pw-3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_a_problem() {
    let schema = schema_with("vrp", "").await;
    let (role, conn) = reader_without_replication(&schema).await;
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.items")]);
    req.source.as_mut().unwrap().connection_string = conn;
    let resp = validate(&mut c, req).await;
    let p = only(&resp, ProblemKind::ReplicationPrivilege);
    assert_mentions(
        &p.message,
        &[&format!("ALTER ROLE \"{role}\" WITH REPLICATION")],
    );
    assert_eq!(resp.problems.len(), 1, "{resp:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_keyless_tables_bad_types_and_order_by_are_problems() {
    let schema = schema_with(
        "vtb",
        "CREATE TABLE {schema}.nokey (a int, b text);
         CREATE TABLE {schema}.odd (id int PRIMARY KEY, p point, q int[][]);",
    )
    .await;
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req(
        &pipe_name(&schema),
        &schema,
        &[
            &format!("{schema}.items"),
            &format!("{schema}.absent"),
            &format!("{schema}.nokey"),
            &format!("{schema}.odd"),
        ],
    );
    req.tables[0].order_by = vec!["qty".into(), "nope".into(), "id".into()];
    let resp = validate(&mut c, req).await;
    assert_eq!(
        kinds(&resp),
        vec![
            ProblemKind::TableMissing,
            ProblemKind::NoKey,
            ProblemKind::UnsupportedType,
            ProblemKind::UnsupportedType,
            ProblemKind::OrderByColumn,
        ],
        "{resp:#?}"
    );
    let p = &resp.problems;
    assert_eq!(p[0].table, format!("{schema}.absent"));
    assert_mentions(&p[0].message, &["does not exist on the source"]);
    assert_eq!(p[1].table, format!("{schema}.nokey"));
    assert_mentions(
        &p[1].message,
        &["has no primary key", "REPLICA IDENTITY USING INDEX"],
    );
    assert_eq!(
        (p[2].table.as_str(), p[2].column.as_str()),
        (format!("{schema}.odd").as_str(), "p")
    );
    assert_mentions(
        &p[2].message,
        &["type point", "cannot replicate", "supported:"],
    );
    assert_eq!(p[3].column, "q");
    assert_eq!(
        (p[4].table.as_str(), p[4].column.as_str()),
        (format!("{schema}.items").as_str(), "nope")
    );
    assert_mentions(
        &p[4].message,
        &["order_by", "\"nope\"", "its columns are: id, name, qty"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_by_without_the_key_is_a_problem() {
    let schema = schema_with("vob", "").await;
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.items")]);
    req.tables[0].order_by = vec!["qty".into()];
    let resp = validate(&mut c, req.clone()).await;
    let p = only(&resp, ProblemKind::OrderByColumn);
    assert_eq!(p.column, "id");
    assert_mentions(
        &p.message,
        &["lacks key column \"id\"", "add \"id\" to order_by"],
    );
    // CreatePipe refuses it before anything is recorded.
    let e = c.create_pipe(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_mentions(e.message(), &["lacks key column \"id\""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_destination_table_is_a_problem() {
    let schema = schema_with("vdt", "").await;
    let ch_admin = ch("default");
    ch_admin
        .query(&format!("CREATE DATABASE {schema}"))
        .execute()
        .await
        .unwrap();
    ch_admin
        .query(&format!(
            "CREATE TABLE {schema}.items (id Int64, other String) ENGINE = MergeTree ORDER BY id"
        ))
        .execute()
        .await
        .unwrap();
    let (_srv, mut c) = engine().await;
    let req = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.items")]);
    let resp = validate(&mut c, req.clone()).await;
    let p = only(&resp, ProblemKind::DestinationTable);
    assert_eq!(p.table, format!("{schema}.items"));
    assert_mentions(
        &p.message,
        &[
            "destination table \"items\" exists",
            "not a pgpipe table",
            "drop it or pick another destination_table",
        ],
    );
    // CreatePipe refuses it up front with the same words.
    let e = c.create_pipe(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_mentions(e.message(), &["destination table \"items\" exists"]);
}

/// wal_level needs a server of its own (it takes a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_without_logical_wal_is_a_problem() {
    let env = PrivateEnv::up().await;
    env.without_logical_wal().await;
    let (_srv, mut c) = engine().await;
    let req = env.pipe_req("wal", "wal", &["public.absent"]);
    let resp = validate(&mut c, req).await;
    let p = only(&resp, ProblemKind::WalLevel);
    assert_mentions(
        &p.message,
        &[
            "wal_level = \"replica\"",
            "ALTER SYSTEM SET wal_level = logical;` and restart",
        ],
    );
    // The tables are still looked at.
    only(&resp, ProblemKind::TableMissing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_problems_are_reported_together() {
    let schema = schema_with("vsv", "CREATE TABLE {schema}.nokey (a int);").await;
    let (_role, conn) = reader_without_replication(&schema).await;
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req(
        "Bad Name",
        &schema,
        &[
            &format!("{schema}.items"),
            &format!("{schema}.nokey"),
            &format!("{schema}.absent"),
        ],
    );
    req.source.as_mut().unwrap().connection_string = conn;
    req.destination.as_mut().unwrap().url = format!("http://127.0.0.1:{}", free_port());
    req.tables[0].order_by = vec!["missing_col".into()];
    let resp = validate(&mut c, req).await;
    assert_eq!(
        kinds(&resp),
        vec![
            ProblemKind::InvalidRequest,
            ProblemKind::ReplicationPrivilege,
            ProblemKind::NoKey,
            ProblemKind::TableMissing,
            // missing_col is not a column, and id (the key) is not in it.
            ProblemKind::OrderByColumn,
            ProblemKind::OrderByColumn,
            ProblemKind::Unreachable,
        ],
        "{resp:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_creates_nothing() {
    // A database of its own: other tests create slots and publications in
    // the shared cluster meanwhile, so only those of this database count.
    let schema = unique("vnc");
    pg_exec(&format!("CREATE DATABASE {schema}")).await;
    let mut url = url::Url::parse(&pg_url()).unwrap();
    url.set_path(&schema);
    let (own, conn) = tokio_postgres::connect(url.as_str(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    own.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text, qty int);
         INSERT INTO {schema}.items SELECT g, 'item ' || g, g FROM generate_series(1, 20) g;"
    ))
    .await
    .unwrap();
    let count = async |sql: &str| -> i64 { own.query_one(sql, &[]).await.unwrap().get(0) };
    let slots_sql =
        format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{schema}'");
    let pubs_sql = "SELECT count(*) FROM pg_publication";

    let (srv, mut c) = engine().await;
    let head = log_head(&mut c).await;
    let slots = count(&slots_sql).await;
    let pubs = count(pubs_sql).await;
    let mut good = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.items")]);
    good.source.as_mut().unwrap().connection_string = url.to_string();
    assert!(validate(&mut c, good.clone()).await.ok);
    let mut bad = good;
    bad.tables.push(table(&format!("{schema}.absent")));
    assert!(!validate(&mut c, bad).await.ok);

    let listed = list_all(&mut c).await;
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(log_head(&mut c).await, head);
    assert_eq!(count(&slots_sql).await, slots);
    assert_eq!(count(pubs_sql).await, pubs);
    let dbs: u64 = ch("default")
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(&schema)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dbs, 0, "ClickHouse database {schema} was created");
    // No secret was kept for a pipe that does not exist.
    let secrets = std::fs::read_to_string(srv.dir.path().join("secrets.json")).unwrap_or_default();
    assert!(!secrets.contains(&schema), "{secrets}");
    drop(own);
    pg_exec(&format!("DROP DATABASE {schema} WITH (FORCE)")).await;
}

async fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .arg("--server")
        .arg(addr)
        .args(args)
        .env_remove("PGPIPE_TOKEN")
        .env_remove("PGPIPE_SERVER")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_ok_or_the_problems_with_exit_codes() {
    let schema = schema_with("vcl", "").await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn_engine(dir.path(), &[]);
    wait_serving(&p.url()).await;
    let url = p.url();
    let (pg, chu) = (pg_url(), ch_url());
    let items = format!("{schema}.items");
    let absent = format!("{schema}.absent");
    let name = pipe_name(&schema);
    let base = [
        "validate",
        &name,
        "--source",
        &pg,
        "--ch-url",
        &chu,
        "--ch-database",
        &schema,
        "--table",
        &items,
    ];
    let (code, out, err) = cli(&url, &base).await;
    assert_eq!((code, out.trim()), (0, "ok"), "{out}{err}");

    let mut bad = base.to_vec();
    bad.extend(["--table", &absent]);
    let (code, out, err) = cli(&url, &bad).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_mentions(
        &out,
        &[
            "1 problem(s)",
            "KIND",
            "table_missing",
            &absent,
            "does not exist",
        ],
    );

    bad.push("--json");
    let (code, out, err) = cli(&url, &bad).await;
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["kind"], "table_missing");
    assert_eq!(v["problems"][0]["table"], absent.as_str());

    // Nothing was created by either run.
    let mut c = connect(&url).await;
    let listed = c.list_pipes(ListPipesRequest::default()).await.unwrap();
    assert!(listed.into_inner().pipes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_validates_a_request_body_as_create_takes_it() {
    let Some(bin) = grpcurl() else {
        eprintln!("SKIPPED: grpcurl not installed (cargo install grpcurl-rs)");
        return;
    };
    let schema = schema_with("vgc", "").await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn_engine(dir.path(), &[]);
    wait_serving(&p.url()).await;
    let body = serde_json::json!({
        "name": pipe_name(&schema),
        "source": {"connectionString": pg_url()},
        "destination": {"url": ch_url(), "database": schema},
        "tables": [{"sourceTable": format!("{schema}.items"), "orderBy": ["nope", "id"]}]
    })
    .to_string();
    let text = grpcurl_ok(
        &bin,
        &[
            "-plaintext",
            "-d",
            &body,
            &p.addr,
            "pgpipe.v1.PipeService/ValidatePipe",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["problems"][0]["kind"], "PROBLEM_KIND_ORDER_BY_COLUMN",
        "{text}"
    );
    assert_eq!(v["problems"][0]["column"], "nope");
    assert!(v.get("ok").is_none_or(|ok| ok == false), "{text}");
}
