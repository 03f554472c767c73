//! hangfs, a real FUSE file system whose opens, stats or reads hang in the kernel until the test releases them:
//! the fault of a stuck network file system, without a network. Built by `tests/fuse/build.sh`; mounting needs
//! root and /dev/fuse (it calls mount(2) itself, no fusermount).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, io};

/// Which operation on a file hangs while the file system is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hang {
    /// Nothing: a normal file.
    Never,
    Open,
    /// getattr, and so lookup and stat.
    Stat,
    Read,
}

impl Hang {
    fn word(self) -> &'static str {
        match self {
            Hang::Never => "ok",
            Hang::Open => "open",
            Hang::Stat => "stat",
            Hang::Read => "read",
        }
    }
}

/// What the server reported: "blocked OP NAME" lines, as (op, name).
#[derive(Default)]
struct Events {
    ready: bool,
    ended: bool,
    blocked: Vec<(String, String)>,
}

/// A mounted hangfs, held at start. Dropping it releases every operation and unmounts (lazily, if the server
/// does not end by itself), so a failing test leaves no mount behind.
pub struct HangFs {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Arc<(Mutex<Events>, Condvar)>,
    mountpoint: tempfile::TempDir,
    log: PathBuf,
}

/// The hangfs binary: `VD_HANGFS`, or what `tests/fuse/build.sh` builds (a no-op once built).
pub fn hangfs_binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("VD_HANGFS") {
        return Ok(p.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuse/build.sh");
    let out = Command::new("bash").arg(&script).output().map_err(io("run tests/fuse/build.sh"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(path) if out.status.success() => Ok(path.into()),
        _ => Err(Error::Command {
            command: format!("bash {}", script.display()),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

impl HangFs {
    /// Mounts a fresh hangfs on a temporary directory with `files` as (name, what hangs, size). Fails, never
    /// skips, when it cannot mount (not root, no /dev/fuse, no Go to build it).
    pub fn mount(files: &[(&str, Hang, usize)]) -> Result<HangFs, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Fuse("mounting hangfs needs root (it calls mount(2) itself)".into()));
        }
        let bin = hangfs_binary()?;
        let mountpoint = tempfile::Builder::new().prefix("hangfs-").tempdir().map_err(io("temp dir"))?;
        let log = mountpoint.path().with_extension("log");
        let err = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let mut cmd = Command::new(&bin);
        cmd.arg(mountpoint.path());
        cmd.args(files.iter().map(|(name, hang, size)| format!("{name}:{}:{size}", hang.word())));
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; the kernel kills the server (and so ends the FUSE session,
            // failing every waiting call) if the test thread dies first.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(io(format!("start {}", bin.display())))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| Error::Fuse("no stdout from hangfs".into()))?;
        let events = Arc::new((Mutex::new(Events::default()), Condvar::new()));
        let seen = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let (lock, cond) = &*seen;
                let mut e = lock.lock().unwrap_or_else(|p| p.into_inner());
                if line == "ready" {
                    e.ready = true;
                } else if let Some(rest) = line.strip_prefix("blocked ")
                    && let Some((op, name)) = rest.split_once(' ')
                {
                    e.blocked.push((op.to_owned(), name.to_owned()));
                }
                cond.notify_all();
            }
            let (lock, cond) = &*seen;
            lock.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
            cond.notify_all();
        });
        let fs = HangFs { child, stdin, events, mountpoint, log };
        let mounted = fs.wait_for(Duration::from_secs(20), |e| e.ready || e.ended);
        if !mounted.is_ok_and(|()| fs.events.0.lock().is_ok_and(|e| e.ready)) {
            return Err(Error::Fuse(format!("it did not mount: {}", fs.log())));
        }
        Ok(fs)
    }

    /// The mountpoint: the files are right in it.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// What the server wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lets every waiting and later operation through.
    pub fn release(&mut self) -> Result<(), Error> {
        self.command("release")
    }

    /// Holds operations again (as at start).
    pub fn hold(&mut self) -> Result<(), Error> {
        self.command("hang")
    }

    fn command(&mut self, line: &str) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or_else(|| Error::Fuse("hangfs has ended".into()))?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).map_err(io("command hangfs"))
    }

    /// The distinct files whose operations have blocked so far.
    pub fn blocked_files(&self) -> HashSet<String> {
        let e = self.events.0.lock().unwrap_or_else(|p| p.into_inner());
        e.blocked.iter().map(|(_, name)| name.clone()).collect()
    }

    /// Waits until operations on `n` distinct files have blocked in the server (so callers are stuck in the
    /// kernel), or fails after `within`.
    pub fn wait_blocked(&self, n: usize, within: Duration) -> Result<(), Error> {
        self.wait_for(within, |e| e.blocked.iter().map(|(_, f)| f).collect::<HashSet<_>>().len() >= n)
            .map_err(|()| Error::NotReady("hangfs", format!("{} files blocked, not {n}", self.blocked_files().len())))
    }

    fn wait_for(&self, within: Duration, done: impl Fn(&Events) -> bool) -> Result<(), ()> {
        let deadline = Instant::now() + within;
        let (lock, cond) = &*self.events;
        let mut e = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !done(&e) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            e = cond.wait_timeout(e, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    fn mounted(&self) -> bool {
        let target = self.path().to_string_lossy().into_owned();
        // The fifth field of mountinfo is the mount point (with spaces escaped; a tempdir path has none).
        std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str())))
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        // End of stdin: the server releases every waiting call and unmounts.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.mounted() {
            let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: a valid C string; a lazy unmount detaches the dead mount even while something holds it.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
