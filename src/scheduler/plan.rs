//! What one schedule needs now: missed slots (by its catch-up policy) and the window ahead.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

use super::SchedulerConfig;
use crate::schedule::{Catchup, Schedule, SpecError};

/// Slots more than this many would be scanned to find the latest missed one are given up on.
const MISSED_SCAN_LIMIT: usize = 1_000_000;

/// The slots to create for a schedule at one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Slot instants, increasing: the missed ones the policy keeps, then the window's new ones.
    pub slots: Vec<DateTime<Utc>>,
    /// How many of `slots` are missed (before now).
    pub missed: usize,
    /// The schedule's new `last_slot`.
    pub last_slot: DateTime<Utc>,
}

/// The plan for `schedule` at `now` (pure). `None` when there is nothing to do. The window: every
/// slot from now on while fewer than `min_runs` are planned or the slot is within `min_time`,
/// never more than `max_runs` slots nor past `max_time`. Slots up to `last_slot` already have
/// their runs. Missed slots lie between `last_slot` and now; a new schedule has none.
pub fn plan(
    schedule: &Schedule,
    now: DateTime<Utc>,
    config: &SchedulerConfig,
) -> Result<Option<Plan>, SpecError> {
    let rec = schedule.recurrence()?;
    let before_now = now - Duration::microseconds(1);
    let last = schedule.last_slot;
    let mut slots = vec![];
    if let Some(last) = last.filter(|l| *l < before_now) {
        let keep = match schedule.catchup {
            Catchup::None => 0,
            Catchup::Latest => 1,
            Catchup::All => config.catchup_limit,
        };
        if keep > 0 {
            let mut ring: VecDeque<DateTime<Utc>> = VecDeque::with_capacity(keep);
            for slot in rec
                .after(last)
                .take_while(|s| s.at < now)
                .take(MISSED_SCAN_LIMIT)
            {
                if ring.len() == keep {
                    ring.pop_front();
                }
                ring.push_back(slot.at);
            }
            slots.extend(ring);
        }
    }
    let missed = slots.len();
    // The window, counting the runs it already has.
    let horizon_min = now + config.min_time;
    let horizon_max = now + config.max_time;
    let mut window_end = None;
    for (count, slot) in rec.after(before_now).enumerate() {
        if count >= config.max_runs
            || slot.at > horizon_max
            || (count >= config.min_runs && slot.at > horizon_min)
        {
            break;
        }
        window_end = Some(slot.at);
        if last.is_none_or(|l| slot.at > l) {
            slots.push(slot.at);
        }
    }
    let new_last = window_end
        .unwrap_or(before_now)
        .max(last.unwrap_or(before_now));
    if slots.is_empty() && last == Some(new_last) {
        return Ok(None);
    }
    Ok(Some(Plan {
        slots,
        missed,
        last_slot: new_last,
    }))
}
