//! Nothing agentctl starts outlives it (DESIGN.md invariant 10), however it ends.
//!
//! Every temporary file of a run lives in one run directory, and every `ssh` process
//! the run starts (control masters, multiplexed clients, fresh probe connections) names
//! a path inside it on its command line. A small guard process, started first, holds the
//! read end of a pipe whose write end only agentctl holds. When agentctl ends — normal
//! exit, error, SIGINT, SIGTERM or SIGKILL — the kernel closes that pipe, the guard sees
//! end-of-file, terminates every process whose command line names the run directory,
//! and removes the directory. The guard runs in its own process group, so a terminal's
//! Ctrl-C or a `kill` of agentctl's group does not take it down before it has cleaned up.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The prefix of run directories in the system's temp directory.
pub const RUN_DIR_PREFIX: &str = "agentctl-run-";

/// A run directory and the guard watching it.
#[derive(Debug)]
pub struct Guard {
    dir: PathBuf,
    child: Option<Child>,
    pipe: Option<ChildStdin>,
}

impl Guard {
    /// Creates a run directory under `tmp` and starts `program args... DIR` as its guard
    /// (the program must call [`watch`] with DIR on its standard input).
    pub fn start(tmp: &Path, program: &Path, args: &[&str]) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(RUN_DIR_PREFIX).tempdir_in(tmp)?.keep();
        let mut cmd = Command::new(program);
        cmd.args(args).arg(&dir).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let pipe = child.stdin.take();
        Ok(Self { dir, child: Some(child), pipe })
    }

    /// The run directory: put every temporary file of the run below it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ends the run: the guard cleans up now and agentctl waits for it (bounded), so a
    /// normal exit leaves nothing behind either.
    pub fn finish(mut self) {
        self.finish_inner();
    }

    fn finish_inner(&mut self) {
        drop(self.pipe.take());
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish_inner();
    }
}

/// The guard's side: waits until `input` ends (its parent is gone or finished), then
/// cleans up `dir`. Returns what it stopped.
pub fn watch(dir: &Path, mut input: impl std::io::Read) -> Cleanup {
    let mut buf = [0u8; 64];
    while matches!(input.read(&mut buf), Ok(n) if n > 0) {}
    clean(dir)
}

/// What a cleanup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub stopped: Vec<u32>,
    pub removed: bool,
}

/// Stops every process whose command line names `dir` (TERM, then KILL after a grace
/// period) and removes `dir`.
pub fn clean(dir: &Path) -> Cleanup {
    let mut cleanup = Cleanup::default();
    if dir.as_os_str().len() < RUN_DIR_PREFIX.len() || !dir.to_string_lossy().contains(RUN_DIR_PREFIX) {
        // Never sweep anything but a run directory.
        return cleanup;
    }
    let me = std::process::id();
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let find = || -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                let mut cmdline = Vec::new();
                std::fs::File::open(format!("/proc/{pid}/cmdline"))
                    .and_then(|mut f| f.read_to_end(&mut cmdline))
                    .is_ok()
                    && cmdline.windows(needle.len()).any(|w| w == needle.as_slice())
            })
            .collect()
    };
    let signal = |pid: u32, sig: rustix::process::Signal| {
        if let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    // Scan until two scans in a row find nothing (a process starting during a scan is
    // caught by the next one), TERM what is found, KILL what survives the grace period.
    let mut stopped: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < deadline {
        let found = find();
        if found.is_empty() {
            quiet += 1;
        } else {
            quiet = 0;
            for &pid in &found {
                if !stopped.contains(&pid) {
                    signal(pid, rustix::process::Signal::TERM);
                    stopped.push(pid);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &find() {
        signal(pid, rustix::process::Signal::KILL);
    }
    cleanup.stopped = stopped;
    cleanup.removed = std::fs::remove_dir_all(dir).is_ok() || !dir.exists();
    cleanup
}

/// Whether process `pid` exists on this machine.
pub fn pid_exists(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// This machine's host name and boot id, for lock records.
pub fn machine() -> crate::lock::Machine {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let hostname = read("/proc/sys/kernel/hostname");
    crate::lock::Machine {
        hostname: if hostname.is_empty() { "unknown".into() } else { hostname },
        boot_id: read("/proc/sys/kernel/random/boot_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_stops_processes_naming_the_run_dir_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(format!("{RUN_DIR_PREFIX}test"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        // A process that names the directory (like `ssh -S DIR/master`) and one that does not.
        let sleep = dir.join("sleep");
        std::os::unix::fs::symlink(which("sleep"), &sleep).unwrap();
        let mut named = Command::new(&sleep).arg("30").spawn().unwrap();
        let mut other = Command::new("sleep").arg("30").spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        let reader = Reader(rx);
        tx.send(b'.').unwrap();
        drop(tx); // the "parent" ends
        let cleanup = watch(&dir, reader);
        assert!(cleanup.stopped.contains(&named.id()), "{cleanup:?}");
        assert!(!cleanup.stopped.contains(&other.id()));
        assert!(named.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(!dir.exists());
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn it_never_sweeps_a_directory_that_is_not_a_run_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(clean(tmp.path()), Cleanup::default());
        assert!(tmp.path().exists());
    }

    fn which(program: &str) -> PathBuf {
        ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(program)).find(|p| p.exists()).unwrap()
    }

    /// A `Read` over a channel: ends when every sender is dropped.
    struct Reader(std::sync::mpsc::Receiver<u8>);

    impl std::io::Read for Reader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.recv() {
                Ok(b) if !buf.is_empty() => {
                    buf[0] = b;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }
}
