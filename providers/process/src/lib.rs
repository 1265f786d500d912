//! The `process` provider of pushpool: runs each flow run as a local subprocess (`sh -c <command>`).
//!
//! Each job gets its own process group so that cancelling it also stops whatever the command
//! started in the background. The provider keeps the children it started in memory: after a
//! controller restart it no longer knows them and reports [`JobStatus::NotFound`] (or
//! [`JobStatus::Unobservable`] while the pid still exists).
//!
//! Output is forwarded line by line to [`RunSpec::logs`], bounded by
//! [`ProcessJobConfig::max_log_bytes`]. The child inherits the controller's environment, plus
//! the rendered `env` and the pushpool variables (`PUSHPOOL_API_URL`, `PUSHPOOL_RUN_ID`,
//! `PUSHPOOL_RUN_TOKEN`), which take precedence.

mod config;
mod logs;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use pushpool_provider::{CancelOutcome, JobStatus, LogStream, Provider, ProviderError, RunSpec};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

pub use config::{ProcessJobConfig, DEFAULT_MAX_LOG_BYTES, DEFAULT_TEMPLATE, MIN_MAX_LOG_BYTES};

use logs::{forward, Budget};

/// The pool type served by [`ProcessProvider`].
pub const POOL_TYPE: &str = "process";

/// Prefix of the infrastructure ids returned by [`ProcessProvider`] (`process:<pid>`).
pub const ID_PREFIX: &str = "process:";

/// How long `status` waits for a finished job's output pipes to drain.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// How long `cancel` waits for the process to be reaped after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Poll interval while waiting for a process group to empty.
const POLL: Duration = Duration::from_millis(20);

/// Runs jobs as local subprocesses (pool type `process`).
#[derive(Debug, Default)]
pub struct ProcessProvider {
    jobs: Mutex<HashMap<String, Entry>>,
}

/// How a child ended, recorded by its waiter task.
#[derive(Debug, Clone)]
enum Exit {
    Status(ExitStatus),
    WaitFailed(String),
}

/// What the provider remembers about a child it started.
#[derive(Debug, Clone)]
struct Entry {
    /// The child's pid, which is also its process group id.
    pid: Pid,
    /// `Some` once the child has exited and was reaped.
    exit: watch::Receiver<Option<Exit>>,
    /// `true` once both output readers reached the end of their pipes.
    drained: watch::Receiver<bool>,
    /// Set by `cancel` before the first signal is sent.
    cancelled: Arc<AtomicBool>,
    /// Set when waiting for the pipes timed out once (a leftover process holds them open), so
    /// later `status` calls do not wait again.
    drain_timed_out: Arc<AtomicBool>,
}

impl Entry {
    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

impl ProcessProvider {
    /// A provider that knows no jobs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The parsed default base job template (this crate's `template.json`).
    pub fn template() -> Value {
        pushpool_provider::builtin_template(DEFAULT_TEMPLATE)
    }

    /// The pid in an infrastructure id of the form `process:<pid>`, if it is one.
    pub fn parse_id(infrastructure_id: &str) -> Option<i32> {
        infrastructure_id
            .strip_prefix(ID_PREFIX)?
            .parse::<i32>()
            .ok()
            .filter(|pid| *pid > 1)
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Status of an id this provider did not start (or already forgot).
    fn unknown_status(id: &str) -> JobStatus {
        match Self::parse_id(id) {
            Some(pid) => match kill(Pid::from_raw(pid), None) {
                Ok(()) | Err(Errno::EPERM) => JobStatus::Unobservable,
                Err(_) => JobStatus::NotFound,
            },
            None => JobStatus::NotFound,
        }
    }

    /// Waits (bounded) until the readers forwarded everything the finished child wrote.
    async fn wait_drained(entry: &Entry) {
        if entry.drain_timed_out.load(Ordering::Relaxed) {
            return;
        }
        let mut drained = entry.drained.clone();
        if tokio::time::timeout(DRAIN_WAIT, drained.wait_for(|d| *d))
            .await
            .is_err()
        {
            entry.drain_timed_out.store(true, Ordering::Relaxed);
        }
    }
}

/// The final status for a recorded exit.
fn final_status(exit: &Exit, cancelled: bool) -> JobStatus {
    if cancelled {
        return JobStatus::Cancelled;
    }
    match exit {
        Exit::Status(status) => {
            if let Some(code) = status.code() {
                if code == 0 {
                    JobStatus::Completed { summary: None }
                } else {
                    JobStatus::Failed {
                        message: format!("exit code {code}"),
                    }
                }
            } else if let Some(sig) = status.signal() {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| sig.to_string());
                JobStatus::Crashed {
                    message: format!("killed by signal {name}"),
                }
            } else {
                JobStatus::Crashed {
                    message: format!("process ended: {status}"),
                }
            }
        }
        Exit::WaitFailed(err) => JobStatus::Crashed {
            message: format!("could not wait for the process: {err}"),
        },
    }
}

/// True while the process group `pgid` has members that are not zombies.
///
/// On Linux `/proc` is consulted so that zombies (which nobody may reap inside a container) do
/// not count; elsewhere any member counts.
pub(crate) fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None).is_err() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let mut saw_any = false;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        saw_any = true;
        // Format: `pid (comm) state ppid pgrp ...`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid.as_raw()) && state != "Z" && state != "X" {
            return true;
        }
    }
    // No readable /proc entries at all: trust killpg.
    !saw_any
}

/// Sends `signal` to the process group, ignoring a group that is already gone.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, %err, "could not signal process group")
        }
    }
}

fn spawn_error(err: io::Error, job: &ProcessJobConfig) -> ProviderError {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            let mut message = format!("could not start `sh -c` for the job: {err}");
            if let Some(dir) = &job.working_dir {
                message.push_str(&format!(
                    " (working directory `{}`; check `working_dir` and that `sh` is installed)",
                    dir.display()
                ));
            }
            ProviderError::permanent(message)
        }
        _ => ProviderError::transient(format!("could not start `sh -c` for the job: {err}")),
    }
}

#[async_trait]
impl Provider for ProcessProvider {
    type JobConfig = ProcessJobConfig;

    fn pool_type(&self) -> &'static str {
        POOL_TYPE
    }

    fn default_base_job_template(&self) -> Value {
        Self::template()
    }

    fn validate(&self, rendered: &Value) -> Result<ProcessJobConfig, ProviderError> {
        ProcessJobConfig::from_rendered(rendered)
    }

    async fn submit(&self, run: &RunSpec, job: &ProcessJobConfig) -> Result<String, ProviderError> {
        if let Some(dir) = &job.working_dir {
            if !dir.is_dir() {
                return Err(ProviderError::permanent(format!(
                    "working directory `{}` does not exist or is not a directory; fix `working_dir` in the job configuration",
                    dir.display()
                )));
            }
        }

        let output = || {
            if job.stream_output {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&job.command)
            .process_group(0)
            .kill_on_drop(false)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .envs(&job.env)
            .envs(run.pushpool_env());
        if let Some(dir) = &job.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|err| spawn_error(err, job))?;
        let Some(raw_pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return Err(ProviderError::transient(
                "the process has no pid right after spawn",
            ));
        };
        let pid = Pid::from_raw(raw_pid);
        let id = format!("{ID_PREFIX}{raw_pid}");
        tracing::info!(
            run_id = %run.run_id,
            attempt = run.attempt,
            pid = raw_pid,
            name = job.name.as_deref().unwrap_or(""),
            "started process job"
        );

        let budget = Arc::new(Budget::new(job.max_log_bytes));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(forward(
                out,
                LogStream::Stdout,
                run.logs.clone(),
                budget.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(forward(
                err,
                LogStream::Stderr,
                run.logs.clone(),
                budget,
            )));
        }
        let (drained_tx, drained_rx) = watch::channel(false);
        tokio::spawn(async move {
            for reader in readers {
                let _ = reader.await;
            }
            drained_tx.send_replace(true);
        });

        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit::Status(status),
                Err(err) => Exit::WaitFailed(err.to_string()),
            };
            tracing::debug!(pid = raw_pid, ?exit, "process job exited");
            exit_tx.send_replace(Some(exit));
        });

        self.lock().insert(
            id.clone(),
            Entry {
                pid,
                exit: exit_rx,
                drained: drained_rx,
                cancelled: Arc::new(AtomicBool::new(false)),
                drain_timed_out: Arc::new(AtomicBool::new(false)),
            },
        );
        Ok(id)
    }

    async fn status(
        &self,
        infrastructure_id: &str,
        _job: &ProcessJobConfig,
    ) -> Result<JobStatus, ProviderError> {
        let Some(entry) = self.entry(infrastructure_id) else {
            return Ok(Self::unknown_status(infrastructure_id));
        };
        let exit = entry.exit.borrow().clone();
        match exit {
            None => Ok(JobStatus::Running),
            Some(exit) => {
                Self::wait_drained(&entry).await;
                Ok(final_status(&exit, entry.cancelled.load(Ordering::SeqCst)))
            }
        }
    }

    async fn cancel(
        &self,
        infrastructure_id: &str,
        _job: &ProcessJobConfig,
        grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        let Some(entry) = self.entry(infrastructure_id) else {
            return Ok(CancelOutcome::NotFound);
        };
        if entry.has_exited() {
            return Ok(CancelOutcome::NotFound);
        }
        entry.cancelled.store(true, Ordering::SeqCst);
        let pgid = entry.pid;
        tracing::info!(pid = pgid.as_raw(), ?grace, "cancelling process job");
        signal_group(pgid, Signal::SIGTERM);

        // Give the whole group `grace` to exit: first the leader, then anything it started.
        let deadline = Instant::now() + grace;
        let mut exit = entry.exit.clone();
        let _ = tokio::time::timeout_at(deadline, exit.wait_for(|e| e.is_some())).await;
        while group_alive(pgid) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        if group_alive(pgid) {
            tracing::info!(
                pid = pgid.as_raw(),
                "grace period over, killing process group"
            );
            signal_group(pgid, Signal::SIGKILL);
        }
        if tokio::time::timeout(KILL_WAIT, exit.wait_for(|e| e.is_some()))
            .await
            .is_err()
        {
            tracing::warn!(pid = pgid.as_raw(), "process did not exit after SIGKILL");
        }
        Ok(CancelOutcome::Cancelled)
    }

    /// Forgets a finished job. A job that is still running stays known, so that it can still be
    /// observed and cancelled.
    async fn cleanup(
        &self,
        infrastructure_id: &str,
        _job: &ProcessJobConfig,
    ) -> Result<(), ProviderError> {
        let mut jobs = self.lock();
        if jobs.get(infrastructure_id).is_some_and(Entry::has_exited) {
            jobs.remove(infrastructure_id);
        }
        Ok(())
    }
}
