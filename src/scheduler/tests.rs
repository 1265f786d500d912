//! The plan of one schedule at one tick (pure).

use chrono::{DateTime, Duration, Utc};
use serde_json::Map;
use uuid::Uuid;

use super::*;
use crate::schedule::Catchup;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn schedule(kind: &str, spec: &str, last: Option<&str>, catchup: Catchup) -> Schedule {
    Schedule {
        id: Uuid::now_v7(),
        deployment_id: Uuid::now_v7(),
        kind: kind.into(),
        spec: spec.into(),
        timezone: "UTC".into(),
        anchor: at("2026-01-01T00:00:00Z"),
        active: true,
        parameters: Map::new(),
        job_variables: Map::new(),
        max_active_runs: None,
        catchup,
        last_slot: last.map(at),
        version: 1,
        created: at("2026-01-01T00:00:00Z"),
        updated: at("2026-01-01T00:00:00Z"),
    }
}

#[test]
fn a_new_minutely_schedule_fills_an_hour() {
    let s = schedule("cron", "* * * * *", None, Catchup::All);
    let p = plan(&s, at("2026-06-01T12:00:30Z"), &SchedulerConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!(p.missed, 0);
    assert_eq!(p.slots.len(), 60);
    assert_eq!(p.slots[0], at("2026-06-01T12:01:00Z"));
    assert_eq!(p.last_slot, at("2026-06-01T13:00:00Z"));
}

#[test]
fn a_daily_schedule_keeps_three_runs_and_a_yearly_one_stops_at_100_days() {
    let daily = schedule("cron", "0 9 * * *", None, Catchup::None);
    let p = plan(
        &daily,
        at("2026-06-01T12:00:00Z"),
        &SchedulerConfig::default(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(p.slots.len(), 3);
    // Nothing new until one of them is past.
    let mut again = daily.clone();
    again.last_slot = Some(p.last_slot);
    assert!(plan(
        &again,
        at("2026-06-01T13:00:00Z"),
        &SchedulerConfig::default()
    )
    .unwrap()
    .is_none());
    let yearly = schedule("cron", "0 0 1 1 *", None, Catchup::None);
    let p = plan(
        &yearly,
        at("2026-06-01T12:00:00Z"),
        &SchedulerConfig::default(),
    )
    .unwrap()
    .unwrap();
    assert!(p.slots.is_empty());
    let every_second = schedule("interval", "1", None, Catchup::None);
    let p = plan(
        &every_second,
        at("2026-06-01T12:00:00Z"),
        &SchedulerConfig::default(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(p.slots.len(), 100);
}

#[test]
fn missed_slots_follow_the_catchup_policy() {
    let now = at("2026-06-01T12:10:30Z");
    let config = SchedulerConfig {
        min_runs: 1,
        min_time: Duration::zero(),
        ..SchedulerConfig::default()
    };
    for (policy, missed) in [(Catchup::None, 0), (Catchup::Latest, 1), (Catchup::All, 10)] {
        let s = schedule("cron", "* * * * *", Some("2026-06-01T12:00:00Z"), policy);
        let p = plan(&s, now, &config).unwrap().unwrap();
        assert_eq!(p.missed, missed, "{policy:?}");
        assert!(p.slots[..missed].iter().all(|t| *t < now));
        assert_eq!(p.slots[missed..], [at("2026-06-01T12:11:00Z")]);
        if policy == Catchup::Latest {
            assert_eq!(p.slots[0], at("2026-06-01T12:10:00Z"));
        }
    }
    let bounded = SchedulerConfig {
        catchup_limit: 4,
        ..config
    };
    let s = schedule(
        "cron",
        "* * * * *",
        Some("2026-06-01T12:00:00Z"),
        Catchup::All,
    );
    let p = plan(&s, now, &bounded).unwrap().unwrap();
    assert_eq!(p.missed, 4);
    assert_eq!(p.slots[0], at("2026-06-01T12:07:00Z"));
}
