//! Handing over from a `pushpool up` that died to the next one on the same data directory.
//!
//! Each `pushpool up` records, in `<home>/controller.json`, its controller id (the lease owner of
//! the runs it drives), its host name, the host's boot id and its pid. The next `pushpool up`
//! on the same home reads that record: when the previous controller is provably gone (same host
//! and either another boot, or its pid no longer exists, or its pid is this process's own), the
//! leases it held are ended at once, so its runs are adopted on the next claim-loop tick instead
//! of after the full lease (30 s). A record from another host, or of a process that still lives,
//! changes nothing: those runs wait for their leases as before. See docs/reliability.md.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::server::ServeError;
use crate::store::Store;

/// The file, under the data directory, that records the controller of the last `pushpool up`.
pub const CONTROLLER_FILE: &str = "controller.json";

/// Who drives the runs of a data directory's `pushpool up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalController {
    /// The controller id: the lease owner of its runs.
    pub id: String,
    /// The host name.
    pub host: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), empty where there is none.
    pub boot_id: String,
    /// The process id.
    pub pid: u32,
}

impl LocalController {
    /// This process, under a fresh controller id.
    pub fn this_process() -> Self {
        LocalController {
            id: format!("up-{}", Uuid::now_v7().simple()),
            host: read_trimmed("/proc/sys/kernel/hostname")
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_default(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            pid: std::process::id(),
        }
    }

    /// Whether the controller `self` recorded is provably gone, as seen from `now` (this
    /// process). Unknown is not gone.
    pub fn is_gone(&self, now: &LocalController) -> bool {
        if self.host.is_empty() || self.host != now.host || self.id == now.id {
            return false;
        }
        if !self.boot_id.is_empty() && !now.boot_id.is_empty() && self.boot_id != now.boot_id {
            return true;
        }
        if self.pid == now.pid {
            // Its pid is this process: that process ended (e.g. PID 1 of a restarted container).
            return true;
        }
        // Linux: a pid without a /proc entry does not exist. Elsewhere: unknown, not gone.
        Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Records this process as the controller of `home` and, when the previous one recorded there is
/// provably gone, ends the leases it held so its runs are adopted at once. Returns this process's
/// controller id and how many runs were handed over.
pub async fn take_over(store: &Store, home: &Path) -> Result<(String, u64), ServeError> {
    let now = LocalController::this_process();
    let path = home.join(CONTROLLER_FILE);
    let previous: Option<LocalController> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut handed_over = 0;
    if let Some(previous) = previous {
        if previous.is_gone(&now) {
            handed_over = store.renew_leases(&previous.id, Duration::ZERO).await?;
            tracing::info!(previous = %previous.id, pid = previous.pid, runs = handed_over,
                "the previous controller of this data directory is gone; its runs are adopted now");
        } else if previous.host == now.host {
            tracing::warn!(previous = %previous.id, pid = previous.pid,
                "the previous controller of this data directory may still run; its runs are adopted when their leases run out");
        }
    }
    let io = |context: &str, e| ServeError::Io {
        context: format!("{context} {}", path.display()),
        source: e,
    };
    let tmp = home.join(format!("{CONTROLLER_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(&now).unwrap_or_default();
    std::fs::write(&tmp, body).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming into", e))?;
    Ok((now.id, handed_over))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> LocalController {
        LocalController::this_process()
    }

    #[test]
    fn gone_only_when_provable() {
        let now = me();
        let dead_pid = LocalController {
            id: "up-old".into(),
            pid: 999_999_999,
            ..now.clone()
        };
        assert!(dead_pid.is_gone(&now));
        let alive = LocalController {
            id: "up-old".into(),
            pid: 1,
            ..now.clone()
        };
        assert!(!alive.is_gone(&now), "pid 1 lives");
        let same_pid = LocalController {
            id: "up-old".into(),
            ..now.clone()
        };
        assert!(same_pid.is_gone(&now), "its pid is ours");
        let other_host = LocalController {
            host: format!("{}-elsewhere", now.host),
            ..dead_pid.clone()
        };
        assert!(!other_host.is_gone(&now));
        let rebooted = LocalController {
            boot_id: "another-boot".into(),
            ..alive.clone()
        };
        assert_eq!(rebooted.is_gone(&now), !now.boot_id.is_empty());
        assert!(!now.is_gone(&now), "itself");
    }
}
