//! Local platform: each invocation is a process of the `lambdaml` binary (`lambdaml worker`),
//! given its event on stdin and its deadline in the environment.
//!
//! As Lambda watches a function from outside, each invocation runs under a small supervisor
//! process (`lambdaml supervise`, see [`supervise`]): it holds the invocation to its memory
//! (ending it, as Lambda does, when it uses more than the function's memory) and says how it
//! ended (a signal, the memory, the deadline), so that a worker killed without a word is
//! still reported.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{DEADLINE_ENV, FunctionFacts, FunctionSpec, Platform, PlatformError};

/// Runs invocations as local processes.
#[derive(Debug, Clone)]
pub struct LocalPlatform {
    f: FunctionSpec,
    /// Signalled as each supervisor started here exits.
    ended: std::sync::Arc<tokio::sync::Notify>,
}

impl LocalPlatform {
    /// Invocations run `f.exe worker` under `f.supervisor supervise` (the `lambdaml`
    /// binary), log to `f.log_dir/NAME.log`, get `f.timeout_s` and `f.memory_mb` each.
    pub fn new(f: FunctionSpec) -> Self {
        LocalPlatform {
            f,
            ended: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Platform for LocalPlatform {
    async fn check(&self, _workers: usize) -> Result<Option<FunctionFacts>, PlatformError> {
        Ok(None)
    }

    async fn invocation_ended(&self) {
        self.ended.notified().await
    }

    async fn invoke(&self, name: &str, payload: &[u8]) -> Result<(), PlatformError> {
        let fail = |message: String| PlatformError::Invoke {
            name: name.to_string(),
            message,
        };
        let f = &self.f;
        std::fs::create_dir_all(&f.log_dir)
            .map_err(|e| fail(format!("{}: {e}", f.log_dir.display())))?;
        let log_path = f.log_dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
        let err_log = log
            .try_clone()
            .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
        let deadline = SystemTime::now() + Duration::from_secs_f64(f.timeout_s);
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&f.supervisor)
            // A group of its own: a terminal's Ctrl-C reaches the driver, which stops the
            // job cleanly, and not every invocation at once, as it would a Lambda's.
            .process_group(0)
            .arg("supervise")
            .arg("--exe")
            .arg(&f.exe)
            .arg("--log")
            .arg(&log_path)
            .arg("--memory-mb")
            .arg(f.memory_mb.to_string())
            .env(DEADLINE_ENV, deadline_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", f.supervisor.display())))?;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(payload)
            .map_err(|e| fail(format!("cannot send the event: {e}")))?;
        drop(stdin);
        // Fire and forget, but reap the process so it does not linger as a zombie while this
        // process lives. Its outcome is learnt through the channel, never from here; its end
        // only says that now is a good time to look.
        let ended = self.ended.clone();
        std::thread::spawn(move || {
            let _ = child.wait();
            ended.notify_one();
        });
        Ok(())
    }
}

/// The deadline of the invocation this process serves, from the environment.
pub fn deadline() -> Option<SystemTime> {
    let ms: u64 = std::env::var(DEADLINE_ENV).ok()?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Called by a process the local platform started (`lambdaml worker`): the invocation's
/// deadline from the environment, with a watchdog that ends the process at that deadline
/// whatever it is doing, as Lambda ends an invocation (the worker is expected to have
/// checkpointed before). `None` when the process was not started with a deadline.
pub fn enter_invocation() -> Option<SystemTime> {
    let deadline = deadline()?;
    std::thread::spawn(move || {
        if let Ok(left) = deadline.duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
        eprintln!("invocation deadline passed: terminated by the platform");
        std::process::exit(DEADLINE_EXIT);
    });
    Some(deadline)
}

/// Exit status of a worker that failed and reported it (`lambdaml`'s error exit).
const WORKER_ERROR_EXIT: i32 = 1;
/// Exit status of an invocation that found a newer invocation of its worker running (it
/// was replaced while paused or cut off) and stopped without writing: not a failure.
pub const SUPERSEDED_EXIT: i32 = 3;
/// Exit status of an invocation ended by its deadline watchdog.
const DEADLINE_EXIT: i32 = 124;
/// How often the supervisor looks at its invocation's memory.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// How often the supervisor looks whether its invocation ended (a `waitpid`, no more).
const NOTICE_END_EVERY: Duration = Duration::from_millis(5);

/// How a supervised invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The process's exit status.
    pub status: ExitStatus,
    /// The most memory (resident set) it was seen to use, in MB.
    pub peak_mb: u64,
    /// True when the supervisor ended it for using more than its memory.
    pub over_memory: bool,
    /// The memory it was allowed, in MB.
    pub memory_mb: u32,
    /// True when it ended after its deadline.
    pub past_deadline: bool,
}

impl Ended {
    /// Why the invocation failed, in words, when nobody else will say it; `None` when it
    /// exited cleanly, or through the worker's own error path (status 1), which reports
    /// itself: a second report could land after the driver's cleanup.
    pub fn failure(&self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let peak = self.peak_mb;
        let limit = self.memory_mb;
        if self.over_memory {
            return Some(format!(
                "ran out of memory: it used {peak} MB, more than its memory_mb of {limit} MB, \
                 and was ended as Lambda ends such a function. Give it more (--memory-mb), \
                 or make each worker's share smaller (more --workers, fewer --features, a \
                 sparse model)"
            ));
        }
        if let Some(signal) = self.status.signal() {
            let name = signal_name(signal);
            return Some(if signal == 9 {
                format!(
                    "was killed by signal 9 ({name}) after using up to {peak} MB: most often \
                     the kernel's out-of-memory killer (memory_mb is {limit} MB), or someone \
                     killed it"
                )
            } else {
                format!("was killed by signal {signal} ({name}) after using up to {peak} MB")
            });
        }
        match self.status.code() {
            Some(0) => None,
            Some(DEADLINE_EXIT) if self.past_deadline => Some(
                "ran past its deadline (--invocation-timeout) without checkpointing: the \
                 invocation is too short for loading the data plus one round; raise \
                 --invocation-timeout or --reinvoke-margin"
                    .to_string(),
            ),
            Some(WORKER_ERROR_EXIT | SUPERSEDED_EXIT) => None,
            Some(code) => Some(format!("exited with status {code}")),
            None => Some("ended without an exit status".to_string()),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Runs `exe worker` with `payload` on its stdin and its output on this process's, watches
/// its memory (ending it when it uses more than `memory_mb`, as Lambda does) and waits for
/// it to end.
pub fn supervise(exe: &Path, payload: &[u8], memory_mb: u32) -> std::io::Result<Ended> {
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // A child that dies before reading its event closes the pipe: its end says why.
    let _ = stdin.write_all(payload);
    drop(stdin);
    let limit_kb = u64::from(memory_mb) * 1024;
    let mut peak_kb = 0;
    let mut over_memory = false;
    let mut watched: Option<std::time::Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if watched.is_none_or(|at| at.elapsed() >= WATCH_EVERY) {
            watched = Some(std::time::Instant::now());
            if let Some(m) = memory_of(child.id()) {
                peak_kb = peak_kb.max(m.peak_kb).max(m.resident_kb);
                if m.resident_kb > limit_kb && !over_memory {
                    over_memory = true;
                    let _ = child.kill();
                }
            }
        }
        // The end is looked for more often than the memory: the driver learns of it when
        // this process exits, and a short job should not wait out a memory reading.
        std::thread::sleep(NOTICE_END_EVERY);
    };
    let past_deadline = deadline().is_some_and(|d| SystemTime::now() >= d);
    Ok(Ended {
        status,
        peak_mb: peak_kb.div_ceil(1024),
        over_memory,
        memory_mb,
        past_deadline,
    })
}

/// A process's memory, in kB.
pub(crate) struct Memory {
    /// Resident now.
    pub resident_kb: u64,
    /// Resident at its peak.
    pub peak_kb: u64,
}

/// Process `pid`'s resident memory now and at its peak, from `/proc` (Linux); `None`
/// elsewhere.
pub(crate) fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Memory {
        resident_kb: field("VmRSS:")?,
        peak_kb: field("VmHWM:").unwrap_or(0),
    })
}

/// The last `n` lines of the file at `path` (what an invocation logged last), read from
/// its last 64 KB at most; from its last panic on when it panicked, since the end of a
/// backtrace (`main`, `call_once`) says nothing of why.
pub fn log_tail(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = match lines.iter().rposition(|l| l.contains("panicked at")) {
        Some(panic) => panic,
        None => lines.len().saturating_sub(n),
    };
    lines[from..(from + n).min(lines.len())].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that panicked: the lost worker's cause shows the panic's message, not the
    /// last frames of its backtrace.
    #[test]
    fn the_tail_of_a_panicked_log_starts_at_the_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-2.log");
        let mut log = String::from("INFO epoch done\n");
        log.push_str("thread 'main' panicked at src/comm/reduce.rs:10:5:\nchunk 3 is missing\n");
        log.push_str("stack backtrace:\n");
        for i in 0..40 {
            log.push_str(&format!("  {i}: frame\n"));
        }
        std::fs::write(&path, &log).unwrap();
        let tail = log_tail(&path, 5);
        assert!(tail.starts_with("thread 'main' panicked at"), "{tail}");
        assert!(tail.contains("chunk 3 is missing"), "{tail}");
        assert_eq!(tail.lines().count(), 5);
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&path, 2), "b\nc");
    }
}
