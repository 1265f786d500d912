//! Per-pool submission smoothing.

use std::time::{Duration, Instant};

/// Slowest `submit_rate` (submissions per second): the API refuses less, and a bucket clamps a
/// rate stored before that check up to it.
pub const MIN_RATE: f64 = 0.001;
/// Fastest `submit_rate` (submissions per second): the API refuses more, a bucket clamps to it.
pub const MAX_RATE: f64 = 10_000.0;

/// A token bucket smoothing one pool's submissions: `rate` per second, bursts up to `rate` (at least 1).
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket. A rate outside `MIN_RATE..=MAX_RATE` (or not a number) is clamped into it,
    /// so the wait below is always a finite, representable duration (never a panic).
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_nan() {
            MIN_RATE
        } else {
            rate.clamp(MIN_RATE, MAX_RATE)
        };
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for one token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                state.0 = (state.0 + (now - state.1).as_secs_f64() * self.rate).min(self.burst);
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                (1.0 - state.0) / self.rate
            };
            // At most 1 / MIN_RATE seconds; `try_` keeps even a surprise from panicking.
            let wait = Duration::try_from_secs_f64(wait)
                .unwrap_or(Duration::from_secs_f64(1.0 / MIN_RATE));
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 19 item 7): `submit_rate: 1e-300` panicked in `Duration::from_secs_f64`.
    #[tokio::test]
    async fn extreme_rates_never_panic() {
        for rate in [1e-300, 1e300, f64::NAN, 0.0, -1.0, f64::INFINITY] {
            let bucket = TokenBucket::new(rate);
            bucket.acquire().await; // the full bucket's first token
                                    // The next may have to wait (long, for a tiny rate): it must wait, not panic.
            let _ = tokio::time::timeout(Duration::from_millis(20), bucket.acquire()).await;
        }
    }
}
