//! A child process owned by a test: spawned with its output captured to a log file, polled for
//! readiness against a deadline, signalled, and killed when dropped.
//!
//! Every real component in the testkit (nats-server now; Envoy, Prometheus, NGINX, HAProxy)
//! is a thin wrapper that builds arguments and a readiness probe around this.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::{POLL_INTERVAL, Result, TestkitError};

/// A running child process, killed (SIGKILL) and reaped on drop.
///
/// When dropped while the test thread is panicking, its log is printed to stderr so a failing
/// test shows what the component said.
#[derive(Debug)]
pub struct Process {
    name: String,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Spawns `program` with `args`, appending its stdout and stderr to `log_path`.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the log file cannot be opened or the program cannot be run.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, log_path: &Path) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| TestkitError::io(format!("opening {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| TestkitError::io("cloning the log file handle", e))?;
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawning {}", program.display()), e))?;
        Ok(Self {
            name: name.to_owned(),
            log_path: log_path.to_owned(),
            child: Some(child),
        })
    }

    /// The component's name, as given to [`Process::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, or `None` once the process was killed or stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process has written so far (empty if the log cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process has exited; reaps it if so.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Polls `probe` every [`POLL_INTERVAL`] until it returns `true`.
    ///
    /// # Errors
    /// [`TestkitError::Exited`] if the process exits first; [`TestkitError::NotReady`] when
    /// `deadline` passes. Either way the log is printed to stderr as well as carried in the
    /// error.
    pub async fn wait_ready<F, Fut>(&mut self, deadline: Duration, mut probe: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                self.child = None;
                let log = self.log();
                eprintln!("--- {} exited ({status}); log:\n{log}", self.name);
                return Err(TestkitError::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    log,
                });
            }
            // Probe the process we own: a probe that passed against something else on the
            // port is caught by the exit check on the next round, so check it once more.
            if probe().await && self.exit_status().is_none() {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                let log = self.log();
                eprintln!(
                    "--- {} not ready after {deadline:?}; log:\n{log}",
                    self.name
                );
                return Err(TestkitError::NotReady {
                    name: self.name.clone(),
                    after: deadline,
                    log,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends `signal` to the process, if it still runs.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the signal cannot be delivered.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let pid = i32::try_from(pid)
            .map_err(|e| TestkitError::io("pid out of range", std::io::Error::other(e)))?;
        match signal::kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(TestkitError::io(
                format!("sending {sig} to {}", self.name),
                std::io::Error::from(errno),
            )),
        }
    }

    /// Kills the process with SIGKILL and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to exit with SIGTERM, waits up to `grace` for it, then kills it.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the signal cannot be delivered (the process is killed anyway).
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        if let Err(e) = self.signal(Signal::SIGTERM) {
            self.kill();
            return Err(e);
        }
        let started = Instant::now();
        while started.elapsed() < grace {
            if self.exit_status().is_some() {
                self.child = None;
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        eprintln!(
            "--- {} ignored SIGTERM for {grace:?}; killing it",
            self.name
        );
        self.kill();
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}):\n{}",
                self.name,
                self.log_path.display(),
                self.log()
            );
        }
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that is free now and that nothing else hands out: for a child
/// process (Envoy, NGINX, …) to bind by number.
///
/// A port the kernel picks for `bind(0)` comes from the ephemeral range, where any outgoing
/// connection of any process may take it before the child binds it. So ports are handed out
/// from outside that range (`net.ipv4.ip_local_port_range`), in turn from a counter shared by
/// every test process on the machine (a locked file in the temp dir), and each is checked by
/// binding it. Two tests running at once never get the same port until the counter has gone
/// round the whole range.
///
/// # Errors
/// [`TestkitError::Io`] when the counter file cannot be used or no port in the range binds.
pub fn free_port() -> Result<u16> {
    let ranges = unreserved_ranges(&ephemeral_range());
    let span: u32 = ranges.iter().map(|r| u32::from(r.end - r.start)).sum();
    let path = std::env::temp_dir().join("aviary-testkit-next-port");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| TestkitError::io(format!("opening {}", path.display()), e))?;
    file.lock()
        .map_err(|e| TestkitError::io(format!("locking {}", path.display()), e))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)
        .map_err(|e| TestkitError::io(format!("reading {}", path.display()), e))?;
    let mut next: u32 = text.trim().parse().unwrap_or_else(|_| seed() % span.max(1));
    let mut found = None;
    for _ in 0..span {
        let port = nth_port(&ranges, next % span);
        next = (next + 1) % span;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            found = Some(port);
            break;
        }
    }
    std::io::Seek::rewind(&mut file)
        .and_then(|()| file.set_len(0))
        .and_then(|()| std::io::Write::write_all(&mut file, next.to_string().as_bytes()))
        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))?;
    found.ok_or_else(|| {
        TestkitError::io(
            "finding a free port outside the ephemeral range",
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        )
    })
}

/// The kernel's ephemeral port range, or Linux's default when it cannot be read.
fn ephemeral_range() -> std::ops::RangeInclusive<u16> {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text
        .split_whitespace()
        .filter_map(|b| b.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => low..=high,
        _ => 32768..=60999,
    }
}

/// The ports from 10000 up that are outside `ephemeral` (half-open ranges).
fn unreserved_ranges(ephemeral: &std::ops::RangeInclusive<u16>) -> Vec<std::ops::Range<u16>> {
    const FIRST: u16 = 10_000;
    let mut ranges = Vec::new();
    if *ephemeral.start() > FIRST {
        ranges.push(FIRST..*ephemeral.start());
    }
    if *ephemeral.end() < u16::MAX {
        ranges.push(ephemeral.end().saturating_add(1).max(FIRST)..u16::MAX);
    }
    if ranges.is_empty() {
        // Every port is ephemeral: fall back to the whole unprivileged range.
        ranges.push(FIRST..u16::MAX);
    }
    ranges
}

/// The `index`-th port across `ranges`.
fn nth_port(ranges: &[std::ops::Range<u16>], mut index: u32) -> u16 {
    for range in ranges {
        let len = u32::from(range.end - range.start);
        if index < len {
            return range.start + u16::try_from(index).unwrap_or(0);
        }
        index -= len;
    }
    ranges[0].start
}

/// Where a fresh counter starts: spread by time and pid, so a new temp dir does not make every
/// machine start at the same port.
fn seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}

/// Where `name` is installed, looking in order at: the environment variable
/// `AVIARY_<NAME>` (upper case, `-` as `_`, e.g. `AVIARY_NATS_SERVER`), `<workspace>/.tools/bin`
/// (filled by `scripts/bootstrap.sh`), `/usr/bin`, `/usr/sbin`, then `PATH`.
///
/// # Errors
/// [`TestkitError::ToolNotFound`] listing every place looked at.
pub fn tool_path(name: &str) -> Result<PathBuf> {
    let env_var = format!("AVIARY_{}", name.to_uppercase().replace('-', "_"));
    let mut searched = Vec::new();
    if let Some(path) = std::env::var_os(&env_var) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        searched.push(path);
    }
    let mut dirs = vec![
        workspace_root().join(".tools").join("bin"),
        PathBuf::from("/usr/bin"),
        PathBuf::from("/usr/sbin"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(TestkitError::ToolNotFound {
        name: name.to_owned(),
        searched,
        hint: format!("run scripts/bootstrap.sh, or set {env_var}"),
    })
}

/// The workspace root: this crate lives at `<root>/crates/testkit`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_outside_the_ephemeral_range_and_do_not_repeat() {
        let ephemeral = ephemeral_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        for port in &ports {
            assert!(!ephemeral.contains(port), "{port} is in {ephemeral:?}");
            assert!(*port >= 10_000, "{port}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn the_ranges_skip_the_ephemeral_ports() {
        assert_eq!(
            unreserved_ranges(&(32768..=60999)),
            vec![10_000..32768, 61000..u16::MAX]
        );
        assert_eq!(unreserved_ranges(&(1024..=65535)), vec![10_000..u16::MAX]);
        let ranges = unreserved_ranges(&(32768..=60999));
        assert_eq!(nth_port(&ranges, 0), 10_000);
        assert_eq!(nth_port(&ranges, 22768), 61000);
    }
}
