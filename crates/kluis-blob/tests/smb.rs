//! The local directory backend where the file system has no hard links, no `RENAME_NOREPLACE`
//! and no POSIX modes: the SMB test share (`scripts/start-smb.sh`, Samba over SMB 3.1.1 mounted
//! with smbnetfs), and a temp directory published the same way (`Publish::ClaimRename`).
//! Capabilities probed at open; concurrent puts of one name from tasks, from two SMB clients and
//! from processes (one winner, the others `AlreadyExists`, no reader ever sees a partial object);
//! a crash after claiming a name; deletes right after reads; a share that goes away mid-put.
//! (The whole conformance suite runs on the share too: `tests/conformance.rs`, module `smb`.)
#![cfg(feature = "azure")]
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use common::*;
use kluis_blob::{
    BlobBackend, BlobError, DocumentKeys, DocumentVault, LocalDir, NewDocument, ObjectName, Publish, Upload,
};
use tokio::io::{AsyncRead, ReadBuf};

fn doc(name: &str) -> NewDocument {
    NewDocument { subject: "emp-1".to_owned(), record: None, metadata: meta(name, None) }
}

#[tokio::test]
async fn capabilities_of_a_local_directory() {
    let d = tempfile::tempdir().unwrap();
    let l = LocalDir::open(d.path().join("s")).await.unwrap();
    #[cfg(unix)]
    {
        assert_eq!(l.capabilities().publish, Publish::HardLink);
        assert!(l.capabilities().private_modes);
    }
    let l = LocalDir::open_with(d.path().join("s"), Publish::ClaimRename).await.unwrap();
    assert_eq!(l.capabilities().publish, Publish::ClaimRename);
    // The probe leaves nothing behind.
    assert_eq!(local_leftovers(l.root()), 0);
}

#[tokio::test]
async fn capabilities_of_the_smb_share() {
    let Some(share) = smb_share() else { return };
    let dir = smb_folder(&share);
    let root = dir.path().join("s");
    let l = LocalDir::open(&root).await.unwrap();
    let caps = l.capabilities();
    assert_eq!(caps.publish, Publish::ClaimRename, "no hard links on SMB");
    assert!(!caps.private_modes, "an SMB mount keeps no modes: {caps:?}");
    // Hard links configured on a share without them: refused at open, not at the first put.
    let e = LocalDir::open_with(&root, Publish::HardLink).await.unwrap_err();
    assert!(matches!(e, BlobError::Invalid { .. }), "{e:?}");
    assert_eq!(local_leftovers(&root), 0);
    // What "no private modes" means: the object is readable by group and others on the mount.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let name = ObjectName::random().unwrap();
        let mut up = l.begin(&name).await.unwrap();
        up.append(b"x").await.unwrap();
        up.commit().await.unwrap();
        let p = root.join("objects").join(&name.as_str()[..2]).join(name.as_str());
        assert_ne!(std::fs::metadata(p).unwrap().permissions().mode() & 0o077, 0);
    }
}

/// Puts of one name race: every upload is staged, then all commit at once (on the blocking
/// pool, so truly in parallel), through the given backends in turn, while a reader polls the
/// name through the last one. Exactly one commit succeeds, the others fail with
/// `AlreadyExists`; the reader sees either nothing or the winner's whole object.
async fn race_one_name(backends: Vec<LocalDir>, uploads: usize, rounds: usize) {
    for round in 0..rounds {
        let name = ObjectName::random().unwrap();
        // Different lengths, so a mix or a cut would show.
        let bodies: Vec<Vec<u8>> =
            (0..uploads).map(|i| content(150_000 + 7_000 * i, (round * 100 + i) as u64)).collect();
        let mut staged = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let mut up = backends[i % backends.len()].begin(&name).await.unwrap();
            up.append(body).await.unwrap();
            staged.push(up);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (b, name, bodies, stop) =
                (backends[backends.len() - 1].clone(), name.clone(), bodies.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut seen, mut absent) = (None::<usize>, 0u32);
                loop {
                    let done = stop.load(Ordering::SeqCst);
                    match b.len(&name).await {
                        Err(BlobError::NotFound) => {
                            assert!(seen.is_none(), "an object that was visible disappeared");
                            absent += 1;
                        }
                        Ok(len) => {
                            let mut out = Vec::new();
                            b.read_range(&name, 0, len, &mut out).await.unwrap();
                            let which = bodies.iter().position(|body| *body == out);
                            assert!(
                                which.is_some(),
                                "a reader saw {len} bytes that are no upload's whole content"
                            );
                            assert!(seen.is_none() || seen == which, "the object changed");
                            seen = which;
                        }
                        Err(e) => panic!("reader: {e:?}"),
                    }
                    if done {
                        return (seen, absent);
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let start = Arc::new(tokio::sync::Barrier::new(staged.len()));
        let commits: Vec<_> = staged
            .into_iter()
            .map(|up| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    up.commit().await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, c) in commits.into_iter().enumerate() {
            match c.await.unwrap() {
                Ok(len) => winners.push((i, len)),
                Err(BlobError::AlreadyExists) => {}
                Err(e) => panic!("upload {i}: {e:?}"),
            }
        }
        stop.store(true, Ordering::SeqCst);
        let (seen, _absent) = reader.await.unwrap();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner, got {winners:?}");
        let (w, len) = winners[0];
        assert_eq!(len, bodies[w].len() as u64);
        assert_eq!(seen, Some(w), "the reader's last look shows the winner's object");
        for b in &backends {
            let mut out = Vec::new();
            b.read_range(&name, 0, len, &mut out).await.unwrap();
            assert_eq!(out, bodies[w]);
        }
        assert_eq!(local_leftovers(backends[0].root()), 0, "losers leave nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_local() {
    let d = tempfile::tempdir().unwrap();
    let l = LocalDir::open(d.path().join("s")).await.unwrap();
    race_one_name(vec![l], 6, 5).await;
    let l = LocalDir::open_with(d.path().join("c"), Publish::ClaimRename).await.unwrap();
    race_one_name(vec![l], 6, 5).await;
}

/// Tasks on one SMB client and, with `KLUIS_TEST_SMB_DIR2`, on two clients of the same share
/// (two SMB sessions, as two VMs would have).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_smb() {
    let Some(share) = smb_share() else { return };
    let dir = smb_folder(&share);
    let rel = dir.path().file_name().unwrap().to_owned();
    let mut backends = vec![LocalDir::open(dir.path().join("s")).await.unwrap()];
    if let Some(d2) = &share.dir2 {
        backends.push(LocalDir::open(d2.join(&rel).join("s")).await.unwrap());
    } else {
        skip_or_fail("smb second client", "KLUIS_TEST_SMB_DIR2 not set; run scripts/start-smb.sh");
    }
    for b in &backends {
        assert_eq!(b.capabilities().publish, Publish::ClaimRename);
    }
    race_one_name(backends, 6, 5).await;
}

/// Not a test on its own: the body of one racing process of `concurrent_puts_*_processes`
/// (the test binary runs itself with `KLUIS_RACE_ROOT` set; without it this returns at once).
#[tokio::test]
async fn race_child() {
    let Ok(root) = std::env::var("KLUIS_RACE_ROOT") else { return };
    let name = ObjectName::parse(&std::env::var("KLUIS_RACE_NAME").unwrap()).unwrap();
    let seed: u64 = std::env::var("KLUIS_RACE_SEED").unwrap().parse().unwrap();
    let go = PathBuf::from(std::env::var("KLUIS_RACE_GO").unwrap());
    let l = LocalDir::open(&root).await.unwrap();
    let mut up = l.begin(&name).await.unwrap();
    up.append(&content(100_000 + seed as usize, seed)).await.unwrap();
    std::fs::write(go.with_extension(format!("ready{seed}")), b"").unwrap();
    let t = Instant::now();
    while !go.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "no start signal");
        std::thread::sleep(Duration::from_millis(1));
    }
    match up.commit().await {
        Ok(_) => println!("RACE-RESULT won"),
        Err(BlobError::AlreadyExists) => println!("RACE-RESULT exists"),
        Err(e) => println!("RACE-RESULT error {e:?}"),
    }
}

/// `n` processes put one name under `roots[i % roots.len()]` (views of one store) at once.
fn race_processes(roots: &[PathBuf], n: u64) {
    let signals = tempfile::tempdir().unwrap();
    let go = signals.path().join("go");
    let name = ObjectName::random().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|seed| {
            Command::new(&exe)
                .args(["--exact", "race_child", "--nocapture", "--test-threads=1"])
                .env("KLUIS_RACE_ROOT", &roots[seed as usize % roots.len()])
                .env("KLUIS_RACE_NAME", name.as_str())
                .env("KLUIS_RACE_SEED", seed.to_string())
                .env("KLUIS_RACE_GO", &go)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    while (0..n).any(|s| !go.with_extension(format!("ready{s}")).exists()) {
        assert!(t.elapsed() < Duration::from_secs(60), "children did not get ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(&go, b"").unwrap();
    let mut won = Vec::new();
    for (seed, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "child {seed}: {text}");
        if text.contains("RACE-RESULT won") {
            won.push(seed);
        } else {
            assert!(text.contains("RACE-RESULT exists"), "child {seed}: {text}");
        }
    }
    assert_eq!(won.len(), 1, "exactly one process wins: {won:?}");
    let seed = won[0];
    let want = content(100_000 + seed, seed as u64);
    for root in roots {
        let p = root.join("objects").join(&name.as_str()[..2]).join(name.as_str());
        assert_eq!(std::fs::read(&p).unwrap(), want, "{p:?}");
        assert_eq!(local_leftovers(root), 0);
    }
}

#[test]
fn concurrent_puts_local_processes() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(LocalDir::open(d.path().join("s"))).unwrap();
    race_processes(&[d.path().join("s")], 4);
}

#[test]
fn concurrent_puts_smb_processes() {
    let Some(share) = smb_share() else { return };
    let dir = smb_folder(&share);
    let mut roots = vec![dir.path().join("s")];
    if let Some(d2) = &share.dir2 {
        roots.push(d2.join(dir.path().file_name().unwrap()).join("s"));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = rt.block_on(LocalDir::open(&roots[0])).unwrap();
    assert_eq!(l.capabilities().publish, Publish::ClaimRename);
    race_processes(&roots, 4);
}

/// A process that crashed after claiming a name and before publishing: the name stays taken
/// (never two objects under it) until garbage collection removes the claim.
async fn crash_after_claim(h: Harness<LocalDir>) {
    let root = h.backend().root().to_path_buf();
    let name = ObjectName::random().unwrap();
    let claims = root.join("claims").join(&name.as_str()[..2]);
    std::fs::create_dir_all(claims.join(name.as_str())).unwrap();
    h.crashed_upload(&name, &content(5000, 1)).await;
    let mut up = h.backend().begin(&name).await.unwrap();
    up.append(b"later").await.unwrap();
    assert!(matches!(up.commit().await, Err(BlobError::AlreadyExists)));
    assert!(matches!(h.backend().len(&name).await, Err(BlobError::NotFound)));
    assert_eq!(h.leftovers().await, 2, "a temp file and a claim");
    let rep = h.vault.collect_garbage(std::iter::empty(), Duration::from_secs(3600)).await.unwrap();
    assert_eq!(rep.unfinished, 0, "young leftovers may be an upload in progress");
    let rep = h.vault.collect_garbage(std::iter::empty(), grace_zero()).await.unwrap();
    assert_eq!((rep.unfinished, rep.orphans, rep.busy), (2, 0, 0));
    assert_eq!(h.leftovers().await, 0);
    // The name is free again; delete removes the object and its claim.
    let mut up = h.backend().begin(&name).await.unwrap();
    up.append(b"later").await.unwrap();
    up.commit().await.unwrap();
    assert_eq!(h.raw(&name).await, b"later");
    assert!(claims.join(name.as_str()).exists());
    assert!(h.backend().delete(&name).await.unwrap());
    assert!(!claims.join(name.as_str()).exists());
    assert_eq!(h.leftovers().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_claim_local() {
    crash_after_claim(local_claim_rename().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_claim_smb() {
    let Some(h) = smb().await else { return };
    crash_after_claim(h).await;
}

/// An SMB client may still hold a file open for a moment after a read (FUSE closes it
/// asynchronously), and the server refuses to delete an open file (`EBUSY`): retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_right_after_read_smb() {
    let Some(h) = smb().await else { return };
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    for i in 0..40 {
        let body = content(3 * 4096 + i, i as u64);
        let d = h.vault.put(&k, &doc("a.pdf"), body.as_slice()).await.unwrap();
        let mut out = Vec::new();
        h.vault.get(&d, &k, &mut out).await.unwrap();
        assert_eq!(out, body);
        assert!(h.vault.delete(&d).await.unwrap(), "delete {i}");
    }
    assert!(h.vault.list_objects().await.unwrap().is_empty());
    assert_eq!(h.leftovers().await, 0);
}

/// A content reader that stops at `gate_at` bytes until the gate opens.
struct GatedReader {
    data: Vec<u8>,
    pos: usize,
    gate_at: usize,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    reached: AtomicBool,
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

impl AsyncRead for GatedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos >= self.gate_at && !self.gate.open.load(Ordering::SeqCst) {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            self.gate.reached.store(true, Ordering::SeqCst);
            if !self.gate.open.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        let limit = if self.gate.open.load(Ordering::SeqCst) { self.data.len() } else { self.gate_at };
        let n = buf.remaining().min(limit - self.pos).min(8192);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn smb_script(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/start-smb.sh");
    let out = Command::new("bash").arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "start-smb.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the test's own SMB instance, whatever happens.
struct Instance(String);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| smb_script(&["--stop", &self.0]));
    }
}

/// The server goes away while a put is writing (its own Samba instance, killed half-way): the
/// put fails with `BlobError::Unavailable`, nothing appears under the name, and when the share
/// is back the half-written temp file is only garbage that GC removes; the share works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_goes_away_mid_put() {
    if smb_share().is_none() {
        return;
    }
    let inst = Instance(format!("gone{}", std::process::id()));
    let out = smb_script(&["--instance", &inst.0]);
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("export KLUIS_TEST_SMB_DIR="))
        .map(PathBuf::from)
        .expect("the instance's share");
    let root = dir.join("store");
    let backend = LocalDir::open(&root).await.unwrap().with_write_buffer(TEST_WRITE_BUFFER);
    assert_eq!(backend.capabilities().publish, Publish::ClaimRename);
    let vault = Arc::new(DocumentVault::with_options(backend, test_options()).unwrap());
    let keys = Arc::new(medical());
    let k = DocumentKeys::domain(&keys);
    let keep_body = content(5000, 1);
    let keep = vault.put(&k, &doc("keep.pdf"), keep_body.as_slice()).await.unwrap();

    let gate = Arc::new(Gate::default());
    let reader = GatedReader { data: content(400_000, 2), pos: 0, gate_at: 100_000, gate: gate.clone() };
    let put = {
        let (vault, keys) = (vault.clone(), keys.clone());
        tokio::spawn(async move { vault.put(&DocumentKeys::domain(&keys), &doc("half.pdf"), reader).await })
    };
    let t = Instant::now();
    while !gate.reached.load(Ordering::SeqCst) {
        assert!(t.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // About 100 kB are written to the temp file; now the server goes away.
    let tmp_files: Vec<_> = std::fs::read_dir(root.join("tmp")).unwrap().collect();
    assert_eq!(tmp_files.len(), 1, "the upload's temp file");
    smb_script(&["--server-stop", &inst.0]);
    let stopped = Instant::now();
    gate.open();
    let e = tokio::time::timeout(Duration::from_secs(120), put)
        .await
        .expect("the put gives up")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, BlobError::Unavailable { .. }), "{e:?}");
    eprintln!("TIMING put failed {:?} after the server stopped", stopped.elapsed());
    // Reads fail the same way while the share is gone.
    let r = vault.get(&keep, &k, Vec::new()).await;
    assert!(matches!(r, Err(BlobError::Unavailable { .. })), "{r:?}");

    eprintln!("TIMING read failed {:?} after the server stopped", stopped.elapsed());
    smb_script(&["--server-start", &inst.0]);
    let t = Instant::now();
    while std::fs::read_dir(root.join("objects")).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "the share did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("TIMING share back {:?} after the server started", t.elapsed());
    // Nothing of the failed put under an object name; the document put before is whole.
    assert_eq!(vault.list_objects().await.unwrap(), vec![keep.object.clone()]);
    let mut out = Vec::new();
    vault.get(&keep, &k, &mut out).await.unwrap();
    assert_eq!(out, keep_body);
    // What the put left is garbage, and garbage collection removes it.
    let rep = vault.collect_garbage([&keep.object], grace_zero()).await.unwrap();
    assert_eq!((rep.orphans, rep.kept, rep.busy), (0, 1, 0), "{rep:?}");
    assert_eq!(local_leftovers(&root), 0);
    // The share works again.
    let body = content(50_000, 3);
    let d = vault.put(&k, &doc("after.pdf"), body.as_slice()).await.unwrap();
    let mut out = Vec::new();
    vault.get(&d, &k, &mut out).await.unwrap();
    assert_eq!(out, body);
}
