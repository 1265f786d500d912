//! Outcomes that survive a controller restart.
//!
//! Every job runs under a small supervisor: a POSIX shell (`sh -c WRAPPER`) that is the job's
//! process group leader, runs the job's own `sh -c <command>` as its child, and when the job
//! ends writes the job's exit status to [`EXIT_FILE`] in the job's private run directory
//! (written to a temporary name, then renamed: a reader never sees half a file). It runs inside
//! the same sandbox as the job (after `__sandbox-exec` restricted itself) and only writes into the
//! run directory the job may write anyway, so it widens nothing.
//!
//! The infrastructure id names the run directory (`process:<pid>:<dir name>`), so a provider that
//! did not start the job (a restarted controller) finds the recorded status there, and reports
//! the job RUNNING while its process lives and no status is recorded yet.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use pushpool_provider::JobStatus;

/// Name of the file, in the run directory, that holds the job's exit status (decimal, as the
/// shell reports it: `128 + n` for a job killed by signal `n`).
pub const EXIT_FILE: &str = ".pushpool-exit-status";

/// Name of the file, in the run directory, where the supervisor writes its pid (the job's
/// process group) before it starts the job: what `lookup` finds after a controller died between
/// starting the job and recording its id.
pub const PID_FILE: &str = ".pushpool-pid";

/// The supervisor script. `$1` is the job's command, `$2` the exit-status file, `$3` the pid
/// file. A job killed by
/// a terminating signal is re-raised on the supervisor so the controller that started it sees
/// the same signal as before.
pub(crate) const WRAPPER: &str = r#"printf '%s\n' "$$" > "$3"
sh -c "$1"
s=$?
printf '%s\n' "$s" > "$2.tmp" && mv -f "$2.tmp" "$2"
case $s in
  129|130|131|134|137|141|142|143) kill -$((s - 128)) $$ ;;
esac
exit $s"#;

/// `$0` of the supervisor shell (shown by `ps`).
pub(crate) const WRAPPER_NAME: &str = "pushpool-job-supervise";

/// The arguments of `sh` that run `command` under the supervisor, recording into `run_dir`.
pub(crate) fn wrapped(command: &str, run_dir: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "sh".into(),
        "-c".into(),
        WRAPPER.into(),
        WRAPPER_NAME.into(),
        command.into(),
        run_dir.join(EXIT_FILE).into_os_string(),
        run_dir.join(PID_FILE).into_os_string(),
    ]
}

/// The run directory's name in an infrastructure id `process:<pid>:<dir name>`, if it has a
/// well-formed one (a single path component).
pub(crate) fn dir_name(infrastructure_id: &str) -> Option<&str> {
    let rest = infrastructure_id.strip_prefix(crate::ID_PREFIX)?;
    let (_, name) = rest.split_once(':')?;
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    ok.then_some(name)
}

/// The status recorded in `run_dir`, if the supervisor wrote one.
pub(crate) fn recorded(run_dir: &Path) -> Option<JobStatus> {
    let text = std::fs::read_to_string(exit_file(run_dir)).ok()?;
    let code: i32 = text.trim().parse().ok()?;
    Some(status_of_code(code))
}

/// The supervisor's pid recorded in `run_dir`, if it wrote it.
pub(crate) fn recorded_pid(run_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(run_dir.join(PID_FILE)).ok()?;
    text.trim().parse().ok().filter(|pid| *pid > 1)
}

/// Where the supervisor records the exit status of the job of `run_dir`.
pub(crate) fn exit_file(run_dir: &Path) -> PathBuf {
    run_dir.join(EXIT_FILE)
}

/// The final status for an exit status as the shell reports it: the codes of the terminating
/// signals the supervisor re-raises (HUP, INT, QUIT, ABRT, KILL, PIPE, ALRM, TERM) are CRASHED
/// by that signal, other non-zero codes FAILED.
pub fn status_of_code(code: i32) -> JobStatus {
    match code {
        0 => JobStatus::Completed { summary: None },
        129 | 130 | 131 | 134 | 137 | 141 | 142 | 143 => {
            let sig = code - 128;
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.to_string());
            JobStatus::Crashed {
                message: format!("killed by signal {name}"),
            }
        }
        _ => JobStatus::Failed {
            message: format!("exit code {code}"),
        },
    }
}
