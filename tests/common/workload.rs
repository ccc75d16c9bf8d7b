//! A continuous, seeded write workload on source tables for chaos and soak
//! tests: multi-statement transactions of inserts, updates (also to and from
//! NULL, and of key columns) and deletes, sometimes a delete and re-insert of
//! the same key, across several tables.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// splitmix64: small, seedable, good enough to pick test moments and rows.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// A seed from `var` when set (to replay a run), else from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// The two table shapes the workload writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `id bigint` key; nullable text, int and bool columns.
    Items,
    /// `(k1 bigint, k2 text)` key; nullable text and bigint columns.
    Pairs,
}

impl Shape {
    pub fn ddl(self, table: &str) -> String {
        match self {
            Shape::Items => format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, qty int, note text, flag bool)"
            ),
            Shape::Pairs => format!(
                "CREATE TABLE {table} (k1 bigint, k2 text, val text, n bigint, PRIMARY KEY (k1, k2))"
            ),
        }
    }

    /// Columns compared by the `wait_equal` oracle (NULLs made comparable).
    pub fn cols(self) -> &'static str {
        match self {
            Shape::Items => {
                "id, ifNull(name, '~') AS name, ifNull(toString(qty), '~') AS qty, \
                 ifNull(note, '~') AS note, ifNull(toString(toUInt8(flag)), '~') AS flag"
            }
            Shape::Pairs => "k1, k2, ifNull(val, '~') AS val, ifNull(toString(n), '~') AS n",
        }
    }

    /// The key, as ClickHouse arguments (for duplicate checks).
    pub fn key(self) -> &'static str {
        match self {
            Shape::Items => "id",
            Shape::Pairs => "k1, k2",
        }
    }

    fn key_col(self) -> &'static str {
        match self {
            Shape::Items => "id",
            Shape::Pairs => "k1",
        }
    }

    /// Rows `from..=to`, about a fifth to a third of their values NULL.
    pub fn insert(self, table: &str, from: u64, to: u64) -> String {
        match self {
            Shape::Items => format!(
                "INSERT INTO {table} (id, name, qty, note, flag) SELECT g, \
                   CASE WHEN g % 5 = 0 THEN NULL ELSE 'name ' || g END, \
                   CASE WHEN g % 3 = 0 THEN NULL ELSE (g % 1000)::int END, \
                   CASE WHEN g % 2 = 0 THEN NULL ELSE repeat('n', (g % 40)::int) END, \
                   CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END \
                 FROM generate_series({from}, {to}) g ON CONFLICT DO NOTHING"
            ),
            Shape::Pairs => format!(
                "INSERT INTO {table} (k1, k2, val, n) SELECT g, 'k' || (g % 7), \
                   CASE WHEN g % 4 = 0 THEN NULL ELSE md5(g::text) END, \
                   CASE WHEN g % 6 = 0 THEN NULL ELSE g * 10 END \
                 FROM generate_series({from}, {to}) g ON CONFLICT DO NOTHING"
            ),
        }
    }

    fn update(self, table: &str, from: u64, to: u64, tag: u64) -> String {
        match self {
            Shape::Items => format!(
                "UPDATE {table} SET qty = coalesce(qty, 0) + 1, \
                   name = CASE WHEN name IS NULL THEN 'back {tag}' ELSE NULL END, \
                   note = CASE WHEN note IS NULL THEN 'u{tag}' ELSE NULL END, flag = NOT flag \
                 WHERE id BETWEEN {from} AND {to}"
            ),
            Shape::Pairs => format!(
                "UPDATE {table} SET val = CASE WHEN val IS NULL THEN 'v{tag}' ELSE NULL END, \
                   n = coalesce(n, 0) + 1 WHERE k1 BETWEEN {from} AND {to}"
            ),
        }
    }

    fn delete(self, table: &str, from: u64, to: u64) -> String {
        format!(
            "DELETE FROM {table} WHERE {} BETWEEN {from} AND {to}",
            self.key_col()
        )
    }

    /// Changes a row's key (pgoutput: a delete of the old key, then the new).
    fn move_key(self, table: &str, id: u64) -> String {
        match self {
            Shape::Items => format!(
                "UPDATE {table} SET id = id + 1000000000 WHERE id = {id} \
                 AND NOT EXISTS (SELECT 1 FROM {table} WHERE id = {id} + 1000000000)"
            ),
            Shape::Pairs => {
                format!("UPDATE {table} SET k2 = k2 || 'x' WHERE k1 = {id} AND length(k2) < 6")
            }
        }
    }
}

/// A source table the workload writes (`schema.table`).
#[derive(Debug, Clone)]
pub struct Target {
    pub table: String,
    pub shape: Shape,
    /// Next key to insert (keys below it may exist).
    next: Arc<AtomicU64>,
}

impl Target {
    /// Creates `table` (`schema.name`) of `shape` through `db` with the rows
    /// `1..=rows` (`Shape::insert`), analyzed.
    pub async fn create(db: &tokio_postgres::Client, table: &str, shape: Shape, rows: u64) -> Self {
        let sql = format!(
            "{}; {}; ANALYZE {table};",
            shape.ddl(table),
            shape.insert(table, 1, rows)
        );
        db.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
        Self::new(table, shape, rows)
    }

    /// A table whose rows `1..=initial_rows` were loaded with `Shape::insert`.
    pub fn new(table: &str, shape: Shape, initial_rows: u64) -> Self {
        Self {
            table: table.to_owned(),
            shape,
            next: Arc::new(AtomicU64::new(initial_rows + 1)),
        }
    }
}

/// A running workload; `stop` ends it after the current transaction.
pub struct Workload {
    stop: Arc<AtomicBool>,
    task: JoinHandle<WorkloadStats>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadStats {
    pub committed: u64,
    pub failed: u64,
    pub statements: u64,
}

impl Workload {
    /// Starts writing to `targets` through `pg_url`, one transaction every
    /// `pace`. Failed transactions (e.g. the server is down) are counted and
    /// retried with new ones after a pause.
    pub fn start(pg_url: String, targets: Vec<Target>, seed: u64, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            let mut stats = WorkloadStats::default();
            let mut client: Option<tokio_postgres::Client> = None;
            let mut tag = 0u64;
            while !flag.load(Ordering::SeqCst) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match tokio_postgres::connect(&pg_url, NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            client = Some(c);
                        }
                        Err(_) => {
                            stats.failed += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
                let mut sql = String::from("BEGIN;");
                let ops = rng.range(1, 5);
                for _ in 0..ops {
                    tag += 1;
                    let t = &targets[rng.range(0, targets.len() as u64) as usize];
                    sql.push_str(&one_op(t, &mut rng, tag));
                    sql.push(';');
                }
                sql.push_str("COMMIT;");
                let Some(c) = client.as_ref() else { continue };
                match c.batch_execute(&sql).await {
                    Ok(()) => {
                        stats.committed += 1;
                        stats.statements += ops;
                    }
                    Err(_) => {
                        stats.failed += 1;
                        client = None;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                tokio::time::sleep(pace).await;
            }
            stats
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> WorkloadStats {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

fn one_op(t: &Target, rng: &mut Rng, tag: u64) -> String {
    let next = t.next.load(Ordering::SeqCst);
    let pick = |rng: &mut Rng| rng.range(1, next.max(2));
    match rng.range(0, 100) {
        // Inserts: one row or a batch.
        0..=34 => {
            let n = if rng.chance(30) { rng.range(2, 40) } else { 1 };
            let from = t.next.fetch_add(n, Ordering::SeqCst);
            t.shape.insert(&t.table, from, from + n - 1)
        }
        35..=64 => {
            let from = pick(rng);
            t.shape.update(&t.table, from, from + rng.range(0, 8), tag)
        }
        65..=84 => {
            let from = pick(rng);
            t.shape.delete(&t.table, from, from + rng.range(0, 4))
        }
        85..=92 => t.shape.move_key(&t.table, pick(rng)),
        // Deleted and inserted again in the same transaction.
        _ => {
            let id = pick(rng);
            format!(
                "{}; {}",
                t.shape.delete(&t.table, id, id),
                t.shape.insert(&t.table, id, id)
            )
        }
    }
}
