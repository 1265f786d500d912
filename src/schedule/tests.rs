//! Slot generation: DST cases by name, and property tests over random specs and zones.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use proptest::prelude::*;

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn anchor() -> DateTime<Utc> {
    utc("2026-01-01T00:00:00Z")
}

fn slots(kind: Kind, spec: &str, tz: &str, from: &str, to: &str) -> Vec<String> {
    let r = Recurrence::new(kind, spec, tz, anchor()).unwrap();
    r.between(utc(from), utc(to), 1000)
        .iter()
        .map(|s| s.at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect()
}

#[test]
fn new_york_spring_forward_runs_a_missing_time_at_the_jump() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not exist that day.
    let got = slots(
        Kind::Cron,
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T00:00:00Z",
        "2026-03-10T00:00:00Z",
    );
    assert_eq!(
        got,
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    let rrule = slots(
        Kind::Rrule,
        "FREQ=DAILY;BYHOUR=2;BYMINUTE=30;BYSECOND=0",
        "America/New_York",
        "2026-03-07T00:00:00Z",
        "2026-03-10T00:00:00Z",
    );
    assert_eq!(rrule, got);
}

#[test]
fn new_york_spring_forward_hourly_runs_the_jump_once() {
    let got = slots(
        Kind::Cron,
        "0 * * * *",
        "America/New_York",
        "2026-03-08T05:30:00Z",
        "2026-03-08T08:00:00Z",
    );
    assert_eq!(
        got,
        [
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T08:00:00Z"
        ]
    );
}

#[test]
fn new_york_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() {
    // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    let got = slots(
        Kind::Cron,
        "30 1 * * *",
        "America/New_York",
        "2026-10-31T00:00:00Z",
        "2026-11-03T00:00:00Z",
    );
    assert_eq!(
        got,
        [
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z"
        ]
    );
    let half_hourly = slots(
        Kind::Cron,
        "*/30 * * * *",
        "America/New_York",
        "2026-11-01T04:00:00Z",
        "2026-11-01T08:00:00Z",
    );
    assert_eq!(
        half_hourly,
        [
            "2026-11-01T04:30:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-01T08:00:00Z"
        ]
    );
    let rrule = slots(
        Kind::Rrule,
        "RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=30;BYSECOND=0",
        "America/New_York",
        "2026-10-31T00:00:00Z",
        "2026-11-03T00:00:00Z",
    );
    assert_eq!(rrule, got);
}

#[test]
fn new_york_interval_stays_exact_in_utc() {
    let got = slots(
        Kind::Interval,
        "PT1H",
        "America/New_York",
        "2026-11-01T04:30:00Z",
        "2026-11-01T08:00:00Z",
    );
    assert_eq!(
        got,
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T08:00:00Z"
        ]
    );
}

#[test]
fn london_spring_forward_and_fall_back() {
    // 2026-03-29: 01:00 GMT becomes 02:00 BST. 2026-10-25: 02:00 BST becomes 01:00 GMT.
    let spring = slots(
        Kind::Cron,
        "30 1 * * *",
        "Europe/London",
        "2026-03-28T00:00:00Z",
        "2026-03-31T00:00:00Z",
    );
    assert_eq!(
        spring,
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    let fall = slots(
        Kind::Cron,
        "30 1 * * *",
        "Europe/London",
        "2026-10-24T00:00:00Z",
        "2026-10-27T00:00:00Z",
    );
    assert_eq!(
        fall,
        [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z"
        ]
    );
    let interval = slots(
        Kind::Interval,
        "1800",
        "Europe/London",
        "2026-10-25T00:00:00Z",
        "2026-10-25T02:00:00Z",
    );
    assert_eq!(
        interval,
        [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:00:00Z"
        ]
    );
}

#[test]
fn sydney_fall_back_and_spring_forward() {
    // 2026-04-05: 03:00 AEDT becomes 02:00 AEST (02:30 twice). 2026-10-04: 02:00 AEST becomes
    // 03:00 AEDT (02:30 missing).
    let fall = slots(
        Kind::Cron,
        "30 2 * * *",
        "Australia/Sydney",
        "2026-04-03T00:00:00Z",
        "2026-04-06T00:00:00Z",
    );
    assert_eq!(
        fall,
        [
            "2026-04-03T15:30:00Z",
            "2026-04-04T15:30:00Z",
            "2026-04-05T16:30:00Z"
        ]
    );
    let spring = slots(
        Kind::Cron,
        "30 2 * * *",
        "Australia/Sydney",
        "2026-10-02T00:00:00Z",
        "2026-10-05T00:00:00Z",
    );
    assert_eq!(
        spring,
        [
            "2026-10-02T16:30:00Z",
            "2026-10-03T16:00:00Z",
            "2026-10-04T15:30:00Z"
        ]
    );
    let rrule = slots(
        Kind::Rrule,
        "DTSTART:20260101T023000\nRRULE:FREQ=DAILY",
        "Australia/Sydney",
        "2026-10-02T00:00:00Z",
        "2026-10-05T00:00:00Z",
    );
    assert_eq!(rrule, spring);
}

#[test]
fn macros_and_named_days_parse() {
    let daily = slots(
        Kind::Cron,
        "@daily",
        "Europe/Berlin",
        "2026-06-01T00:00:00Z",
        "2026-06-03T00:00:00Z",
    );
    assert_eq!(daily, ["2026-06-01T22:00:00Z", "2026-06-02T22:00:00Z"]);
    let monday = slots(
        Kind::Cron,
        "0 9 * * MON",
        "Europe/Berlin",
        "2026-06-01T00:00:00Z",
        "2026-06-16T00:00:00Z",
    );
    assert_eq!(
        monday,
        [
            "2026-06-01T07:00:00Z",
            "2026-06-08T07:00:00Z",
            "2026-06-15T07:00:00Z"
        ]
    );
}

#[test]
fn bad_specs_name_their_field() {
    let err = |k, s, tz| Recurrence::new(k, s, tz, anchor()).unwrap_err();
    assert_eq!(err(Kind::Cron, "* * * *", "UTC").field, "cron");
    assert_eq!(err(Kind::Cron, "61 * * * *", "UTC").field, "cron");
    assert_eq!(err(Kind::Cron, "0 0 * * * *", "UTC").field, "cron");
    assert_eq!(err(Kind::Interval, "P1M", "UTC").field, "interval");
    assert_eq!(err(Kind::Interval, "0", "UTC").field, "interval");
    assert_eq!(err(Kind::Interval, "PT", "UTC").field, "interval");
    assert_eq!(err(Kind::Rrule, "FREQ=SOMETIMES", "UTC").field, "rrule");
    assert_eq!(
        err(
            Kind::Rrule,
            "DTSTART;TZID=UTC:20260101T000000\nRRULE:FREQ=DAILY",
            "UTC"
        )
        .field,
        "rrule"
    );
    assert_eq!(err(Kind::Cron, "@daily", "Mars/Olympus").field, "timezone");
    assert_eq!(parse_interval("P1DT12H").unwrap(), Duration::hours(36));
    assert_eq!(parse_interval("P2W").unwrap(), Duration::days(14));
    assert_eq!(parse_interval("90").unwrap(), Duration::seconds(90));
}

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Europe/Berlin",
    "Pacific/Chatham",
];

fn cron_field(max: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (2..=max.min(30)).prop_map(|k| format!("*/{k}")),
        (0..max).prop_map(|n| n.to_string()),
        (0..max, 0..max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
    ]
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (1_577_836_800i64..1_893_456_000i64).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap())
}

fn check_increasing(slots: &[Slot], after: DateTime<Utc>) -> Result<(), TestCaseError> {
    let mut last = after;
    for s in slots {
        prop_assert!(s.at > last, "{} not after {}", s.at, last);
        last = s.at;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn cron_slots_increase_and_match(
        minute in cron_field(60), hour in cron_field(24), dow in prop_oneof![Just("*".to_string()), (0u32..7).prop_map(|d| d.to_string())],
        zone in proptest::sample::select(ZONES), after in instant(),
    ) {
        let spec = format!("{minute} {hour} * * {dow}");
        let r = Recurrence::new(Kind::Cron, &spec, zone, anchor()).unwrap();
        let got = r.next_n(after, 40);
        prop_assert!(!got.is_empty());
        check_increasing(&got, after)?;
        let cron = parse::cron(&spec).unwrap();
        for s in &got {
            prop_assert!(cron.is_time_matching(&s.wall.and_utc()).unwrap(), "{} does not match {}", s.wall, spec);
            prop_assert_eq!(s.at, resolve(&r.timezone(), s.wall));
        }
    }

    #[test]
    fn interval_slots_are_exact_steps_from_the_anchor(
        step in 1i64..200_000, anchor_at in instant(), after in instant(), zone in proptest::sample::select(ZONES),
    ) {
        let r = Recurrence::new(Kind::Interval, &step.to_string(), zone, anchor_at).unwrap();
        let got = r.next_n(after, 40);
        prop_assert_eq!(got.len(), 40);
        check_increasing(&got, after)?;
        prop_assert!(got[0].at - Duration::seconds(step) <= after);
        for s in &got {
            prop_assert_eq!((s.at - anchor_at).num_seconds().rem_euclid(step), 0);
        }
    }

    #[test]
    fn rrule_slots_increase_and_match(
        freq in 0usize..3, hour in 0u32..24, minute in 0u32..60, day in 0usize..7,
        zone in proptest::sample::select(ZONES), after in instant(),
    ) {
        let days = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
        let spec = match freq {
            0 => format!("FREQ=HOURLY;BYMINUTE={minute};BYSECOND=0"),
            1 => format!("FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute};BYSECOND=0"),
            _ => format!("FREQ=WEEKLY;BYDAY={};BYHOUR={hour};BYMINUTE={minute};BYSECOND=0", days[day]),
        };
        // DTSTART a little before `after`, so the set need not iterate for years.
        let start = after - Duration::days(8);
        let r = Recurrence::new(Kind::Rrule, &spec, zone, start).unwrap();
        let got = r.next_n(after, 30);
        prop_assert_eq!(got.len(), 30);
        check_increasing(&got, after)?;
        for s in &got {
            prop_assert_eq!(s.wall.minute(), minute);
            prop_assert_eq!(s.wall.second(), 0);
            if freq >= 1 { prop_assert_eq!(s.wall.hour(), hour); }
            if freq == 2 { prop_assert_eq!(s.wall.weekday().num_days_from_monday() as usize, day); }
            prop_assert_eq!(s.at, resolve(&r.timezone(), s.wall));
        }
    }
}

#[test]
fn gap_end_is_the_jump_instant() {
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let wall = NaiveDate::from_ymd_opt(2026, 3, 8)
        .unwrap()
        .and_hms_opt(2, 15, 0)
        .unwrap();
    assert_eq!(resolve(&tz, wall), utc("2026-03-08T07:00:00Z"));
}

#[test]
fn a_cron_that_never_matches_ends_quickly() {
    let started = std::time::Instant::now();
    let r = Recurrence::new(Kind::Cron, "0 0 31 2 *", "UTC", anchor()).unwrap();
    assert!(r.next_n(anchor(), 1).is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(r.check_usable(anchor()).unwrap_err().field, "cron");
    let old = Recurrence::new(
        Kind::Rrule,
        "DTSTART:20000101T000000\nRRULE:FREQ=MINUTELY",
        "UTC",
        anchor(),
    )
    .unwrap();
    assert_eq!(old.check_usable(anchor()).unwrap_err().field, "rrule");
    let recent = Recurrence::new(Kind::Rrule, "FREQ=MINUTELY", "UTC", anchor()).unwrap();
    recent.check_usable(anchor() + Duration::days(30)).unwrap();
}
