//! Schedule slots: a pure function from a schedule's spec to the instants its runs are due.
//!
//! Three kinds: `cron` (5 fields or a macro such as `@daily`), `interval` (seconds or an ISO 8601
//! duration, counted from an anchor) and `rrule` (RFC 5545). Cron and RRULE are evaluated on the
//! wall clock of the schedule's IANA time zone and each wall time is then resolved to an instant:
//!
//! - a wall time that occurs twice (the clocks fall back) runs **once, at its first occurrence**;
//! - a wall time that does not exist (the clocks spring forward) runs at **the next valid instant**,
//!   the moment the clocks jump (02:30 on a New York spring-forward day runs at 03:00 EDT); when
//!   that instant is also a slot of its own, it runs once.
//!
//! Interval schedules are exact in UTC: `anchor + k × interval`, whatever the clocks do.
//! Slots come out strictly increasing and never repeat (see the property tests).

mod duration;
mod model;
mod parse;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

pub use duration::parse_interval;
pub use model::{Catchup, Schedule};
pub use parse::{parse_timezone, SpecError};

/// Most occurrences an RRULE is iterated through from its DTSTART (the `rrule` crate always starts
/// there); a rule that needs more to reach the present is refused when it is written
/// ([`Recurrence::check_usable`]) and yields nothing further when it gets there.
pub const RRULE_SCAN_LIMIT: usize = 1_000_000;

/// Occurrences before now an RRULE may have when it is written.
const RRULE_PAST_LIMIT: usize = 100_000;

/// What kind of recurrence a schedule has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Cron expression (5 fields or a macro).
    Cron,
    /// Fixed interval from an anchor.
    Interval,
    /// RFC 5545 recurrence rule.
    Rrule,
}

impl Kind {
    /// The kind's name as stored and shown (`cron`, `interval`, `rrule`); also the field that
    /// carries its spec in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cron => "cron",
            Kind::Interval => "interval",
            Kind::Rrule => "rrule",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "cron" => Some(Kind::Cron),
            "interval" => Some(Kind::Interval),
            "rrule" => Some(Kind::Rrule),
            _ => None,
        }
    }
}

/// One due instant and the wall time it stands for (equal to the instant for intervals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When the run is due (UTC).
    pub at: DateTime<Utc>,
    /// The wall time in the schedule's zone the spec matched.
    pub wall: NaiveDateTime,
}

#[derive(Debug, Clone)]
enum Rule {
    Cron(Box<Cron>),
    Interval(Duration),
    Rrule(Box<rrule::RRuleSet>),
}

/// A checked, ready-to-evaluate schedule spec.
#[derive(Debug, Clone)]
pub struct Recurrence {
    rule: Rule,
    tz: Tz,
    /// Interval: the instant slots count from. RRULE: its wall time is DTSTART unless the spec
    /// gives one.
    anchor: DateTime<Utc>,
}

impl Recurrence {
    /// Checks a spec. `anchor` is where intervals count from and the default RRULE DTSTART
    /// (its wall time in `timezone`). Errors name the field at fault (`cron`, `interval`,
    /// `rrule`, `timezone`).
    pub fn new(
        kind: Kind,
        spec: &str,
        timezone: &str,
        anchor: DateTime<Utc>,
    ) -> Result<Recurrence, SpecError> {
        let tz = parse_timezone(timezone)?;
        let rule = match kind {
            Kind::Cron => Rule::Cron(Box::new(parse::cron(spec)?)),
            Kind::Interval => Rule::Interval(parse_interval(spec)?),
            Kind::Rrule => {
                let wall_anchor = anchor.with_timezone(&tz).naive_local();
                Rule::Rrule(Box::new(parse::rrule(spec, wall_anchor)?))
            }
        };
        Ok(Recurrence { rule, tz, anchor })
    }

    /// Checks what parsing cannot: a cron expression that never matches (such as `0 0 31 2 *`)
    /// and an RRULE whose DTSTART lies so far back that reaching `now` takes more than 100,000
    /// occurrences. Called when a schedule is written, not on every scheduler pass.
    pub fn check_usable(&self, now: DateTime<Utc>) -> Result<(), SpecError> {
        match &self.rule {
            Rule::Cron(_) if self.after(now).next().is_none() => Err(SpecError::new(
                "cron",
                "the expression never matches a date (such as February 31)",
            )),
            Rule::Rrule(set) => {
                let wall_now = self.wall(now);
                let before = (**set)
                    .clone()
                    .into_iter()
                    .take(RRULE_PAST_LIMIT + 1)
                    .take_while(|t| t.naive_utc() < wall_now)
                    .count();
                if before > RRULE_PAST_LIMIT {
                    Err(SpecError::new(
                        "rrule",
                        format!(
                            "more than {RRULE_PAST_LIMIT} occurrences lie between DTSTART and now; \
                             move DTSTART (or the schedule's anchor) closer"
                        ),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The schedule's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Slots strictly after `after`, in order, lazily (an RRULE with an end stops).
    pub fn after(&self, after: DateTime<Utc>) -> Box<dyn Iterator<Item = Slot> + '_> {
        match &self.rule {
            Rule::Interval(step) => {
                let step_us = step.num_microseconds().unwrap_or(i64::MAX).max(1);
                let since = (after - self.anchor).num_microseconds().unwrap_or(0);
                let k = since.div_euclid(step_us) + 1;
                let anchor = self.anchor;
                Box::new((k..).map_while(move |k| {
                    let at = anchor + Duration::microseconds(k.checked_mul(step_us)?);
                    Some(Slot {
                        at,
                        wall: at.naive_utc(),
                    })
                }))
            }
            Rule::Cron(cron) => {
                let start = self.wall(after);
                let walls = cron
                    .iter_from(start.and_utc(), croner::Direction::Forward)
                    .map(|t: DateTime<Utc>| t.naive_utc());
                Box::new(self.resolve_all(walls, after))
            }
            Rule::Rrule(set) => {
                let start = self.wall(after);
                // The set's wall times are written as UTC (see `parse::rrule`); it iterates from
                // its DTSTART.
                let walls = (**set)
                    .clone()
                    .into_iter()
                    .take(RRULE_SCAN_LIMIT)
                    .map(|t| t.naive_utc())
                    .skip_while(move |w| *w < start);
                Box::new(self.resolve_all(walls, after))
            }
        }
    }

    /// Up to `n` slots strictly after `after`.
    pub fn next_n(&self, after: DateTime<Utc>, n: usize) -> Vec<Slot> {
        self.after(after).take(n).collect()
    }

    /// Slots in `(from, to]`, at most `limit` (the earliest ones).
    pub fn between(&self, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Vec<Slot> {
        self.after(from)
            .take_while(|s| s.at <= to)
            .take(limit)
            .collect()
    }

    /// The wall time of an instant in the schedule's zone.
    fn wall(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.tz).naive_local()
    }

    /// Resolves wall times to instants, keeping those after `after`, strictly increasing.
    fn resolve_all<'a>(
        &'a self,
        walls: impl Iterator<Item = NaiveDateTime> + 'a,
        after: DateTime<Utc>,
    ) -> impl Iterator<Item = Slot> + 'a {
        let mut last = after;
        walls.filter_map(move |wall| {
            let at = resolve(&self.tz, wall);
            if at > last {
                last = at;
                Some(Slot { at, wall })
            } else {
                None
            }
        })
    }
}

/// The instant of a wall time in `tz`: the first of two (fall back), or the instant the clocks
/// jump past it (spring forward).
pub fn resolve(tz: &Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The first instant whose wall time is after `wall`, which lies in a gap: a binary search over
/// seconds between a day before (wall time certainly earlier) and `wall` read as UTC plus a day.
fn gap_end(tz: &Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    let base = wall.and_utc().timestamp();
    let mut lo = base - 86_400 - 14 * 3600;
    let mut hi = base + 86_400;
    let local = |s: i64| {
        DateTime::from_timestamp(s, 0)
            .unwrap_or_default()
            .with_timezone(tz)
            .naive_local()
    };
    // Invariant: wall(lo) <= wall < wall(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local(mid) > wall {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).unwrap_or_default()
}
