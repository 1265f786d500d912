//! The `process` provider of pushpool: runs each flow run as a local subprocess (`sh -c <command>`).
//!
//! Each job gets its own process group so that cancelling it also stops whatever the command
//! started in the background. The provider keeps the children it started in memory; each job
//! also runs under a small supervisor ([`outcome`]) that records its exit status in its run
//! directory, so that after a controller restart a new provider reads the real outcome (and
//! reports RUNNING while the job still runs). An id it cannot place is [`JobStatus::NotFound`]
//! (or [`JobStatus::Unobservable`] while the pid still exists).
//!
//! Output is forwarded line by line to [`RunSpec::logs`], bounded by
//! [`ProcessJobConfig::max_log_bytes`].
//!
//! The execution boundary ([`sandbox`]): the child gets none of the controller's environment
//! (only `PATH`, `HOME` and `TMPDIR` pointing into its private per-run directory, the rendered
//! `env`, and the pushpool variables `PUSHPOOL_API_URL`, `PUSHPOOL_RUN_ID`,
//! `PUSHPOOL_RUN_TOKEN`, which take precedence); it runs in that per-run directory unless
//! `working_dir` says otherwise; and on Linux a supervisor restricts it with Landlock to the
//! system directories, its run directory and the paths its template allows. The per-run
//! directory is removed when the finished job is cleaned up.

mod config;
mod logs;
pub mod outcome;
pub mod sandbox;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_restart;

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use pushpool_provider::{
    CancelOutcome, JobStatus, LogStream, Lookup, Provider, ProviderError, RunSpec,
};
use sandbox::{SandboxConfig, SandboxMode, SupervisorArgs};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

pub use config::{ProcessJobConfig, DEFAULT_MAX_LOG_BYTES, DEFAULT_TEMPLATE, MIN_MAX_LOG_BYTES};

use logs::{forward, Budget};

/// The pool type served by [`ProcessProvider`].
pub const POOL_TYPE: &str = "process";

/// Prefix of the infrastructure ids returned by [`ProcessProvider`]
/// (`process:<pid>:<run directory name>`; older ids are `process:<pid>`).
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
    /// This provider's own sandbox setting; `None`: the process-wide one ([`sandbox::current`]).
    sandbox: Option<Arc<SandboxConfig>>,
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
    /// The job's private directory, removed by `cleanup`.
    run_dir: PathBuf,
}

impl Entry {
    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

impl ProcessProvider {
    /// A provider that knows no jobs yet, sandboxing as [`sandbox::configure`] says.
    pub fn new() -> Self {
        Self::default()
    }

    /// A provider with its own sandbox setting, whatever [`sandbox::configure`] says.
    pub fn with_sandbox(config: SandboxConfig) -> Self {
        ProcessProvider {
            sandbox: Some(Arc::new(config)),
            ..Self::default()
        }
    }

    /// The parsed default base job template (this crate's `template.json`).
    pub fn template() -> Value {
        pushpool_provider::builtin_template(DEFAULT_TEMPLATE)
    }

    /// The pid in an infrastructure id of the form `process:<pid>[:<run dir>]`, if it is one.
    pub fn parse_id(infrastructure_id: &str) -> Option<i32> {
        let rest = infrastructure_id.strip_prefix(ID_PREFIX)?;
        rest.split_once(':')
            .map_or(rest, |(pid, _)| pid)
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

    /// This provider's runs directory.
    fn runs_dir(&self) -> PathBuf {
        let config = self.sandbox.clone().unwrap_or_else(sandbox::current);
        config
            .runs_dir
            .clone()
            .unwrap_or_else(sandbox::default_runs_dir)
    }

    /// The run directory an id names, under this provider's runs directory, if it still exists.
    fn run_dir_of(&self, id: &str) -> Option<PathBuf> {
        let name = outcome::dir_name(id)?;
        let dir = self.runs_dir().join(name);
        dir.is_dir().then_some(dir)
    }

    /// Status of a job this provider did not start (a controller restart): the outcome its
    /// supervisor recorded; RUNNING while its process lives; else as [`Self::unknown_status`].
    fn recovered_status(&self, id: &str) -> JobStatus {
        let (Some(pid), Some(dir)) = (Self::parse_id(id), self.run_dir_of(id)) else {
            return Self::unknown_status(id);
        };
        if let Some(status) = outcome::recorded(&dir) {
            return status;
        }
        match kill(Pid::from_raw(pid), None) {
            Ok(()) | Err(Errno::EPERM) => JobStatus::Running,
            // It may have recorded its status just before exiting.
            Err(_) => outcome::recorded(&dir).unwrap_or(JobStatus::NotFound),
        }
    }

    /// Cancels a job this provider did not start (a controller restart): stops its process
    /// group as [`Provider::cancel`] does, when its run directory says it has not ended.
    async fn cancel_recovered(&self, id: &str, grace: Duration) -> CancelOutcome {
        let (Some(pid), Some(dir)) = (Self::parse_id(id), self.run_dir_of(id)) else {
            return CancelOutcome::NotFound;
        };
        let pgid = Pid::from_raw(pid);
        if outcome::recorded(&dir).is_some() || !group_alive(pgid) {
            return CancelOutcome::NotFound;
        }
        tracing::info!(
            pid,
            ?grace,
            "cancelling a process job started before a restart"
        );
        signal_group(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while group_alive(pgid) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        if group_alive(pgid) {
            signal_group(pgid, Signal::SIGKILL);
            let deadline = Instant::now() + KILL_WAIT;
            while group_alive(pgid) && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        CancelOutcome::Cancelled
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

fn spawn_error(err: io::Error, job: &ProcessJobConfig, program: &Path) -> ProviderError {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            let mut message = format!("could not start `{}` for the job: {err}", program.display());
            if let Some(dir) = &job.working_dir {
                message.push_str(&format!(
                    " (working directory `{}`; check `working_dir` and that `sh` is installed)",
                    dir.display()
                ));
            }
            ProviderError::permanent(message)
        }
        _ => ProviderError::transient(format!(
            "could not start `{}` for the job: {err}",
            program.display()
        )),
    }
}

/// Numbers per-run directories made by this process, so two submits of one run never share one.
static RUN_DIRS: AtomicU64 = AtomicU64::new(0);

/// Makes the job's private directory (0700, with a `tmp` inside) under the runs directory.
fn make_run_dir(config: &SandboxConfig, run: &RunSpec) -> Result<PathBuf, ProviderError> {
    let runs = config
        .runs_dir
        .clone()
        .unwrap_or_else(sandbox::default_runs_dir);
    sandbox::prepare_runs_dir(&runs).map_err(ProviderError::permanent)?;
    let dir = runs.join(format!(
        "{}-{}-{}-{}",
        run.run_id,
        run.attempt,
        std::process::id(),
        RUN_DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .and_then(|()| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir.join("tmp"))
        })
        .map_err(|e| {
            ProviderError::transient(format!("could not create {}: {e}", dir.display()))
        })?;
    Ok(dir)
}

/// Refuses template paths (working directory, readable and writable paths) that would give the
/// job pushpool's data directory or other runs' directories.
fn check_template_paths(
    config: &SandboxConfig,
    job: &ProcessJobConfig,
) -> Result<(), ProviderError> {
    let mut protected = config.protected.clone();
    protected.push(
        config
            .runs_dir
            .clone()
            .unwrap_or_else(sandbox::default_runs_dir),
    );
    let fields = job
        .working_dir
        .iter()
        .map(|p| ("working_dir".to_string(), p))
        .chain(
            job.read_paths
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("read_paths[{i}]"), p)),
        )
        .chain(
            job.write_paths
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("write_paths[{i}]"), p)),
        );
    for (field, path) in fields {
        if let Some(why) = sandbox::exposes(path, &protected) {
            return Err(ProviderError::invalid(
                field,
                format!("is not allowed: {why}"),
            ));
        }
    }
    Ok(())
}

/// The child's environment, built from nothing: `PATH` (the controller's, or a default),
/// `HOME` and `TMPDIR` in the run directory, the job's `env`, then the pushpool variables.
fn job_env(run: &RunSpec, job: &ProcessJobConfig, run_dir: &Path) -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| sandbox::DEFAULT_PATH.to_string());
    let mut env = vec![
        ("PATH".to_string(), path),
        ("HOME".to_string(), run_dir.display().to_string()),
        (
            "TMPDIR".to_string(),
            run_dir.join("tmp").display().to_string(),
        ),
    ];
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(run.pushpool_env());
    env
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
        let config = self.sandbox.clone().unwrap_or_else(sandbox::current);
        check_template_paths(&config, job)?;
        if config.supervisor.is_none() && config.mode == SandboxMode::Required {
            return Err(ProviderError::permanent(
                "this instance requires the sandbox (--process-sandbox required) but no sandbox supervisor is configured",
            ));
        }
        let run_dir = make_run_dir(&config, run)?;

        let output = || {
            if job.stream_output {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let shell = outcome::wrapped(&job.command, &run_dir);
        let (program, args) = match &config.supervisor {
            Some(supervisor) => {
                let mut write = vec![run_dir.clone()];
                write.extend(job.working_dir.iter().cloned());
                write.extend(job.write_paths.iter().cloned());
                let mut read: Vec<PathBuf> = sandbox::SYSTEM_READ_PATHS
                    .iter()
                    .map(PathBuf::from)
                    .collect();
                read.extend(job.read_paths.iter().cloned());
                let args = SupervisorArgs {
                    required: config.mode == SandboxMode::Required,
                    read,
                    write,
                    protected: config.protected.clone(),
                    command: shell,
                };
                (supervisor.clone(), args.to_args())
            }
            None => {
                if job.stream_output {
                    run.logs.line(
                        LogStream::System,
                        format!(
                            "{} none (no sandbox supervisor configured); the job runs with the controller user's file access",
                            sandbox::REPORT_PREFIX
                        ),
                    );
                }
                (PathBuf::from("sh"), shell[1..].to_vec())
            }
        };
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(job_env(run, job, &run_dir))
            .current_dir(job.working_dir.as_ref().unwrap_or(&run_dir))
            .process_group(0)
            .kill_on_drop(false)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(spawn_error(err, job, &program));
            }
        };
        let Some(raw_pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return Err(ProviderError::transient(
                "the process has no pid right after spawn",
            ));
        };
        let pid = Pid::from_raw(raw_pid);
        let dir_name = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = format!("{ID_PREFIX}{raw_pid}:{dir_name}");
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
                run_dir,
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
            return Ok(self.recovered_status(infrastructure_id));
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
            return Ok(self.cancel_recovered(infrastructure_id, grace).await);
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

    /// The child's exit is seen by its waiter task the moment it happens: no need to poll.
    async fn wait_ended(&self, infrastructure_id: &str, _job: &ProcessJobConfig) -> bool {
        let Some(entry) = self.entry(infrastructure_id) else {
            return false;
        };
        let mut exit = entry.exit.clone();
        let ended = exit.wait_for(|e| e.is_some()).await.is_ok();
        ended
    }

    /// Finds a job started for this attempt by a controller that died before recording its id:
    /// a run directory of the attempt whose supervisor wrote its pid. Anything else is
    /// "unknown" (never "absent": the job may have been started on another machine, or its
    /// supervisor may not have written its pid yet).
    async fn lookup(
        &self,
        run: &RunSpec,
        _job: &ProcessJobConfig,
    ) -> Result<Lookup, ProviderError> {
        let prefix = format!("{}-{}-", run.run_id, run.attempt);
        let Ok(entries) = std::fs::read_dir(self.runs_dir()) else {
            return Ok(Lookup::Unknown);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix)) else {
                continue;
            };
            if let Some(pid) = outcome::recorded_pid(&entry.path()) {
                return Ok(Lookup::Found(format!("{ID_PREFIX}{pid}:{name}")));
            }
        }
        Ok(Lookup::Unknown)
    }

    /// Forgets a finished job and removes its private run directory. A job that is still
    /// running stays known, so that it can still be observed and cancelled.
    async fn cleanup(
        &self,
        infrastructure_id: &str,
        _job: &ProcessJobConfig,
    ) -> Result<(), ProviderError> {
        let removed = {
            let mut jobs = self.lock();
            if jobs.get(infrastructure_id).is_some_and(Entry::has_exited) {
                jobs.remove(infrastructure_id)
            } else {
                None
            }
        };
        // A job started before a restart: its directory goes once its outcome is recorded or
        // its process group is gone (cancelled).
        let dir = match removed {
            Some(entry) => Some(entry.run_dir),
            None => self.run_dir_of(infrastructure_id).filter(|dir| {
                outcome::recorded(dir).is_some()
                    || Self::parse_id(infrastructure_id)
                        .is_some_and(|pid| !group_alive(Pid::from_raw(pid)))
            }),
        };
        if let Some(run_dir) = dir {
            if let Err(err) = tokio::fs::remove_dir_all(&run_dir).await {
                tracing::warn!(dir = %run_dir.display(), %err, "could not remove the run directory");
            }
        }
        Ok(())
    }
}
