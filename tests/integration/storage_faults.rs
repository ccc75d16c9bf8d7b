//! The storage under the data directory: a full disk, a read-only file
//! system, and the directory's permissions. The full-disk and read-only
//! tests mount a small tmpfs (they need root; they are skipped otherwise).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::peers::is_root;
use crate::common::*;
use pgpipe::domain::projection::Projection;
use pgpipe::proto::*;
use tonic::Code;

fn run(args: &[&str]) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(st.success(), "{args:?}: {st}");
}

/// A tmpfs of a fixed size, unmounted on drop (before its TempDir goes).
struct Tmpfs {
    path: PathBuf,
    _root: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_kib: u64) -> Self {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_kib}k"),
            "tmpfs",
            path.to_str().unwrap(),
        ]);
        Self { path, _root: root }
    }

    fn remount(&self, opt: &str) {
        run(&[
            "mount",
            "-o",
            &format!("remount,{opt}"),
            self.path.to_str().unwrap(),
        ]);
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A CreatePipe request without passwords: the event log alone is written.
fn plain_req(name: &str) -> CreatePipeRequest {
    let mut r = create_req(name);
    r.source.as_mut().unwrap().connection_string = "postgres://app@127.0.0.1:5432/app".into();
    r.destination.as_mut().unwrap().password.clear();
    r
}

/// The events are gap-free from seq 1 and fold into exactly what ListPipes
/// says (the projection is consistent with the log).
async fn assert_consistent(c: &mut Client) -> Vec<Event> {
    let (events, _) = all_events(c).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap or duplicate in the log");
        assert!(e.payload.is_some(), "event {} has no payload", e.seq);
    }
    let mut p = Projection::default();
    for e in &events {
        p.apply(e);
    }
    assert_eq!(
        p.list(true, &Default::default()),
        list_all(c).await,
        "projection differs from a fold of the log"
    );
    events
}

fn assert_not_writable(e: &tonic::Status, why: &str) {
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let m = e.message();
    assert!(m.contains("the event log cannot be written"), "{m}");
    assert!(m.contains(why), "{m:?} should say why ({why:?})");
    assert!(m.contains("restarted"), "{m:?} should say what to do");
}

/// Creates pipes until one is refused (the first few may still fit in a
/// page the log already has); returns the names acknowledged and the error.
async fn create_until_refused(c: &mut Client, prefix: &str) -> (Vec<String>, tonic::Status) {
    let mut ok = Vec::new();
    for i in 0..50 {
        let name = format!("{prefix}{i}");
        match c.create_pipe(plain_req(&name)).await {
            Ok(_) => ok.push(name),
            Err(e) => return (ok, e),
        }
    }
    panic!("50 creates on a full file system all succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_as_unavailable_and_keeps_serving_reads() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let fs = Tmpfs::mount(16 * 1024);
    let data = fs.path.join("data");
    let (mut p, mut c) = Proc::start(&data).await;
    for n in ["a", "b"] {
        c.create_pipe(plain_req(n)).await.unwrap();
    }
    pause(&mut c, "a").await;
    let before = all_events(&mut c).await.0.len();

    let filler = fs.fill();
    let why = "the file system holding the data directory is full";
    let (acked, e) = create_until_refused(&mut c, "c").await;
    assert_not_writable(&e, why);

    // Sticky: later appends say the same, whatever they are.
    let e = c
        .resume_pipe(ResumePipeRequest { name: "a".into() })
        .await
        .unwrap_err();
    assert_not_writable(&e, why);
    let e = c
        .delete_pipe(DeletePipeRequest {
            name: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_not_writable(&e, why);

    // Reads keep working and show exactly what was acknowledged.
    let names: Vec<String> = list_all(&mut c).await.into_iter().map(|p| p.name).collect();
    let mut want = vec!["a".to_string(), "b".to_string()];
    want.extend(acked.iter().cloned());
    want.sort();
    assert_eq!(names, want);
    let a = get(&mut c, "a").await;
    assert_eq!(a.status(), PipeStatus::Paused);
    let events = assert_consistent(&mut c).await;
    assert_eq!(
        events.len(),
        before + acked.len(),
        "a refused append became visible"
    );

    // A restart while the disk is still full: the shutdown flush fails
    // (exit status 1, saying why) and the next start either serves what is
    // durable or refuses naming the full disk; it never loses or invents.
    let status = p.terminate();
    assert!(!status.success(), "a failed final flush must not exit 0");
    match start_on_full_disk(&data).await {
        Ok(events) => assert_eq!(events, before + acked.len()),
        Err(stderr) => assert!(
            stderr.contains("the file system holding the data directory is full"),
            "{stderr}"
        ),
    }

    // Space freed and a restart: the log replays cleanly, nothing partial
    // shows, the projection is the fold of the log, writes work again.
    std::fs::remove_file(filler).unwrap();
    let (_p, mut c) = Proc::start(&data).await;
    let events = assert_consistent(&mut c).await;
    // A refused append's outcome was unknown to sled: it is either absent
    // or whole; every acknowledged event is there.
    assert!(
        events.len() >= before + acked.len(),
        "acknowledged events lost"
    );
    assert!(events.len() <= before + acked.len() + 3, "{events:?}");
    let after: Vec<String> = list_all(&mut c).await.into_iter().map(|p| p.name).collect();
    for n in &want {
        assert!(after.contains(n), "{n} lost: {after:?}");
    }
    c.create_pipe(plain_req("after")).await.unwrap();
    assert_consistent(&mut c).await;
}

/// Starts pgpipe on `data` (disk full): Ok(events in its log, checked
/// consistent) if it serves (then stops it), Err(stderr) if it exits.
async fn start_on_full_disk(data: &Path) -> Result<usize, String> {
    use std::io::BufRead;
    let err_path = data.parent().unwrap().parent().unwrap().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("PGPIPE_CONTROL_PLANE_ONLY", "true")
        .env("PGPIPE_LOG", "warn")
        .env_remove("PGPIPE_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = format!(
        "http://{}",
        line.trim()
            .strip_prefix("pgpipe listening on ")
            .unwrap_or("")
    );
    for _ in 0..200 {
        if let Some(_status) = child.try_wait().unwrap() {
            return Err(std::fs::read_to_string(&err_path).unwrap());
        }
        if health_status(&url).await == Some(1) {
            let result = {
                let mut c = connect(&url).await;
                Ok(assert_consistent(&mut c).await.len())
            };
            let _ = child.kill();
            let _ = child.wait();
            return result;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("pgpipe neither served nor exited on a full disk");
}

/// `pgpipe serve` on `data`: exit status and stderr (it must exit by itself).
fn serve_until_exit(data: &Path) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("PGPIPE_CONTROL_PLANE_ONLY", "true")
        .env("PGPIPE_LOG", "warn")
        .env_remove("PGPIPE_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_stops_start_up_naming_the_cause() {
    // A live remount to read-only is refused by Linux while the log's files
    // are open for writing, so this is the read-only case pgpipe meets: a
    // start on a file system that is (or was remounted) read-only.
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let fs = Tmpfs::mount(16 * 1024);
    let data = fs.path.join("data");
    let (mut p, mut c) = Proc::start(&data).await;
    c.create_pipe(plain_req("a")).await.unwrap();
    assert!(p.terminate().success());

    fs.remount("ro");
    let (status, stderr) = serve_until_exit(&data);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot open the event log in")
            && stderr.contains("the data directory is on a read-only file system"),
        "{stderr}"
    );

    fs.remount("rw");
    let (_p, mut c) = Proc::start(&data).await;
    assert_eq!(assert_consistent(&mut c).await.len(), 1);
    pause(&mut c, "a").await;
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_new_data_dir_is_owner_only_and_the_secrets_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let srv = InProcess::start_in(dir, None).await;
    assert_eq!(mode(&data), 0o700);
    let mut c = srv.client().await;
    c.create_pipe(create_req("s")).await.unwrap();
    let secrets = data.join("secrets.json");
    assert_eq!(mode(&secrets), 0o600);
    srv.stop().await;
}

#[tokio::test]
async fn an_existing_pgpipe_data_dir_open_to_others_is_made_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let srv = InProcess::start_in(dir, None).await;
    srv.client()
        .await
        .create_pipe(create_req("s"))
        .await
        .unwrap();
    let dir = srv.stop().await;
    // As an older pgpipe (or a careless umask) left it.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let srv = InProcess::start_in(dir, None).await;
    assert_eq!(mode(&data), 0o700);
    srv.stop().await;
}

#[tokio::test]
async fn an_existing_directory_with_other_files_is_left_alone() {
    // Not pgpipe's to change: it only warns.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
    let srv = InProcess::start_in(dir, None).await;
    assert_eq!(mode(&data), 0o750);
    srv.stop().await;
}

#[test]
fn secrets_kept_in_the_log_database_by_older_versions_move_to_the_secrets_file() {
    use pgpipe::store::{PipeSecrets, SecretStore};
    let dir = tempfile::tempdir().unwrap();
    let old = PipeSecrets {
        source_password: Some("legacy-pw".into()),
        destination_password: None,
    };
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("secrets")
            .unwrap()
            .insert("pipe-1", serde_json::to_vec(&old).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let store = SecretStore::open(dir.path(), &db).unwrap();
    assert_eq!(store.get("pipe-1").unwrap(), old);
    assert!(!db.tree_names().iter().any(|n| n == b"secrets".as_slice()));
    let file = dir.path().join("secrets.json");
    assert_eq!(mode(&file), 0o600);
    assert!(
        String::from_utf8(std::fs::read(&file).unwrap())
            .unwrap()
            .contains("legacy-pw")
    );
    drop(db);
    // Reopened: still there, now from the file alone.
    let db = sled::open(dir.path()).unwrap();
    let store = SecretStore::open(dir.path(), &db).unwrap();
    assert_eq!(store.get("pipe-1").unwrap(), old);
}
