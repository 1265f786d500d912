//! The execution boundary of the instance: which workspaces may run local processes
//! (`--process-pools`, [`ProcessPools`]) and how the `process` provider sandboxes them
//! (`--process-sandbox`, `--runs-dir`, [`ProcessSandbox`]). See docs/security.md, "Execution
//! boundary".

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// The pool type that runs jobs as local processes of the controller's machine.
pub const PROCESS_POOL_TYPE: &str = "process";

/// The store setting naming the workspace `pushpool up` bootstrapped (the admin's home).
pub const BOOTSTRAP_WORKSPACE_SETTING: &str = "bootstrap_workspace_id";

/// The environment variable of `--process-pools`.
pub const PROCESS_POOLS_ENV: &str = "PUSHPOOL_PROCESS_POOLS";

/// Which workspaces may have `process` pools and run their jobs (`--process-pools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProcessPools {
    /// No workspace: `process` pools are refused and their runs end CRASHED.
    Disabled,
    /// Only the bootstrap workspace (`default`, made by the first `pushpool up`): the instance
    /// administrator's home. The default.
    #[default]
    Admin,
    /// Every workspace: any workspace owner can run commands as the controller's user (still
    /// inside the sandbox).
    All,
}

impl ProcessPools {
    /// The value as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessPools::Disabled => "disabled",
            ProcessPools::Admin => "admin",
            ProcessPools::All => "all",
        }
    }
}

/// What the `process` provider's sandbox is set to (`--process-sandbox`, `--runs-dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSandbox {
    /// The binary that runs `__sandbox-exec` (the `pushpool` binary); `None`: no Landlock.
    pub supervisor: Option<PathBuf>,
    /// Parent of the per-run directories; `None`: `<temp dir>/pushpool-runs-<uid>`.
    pub runs_dir: Option<PathBuf>,
    /// Refuse to run a job Landlock cannot restrict.
    pub required: bool,
}

/// The `--process-sandbox` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SandboxLevel {
    /// Landlock where the kernel has it; else run with a clean environment and a private
    /// directory only, and say so in the job's logs.
    #[default]
    BestEffort,
    /// Refuse to run jobs where Landlock is not available.
    Required,
}

/// Applies the sandbox setting to the `process` provider of this process; `protected` are the
/// paths no job may reach (the data directory, the store file). Refuses a runs directory inside
/// (or holding) one of them: every job would get it.
pub fn configure_sandbox(sandbox: &ProcessSandbox, protected: Vec<PathBuf>) -> Result<(), String> {
    #[cfg(feature = "process")]
    {
        use pushpool_process::sandbox;
        // Absolute: it becomes the jobs' HOME and working directory.
        let runs_dir = sandbox
            .runs_dir
            .clone()
            .map(|d| std::path::absolute(&d).unwrap_or(d));
        let checked = runs_dir.clone().unwrap_or_else(sandbox::default_runs_dir);
        if let Some(why) = sandbox::exposes(&checked, &protected) {
            return Err(format!("--runs-dir {}: {why}", checked.display()));
        }
        sandbox::configure(sandbox::SandboxConfig {
            supervisor: sandbox.supervisor.clone(),
            runs_dir,
            protected,
            mode: if sandbox.required {
                sandbox::SandboxMode::Required
            } else {
                sandbox::SandboxMode::BestEffort
            },
        });
    }
    #[cfg(not(feature = "process"))]
    let _ = (sandbox, protected);
    Ok(())
}

/// Decides whether a workspace may use `process` pools, per [`ProcessPools`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ProcessGate {
    mode: ProcessPools,
    bootstrap: Arc<OnceCell<Uuid>>,
}

impl ProcessGate {
    /// A gate enforcing `mode`.
    pub fn new(mode: ProcessPools) -> Self {
        ProcessGate {
            mode,
            bootstrap: Arc::new(OnceCell::new()),
        }
    }

    /// The setting enforced.
    pub fn mode(&self) -> ProcessPools {
        self.mode
    }

    /// Whether workspace `workspace_id` may have `process` pools and run them.
    pub async fn allows(&self, store: &Store, workspace_id: Uuid) -> Result<bool, StoreError> {
        match self.mode {
            ProcessPools::Disabled => Ok(false),
            ProcessPools::All => Ok(true),
            ProcessPools::Admin => {
                let bootstrap = match self.bootstrap.get() {
                    Some(id) => Some(*id),
                    None => match bootstrap_workspace(store).await? {
                        Some(id) => Some(*self.bootstrap.get_or_init(|| async { id }).await),
                        None => None,
                    },
                };
                Ok(bootstrap == Some(workspace_id))
            }
        }
    }

    /// Why a workspace may not use `process` pools: the message of the 403 and of the CRASHED
    /// state, naming the setting.
    pub fn refusal(&self, workspace: Option<&str>) -> String {
        let workspace = match workspace {
            Some(name) => format!("workspace `{name}`"),
            None => "this workspace".into(),
        };
        let allowed = match self.mode {
            ProcessPools::Disabled => "which allows them in no workspace",
            ProcessPools::Admin => {
                "which allows them only in the bootstrap workspace (`default`, the instance administrator's)"
            }
            ProcessPools::All => "which allows them everywhere",
        };
        format!(
            "`process` pools (local processes on the controller's machine) are not allowed in {workspace}: this instance runs with --process-pools {} ({PROCESS_POOLS_ENV}), {allowed}; an operator may change it",
            self.mode.as_str()
        )
    }
}

/// The bootstrap workspace: the one [`BOOTSTRAP_WORKSPACE_SETTING`] names; on a store
/// bootstrapped before that setting existed, the oldest workspace (the first `pushpool up`
/// made it on the empty store), which is then recorded.
pub async fn bootstrap_workspace(store: &Store) -> Result<Option<Uuid>, StoreError> {
    if let Some(id) = store.setting(BOOTSTRAP_WORKSPACE_SETTING).await? {
        return Ok(id.parse().ok());
    }
    let oldest = store
        .list_workspaces()
        .await?
        .into_iter()
        .min_by_key(|w| (w.created, w.id));
    let Some(oldest) = oldest else {
        return Ok(None);
    };
    let id = store
        .setting_or_init(BOOTSTRAP_WORKSPACE_SETTING, || oldest.id.to_string())
        .await?;
    Ok(id.parse().ok())
}
