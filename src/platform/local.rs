//! Local platform: each invocation is a process of the `lambdaml` binary (`lambdaml worker`),
//! given its event on stdin and its deadline in the environment.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{DEADLINE_ENV, Platform, PlatformError};

/// Runs invocations as local processes.
#[derive(Debug, Clone)]
pub struct LocalPlatform {
    exe: PathBuf,
    log_dir: PathBuf,
    timeout: Duration,
}

impl LocalPlatform {
    /// Invocations run `exe worker`, log to `log_dir/NAME.log` and get `timeout` each.
    pub fn new(exe: PathBuf, log_dir: PathBuf, timeout: Duration) -> Self {
        LocalPlatform {
            exe,
            log_dir,
            timeout,
        }
    }
}

impl Platform for LocalPlatform {
    fn invoke(&self, name: &str, payload: &[u8]) -> Result<(), PlatformError> {
        let fail = |message: String| PlatformError::Invoke {
            name: name.to_string(),
            message,
        };
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| fail(format!("{}: {e}", self.log_dir.display())))?;
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
        let err_log = log
            .try_clone()
            .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
        let deadline = SystemTime::now() + self.timeout;
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let mut child = Command::new(&self.exe)
            .arg("worker")
            .env(DEADLINE_ENV, deadline_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", self.exe.display())))?;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(payload)
            .map_err(|e| fail(format!("cannot send the event: {e}")))?;
        drop(stdin);
        // Fire and forget, but reap the process so it does not linger as a zombie while this
        // process lives. Its outcome is learnt through the channel, never from here.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(())
    }
}

/// Called by a process the local platform started (`lambdaml worker`): the invocation's
/// deadline from the environment, with a watchdog that ends the process at that deadline
/// whatever it is doing, as Lambda ends an invocation (the worker is expected to have
/// checkpointed before). `None` when the process was not started with a deadline.
pub fn enter_invocation() -> Option<SystemTime> {
    let ms: u64 = std::env::var(DEADLINE_ENV).ok()?.parse().ok()?;
    let deadline = UNIX_EPOCH + Duration::from_millis(ms);
    std::thread::spawn(move || {
        if let Ok(left) = deadline.duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
        eprintln!("invocation deadline passed: terminated by the platform");
        std::process::exit(137);
    });
    Some(deadline)
}
