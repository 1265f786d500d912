//! The execution boundary of process jobs: what a job's process starts with (a clean
//! environment, a private per-run directory) and, on Linux, the Landlock filesystem allow-list a
//! small supervisor applies to itself before it `exec`s the job's `sh -c <command>`.
//!
//! The supervisor is a hidden subcommand of a binary that calls [`supervise`] (the `pushpool`
//! binary: `pushpool __sandbox-exec …`), set with [`configure`]. Landlock only restricts the
//! calling thread and what it `exec`s, so the controller itself is never restricted.
//!
//! What ran is written as the first line of the job's stderr (so it is in the run's logs):
//! `pushpool sandbox: landlock ABI <n> (…)` or `pushpool sandbox: none (…)`.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The argument that makes a supervisor binary run [`supervise`] (hidden subcommand).
pub const SUPERVISOR_ARG: &str = "__sandbox-exec";

/// Prefix of the line the supervisor writes to the job's stderr saying what enforcement ran.
pub const REPORT_PREFIX: &str = "pushpool sandbox:";

/// Exit code of the supervisor when it refuses to run the command (like a shell's 126).
pub const REFUSED_EXIT: i32 = 126;

/// `PATH` of a job whose controller has none and whose `env` sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Directories and files a job may read and execute from (those that exist). Of `/proc` only
/// system-wide files: Landlock does not stop reading `/proc/<pid>/environ` of another process
/// of the same user on every kernel, and the controller's environment holds its credentials.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/sys",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/sys",
];

/// Device files a job may read and write.
pub const DEVICE_PATHS: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// What to do where the kernel cannot enforce the filesystem allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Run the job anyway, with a clean environment and a private directory, and say so in its
    /// logs (`pushpool sandbox: none (…)`).
    #[default]
    BestEffort,
    /// Refuse to run a job that Landlock cannot restrict.
    Required,
}

impl SandboxMode {
    /// The name used by `--process-sandbox` and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::BestEffort => "best-effort",
            SandboxMode::Required => "required",
        }
    }
}

/// How the provider sandboxes jobs; set once per process with [`configure`].
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// The binary whose [`SUPERVISOR_ARG`] subcommand calls [`supervise`]; `None`: no Landlock
    /// (the job's logs say so; refused in [`SandboxMode::Required`]).
    pub supervisor: Option<PathBuf>,
    /// Where per-run directories are made (absolute); `None`: [`default_runs_dir`].
    pub runs_dir: Option<PathBuf>,
    /// Paths no job may be given access to (pushpool's data directory, its store and key
    /// files): an allowed path inside or containing one of them is refused or dropped.
    pub protected: Vec<PathBuf>,
    /// What to do without Landlock.
    pub mode: SandboxMode,
}

static CONFIG: RwLock<Option<Arc<SandboxConfig>>> = RwLock::new(None);

/// Sets how every [`crate::ProcessProvider`] of this process sandboxes its jobs (replacing an
/// earlier setting; jobs already started keep theirs).
pub fn configure(config: SandboxConfig) {
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(config));
}

/// The current setting (defaults until [`configure`] is called).
pub fn current() -> Arc<SandboxConfig> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// The default parent of per-run directories: `<temp dir>/pushpool-runs-<uid>`, outside the
/// data directory.
pub fn default_runs_dir() -> PathBuf {
    std::env::temp_dir().join(format!("pushpool-runs-{}", nix::unistd::getuid()))
}

/// Makes `dir` (mode 0700) or checks an existing one: a real directory (not a symlink) owned by
/// this user that nobody else can enter, since every job's private directory is made in it.
pub fn prepare_runs_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            // A missing parent: make the parents too (still 0700 for the last one).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|_| format!("cannot create the runs directory {}: {e}", dir.display()))?;
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot read the runs directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "the runs directory {} is not a directory (a symlink or a file is there)",
            dir.display()
        ));
    }
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(format!(
            "the runs directory {} belongs to another user (uid {})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    }
    Ok(())
}

/// `path` made absolute (from the current directory) and free of `.`/`..` without touching
/// the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// The form of a path used for comparisons: canonical where it exists, else lexical.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| lexical(path))
}

/// Why giving a job access to `path` would expose a protected path, if it would: `path` is
/// inside one of `protected`, or contains one.
pub fn exposes(path: &Path, protected: &[PathBuf]) -> Option<String> {
    let path = resolved(path);
    for p in protected {
        let p = resolved(p);
        if path.starts_with(&p) {
            return Some(format!(
                "{} is inside {}, which jobs may not reach",
                path.display(),
                p.display()
            ));
        }
        if p.starts_with(&path) {
            return Some(format!(
                "{} contains {}, which jobs may not reach",
                path.display(),
                p.display()
            ));
        }
    }
    None
}

/// What the supervisor is asked to do (its command line, after [`SUPERVISOR_ARG`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupervisorArgs {
    /// Refuse to run without Landlock.
    pub required: bool,
    /// Read and execute access (system directories).
    pub read: Vec<PathBuf>,
    /// Read, write and execute access (the per-run directory, the template's paths).
    pub write: Vec<PathBuf>,
    /// Paths that must stay out of reach.
    pub protected: Vec<PathBuf>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
}

impl SupervisorArgs {
    /// The arguments that [`SupervisorArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![SUPERVISOR_ARG.into()];
        if self.required {
            out.push("--required".into());
        }
        for (flag, paths) in [
            ("--read", &self.read),
            ("--write", &self.write),
            ("--protect", &self.protected),
        ] {
            for p in paths {
                out.push(flag.into());
                out.push(p.clone().into_os_string());
            }
        }
        out.push("--".into());
        out.extend(self.command.iter().cloned());
        out
    }

    /// Parses the arguments after [`SUPERVISOR_ARG`].
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut out = SupervisorArgs::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let list = match arg.to_str() {
                Some("--required") => {
                    out.required = true;
                    continue;
                }
                Some("--") => {
                    out.command = args.collect();
                    break;
                }
                Some("--read") => &mut out.read,
                Some("--write") => &mut out.write,
                Some("--protect") => &mut out.protected,
                _ => return Err(format!("unexpected argument {arg:?}")),
            };
            let value = args.next().ok_or_else(|| format!("{arg:?} needs a path"))?;
            list.push(PathBuf::from(value));
        }
        if out.command.is_empty() {
            return Err("no command after `--`".into());
        }
        Ok(out)
    }
}

/// The supervisor: restricts itself with Landlock, reports what ran on stderr, then `exec`s the
/// command (with the environment and working directory it was started with). Returns only when
/// it could not: the exit code to end with.
pub fn supervise(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match SupervisorArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{REPORT_PREFIX} refused: {e}");
            return REFUSED_EXIT;
        }
    };
    // Paths the template asked for are refused outright when they expose a protected path.
    for p in &args.write {
        if let Some(why) = exposes(p, &args.protected) {
            eprintln!("{REPORT_PREFIX} refused: {why}");
            return REFUSED_EXIT;
        }
    }
    // System directories that would expose one (a data directory under /opt) are left out.
    let mut dropped = vec![];
    let read: Vec<PathBuf> = args
        .read
        .iter()
        .filter(|p| match exposes(p, &args.protected) {
            Some(_) => {
                dropped.push(p.display().to_string());
                false
            }
            None => true,
        })
        .cloned()
        .collect();
    let note = if dropped.is_empty() {
        String::new()
    } else {
        format!(
            "; left out {} (a protected path is there)",
            dropped.join(", ")
        )
    };
    match restrict(&read, &args.write) {
        Ok(report) => eprintln!("{REPORT_PREFIX} {report}{note}"),
        Err(why) if args.required => {
            eprintln!(
                "{REPORT_PREFIX} refused: {why}; this instance requires the sandbox (--process-sandbox required)"
            );
            return REFUSED_EXIT;
        }
        Err(why) => eprintln!(
            "{REPORT_PREFIX} none ({why}); the job runs with the controller user's file access"
        ),
    }
    exec(&args.command)
}

fn exec(command: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    eprintln!("{REPORT_PREFIX} could not start {:?}: {err}", command[0]);
    127
}

/// Applies the allow-list; `Ok` says which enforcement ran, `Err` why none did.
#[cfg(target_os = "linux")]
fn restrict(read: &[PathBuf], write: &[PathBuf]) -> Result<String, String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, LandlockStatus, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    let abi = ABI::V7;
    let fail = |e: landlock::RulesetError| format!("Landlock error: {e}");
    let devices: Vec<&Path> = DEVICE_PATHS.iter().map(Path::new).collect();
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(fail)?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(fail)?
        .create()
        .map_err(fail)?
        .add_rules(path_beneath_rules(read, AccessFs::from_read(abi)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            &devices,
            AccessFs::from_read(abi) | AccessFs::WriteFile,
        ))
        .map_err(fail)?
        .add_rules(path_beneath_rules(write, AccessFs::from_all(abi)))
        .map_err(fail)?
        .restrict_self()
        .map_err(fail)?;
    let version = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        LandlockStatus::NotEnabled => return Err("Landlock is not enabled in this kernel".into()),
        _ => return Err("the kernel lacks Landlock".into()),
    };
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(format!("landlock ABI {version} (fully enforced)")),
        RulesetStatus::PartiallyEnforced => {
            Ok(format!("landlock ABI {version} (partially enforced)"))
        }
        RulesetStatus::NotEnforced => Err("the kernel lacks Landlock".into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn restrict(_read: &[PathBuf], _write: &[PathBuf]) -> Result<String, String> {
    Err("Landlock exists only on Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_args_round_trip() {
        let args = SupervisorArgs {
            required: true,
            read: vec!["/usr".into()],
            write: vec!["/tmp/r".into(), "/w".into()],
            protected: vec!["/data".into()],
            command: vec!["sh".into(), "-c".into(), "echo -- --read".into()],
        };
        let mut raw = args.to_args();
        assert_eq!(raw.remove(0), SUPERVISOR_ARG);
        assert_eq!(SupervisorArgs::parse(raw).unwrap(), args);
        assert!(SupervisorArgs::parse(vec!["--read".into()]).is_err());
        assert!(SupervisorArgs::parse(vec!["--".into()]).is_err());
    }

    #[test]
    fn paths_that_expose_a_protected_path_are_found() {
        let protected = vec![PathBuf::from("/srv/pushpool")];
        assert!(exposes(Path::new("/"), &protected).is_some());
        assert!(exposes(Path::new("/srv"), &protected).is_some());
        assert!(exposes(Path::new("/srv/pushpool/x"), &protected).is_some());
        assert!(exposes(Path::new("/srv/other/../pushpool"), &protected).is_some());
        assert!(exposes(Path::new("/srv/pushpool-runs"), &protected).is_none());
        assert!(exposes(Path::new("/usr"), &protected).is_none());
        // Relative paths are taken from the current directory, not from `/`.
        let here = std::env::current_dir().unwrap();
        assert!(exposes(Path::new("h/runs"), &[here.join("h")]).is_some());
    }
}
