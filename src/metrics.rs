//! Prometheus metrics, rendered in the text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram with fixed buckets (seconds).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The controller's and API's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time of one claim query.
    pub claim_latency: Histogram,
    /// Time of one provider submit call (including retries).
    pub submit_latency: Histogram,
    /// Runs submitted.
    pub submitted: AtomicU64,
    /// API requests refused for lack of credentials or permission.
    pub denied_requests: AtomicU64,
    provider_errors: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    /// Counts a provider error by pool type and class.
    pub fn provider_error(&self, pool_type: &str, class: &str) {
        let mut m = self
            .provider_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry((pool_type.to_string(), class.to_string()))
            .or_default() += 1;
    }

    /// Renders everything, plus the given runs-by-state gauge values.
    pub fn render(&self, runs_by_state: &[(String, i64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP pushpool_flow_runs Flow runs by state type.\n# TYPE pushpool_flow_runs gauge"
        );
        for (state, n) in runs_by_state {
            let _ = writeln!(out, "pushpool_flow_runs{{state=\"{state}\"}} {n}");
        }
        self.claim_latency.render(
            "pushpool_claim_duration_seconds",
            "Duration of one claim of due runs.",
            &mut out,
        );
        self.submit_latency.render(
            "pushpool_submit_duration_seconds",
            "Duration of one provider submission, retries included.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP pushpool_runs_submitted_total Runs submitted to a provider.\n# TYPE pushpool_runs_submitted_total counter\npushpool_runs_submitted_total {}",
            self.submitted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP pushpool_api_denied_requests_total API requests refused (401, 403, or another workspace's 404).\n# TYPE pushpool_api_denied_requests_total counter\npushpool_api_denied_requests_total {}",
            self.denied_requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP pushpool_provider_errors_total Provider errors by class.\n# TYPE pushpool_provider_errors_total counter");
        for ((pool_type, class), n) in self
            .provider_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "pushpool_provider_errors_total{{pool_type=\"{pool_type}\",class=\"{class}\"}} {n}"
            );
        }
        out
    }
}
