use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::automations::facts::{EventFacts, RelatedFacts};
use crate::automations::trigger::{Group, Trigger};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn ev(n: u32, name: &str, run: &str, deployment: &str, at: DateTime<Utc>) -> EventFacts {
    EventFacts {
        id: format!("e{n}"),
        seq: n as i64,
        workspace_id: Uuid::nil(),
        occurred: at,
        event: format!("pushpool.flow-run.{name}"),
        resource_id: format!("pushpool.flow-run.{run}"),
        labels: BTreeMap::new(),
        related: vec![
            RelatedFacts {
                id: format!("pushpool.deployment.{deployment}-id"),
                role: "deployment".into(),
                labels: [("pushpool.resource.name".to_string(), deployment.to_string())].into(),
            },
            RelatedFacts {
                id: "pushpool.tag.prod".into(),
                role: "tag".into(),
                labels: BTreeMap::new(),
            },
        ],
        payload: json!({}),
    }
}

fn trigger(v: serde_json::Value) -> EventTrigger {
    serde_json::from_value::<Trigger>(v)
        .unwrap()
        .compile()
        .unwrap()
}

/// Feeds events through the state machine per group, as the engine does; the firings.
fn feed(t: &EventTrigger, events: &[EventFacts]) -> (Vec<Fire>, BTreeMap<String, GroupState>) {
    let mut groups: BTreeMap<String, GroupState> = BTreeMap::new();
    let mut fires = vec![];
    for e in events {
        let rel = t.relevance(e);
        if !rel.any() {
            continue;
        }
        let Some(key) = t.group_key(e) else { continue };
        let step = on_event(t, groups.remove(&key), e, rel);
        if let Some(s) = step.state {
            groups.insert(key, s);
        }
        fires.extend(step.fire);
    }
    (fires, groups)
}

fn tick(
    t: &EventTrigger,
    groups: &mut BTreeMap<String, GroupState>,
    at: DateTime<Utc>,
) -> Vec<Fire> {
    let mut fires = vec![];
    for (key, s) in std::mem::take(groups) {
        let step = on_time(t, &key, s, to_micros(at));
        if let Some(s) = step.state {
            groups.insert(key, s);
        }
        fires.extend(step.fire);
    }
    fires
}

#[test]
fn three_failures_in_the_window_fire_once_two_do_not() {
    let t = trigger(json!({
        "type": "event", "expect": ["pushpool.flow-run.Failed"],
        "for_each": "deployment", "threshold": 3, "within": 3600
    }));
    let m = Duration::minutes(1);
    let two = [
        ev(1, "Failed", "r1", "a", t0()),
        ev(2, "Failed", "r2", "a", t0() + m * 10),
    ];
    let (fires, groups) = feed(&t, &two);
    assert!(fires.is_empty());
    assert_eq!(groups["pushpool.deployment.a-id"].times.len(), 2);

    let three = [
        ev(1, "Failed", "r1", "a", t0()),
        ev(2, "Failed", "r2", "a", t0() + m * 10),
        ev(3, "Completed", "r3", "a", t0() + m * 15),
        ev(4, "Failed", "r4", "b", t0() + m * 16),
        ev(5, "Failed", "r5", "a", t0() + m * 20),
    ];
    let (fires, groups) = feed(&t, &three);
    assert_eq!(
        fires,
        vec![Fire {
            occurrence: "event:e5".into(),
            event_id: Some("e5".into()),
            count: 3,
            event: Some(three[4].to_json()),
        }]
    );
    // Deployment a's count starts over; b's one failure is still counted.
    assert!(!groups.contains_key("pushpool.deployment.a-id"));
    assert_eq!(groups["pushpool.deployment.b-id"].times.len(), 1);
}

#[test]
fn the_window_slides_failures_further_apart_do_not_fire() {
    let t = trigger(json!({
        "type": "event", "expect": ["pushpool.flow-run.Failed"],
        "threshold": 3, "within": 3600
    }));
    let m = Duration::minutes(1);
    // 0, 50, 70, 80 minutes: 50/70/80 are within one hour of each other.
    let events = [
        ev(1, "Failed", "r1", "a", t0()),
        ev(2, "Failed", "r2", "a", t0() + m * 50),
        ev(3, "Failed", "r3", "a", t0() + m * 70),
        ev(4, "Failed", "r4", "a", t0() + m * 130),
    ];
    let (fires, _) = feed(&t, &events[..3]);
    assert!(fires.is_empty(), "{fires:?}");
    let (fires, _) = feed(
        &t,
        &[
            events[1].clone(),
            events[2].clone(),
            ev(5, "Failed", "r", "a", t0() + m * 80),
        ],
    );
    assert_eq!(fires.len(), 1);
    // An old group state is dropped once its newest event leaves the window.
    let (_, mut groups) = feed(&t, &events[..1]);
    assert_eq!(due_at(&t, &groups[""]), Some(to_micros(t0() + m * 60)));
    assert!(tick(&t, &mut groups, t0() + m * 61).is_empty());
    assert!(groups.is_empty());
}

#[test]
fn filters_on_related_resources_labels_and_resource_ids() {
    let t = trigger(json!({
        "type": "run-state", "states": ["failed", "Crashed"], "deployments": ["a"], "tags": ["prod"]
    }));
    assert_eq!(t.for_each, Some(Group::Resource));
    let (fires, _) = feed(
        &t,
        &[
            ev(1, "Failed", "r1", "a", t0()),
            ev(2, "Crashed", "r2", "a", t0()),
            ev(3, "Failed", "r3", "b", t0()),
            ev(4, "Completed", "r4", "a", t0()),
        ],
    );
    let ids: Vec<_> = fires.iter().map(|f| f.event_id.clone().unwrap()).collect();
    assert_eq!(ids, vec!["e1", "e2"]);

    // By deployment id, by its uuid tail, by a prefix; a tag that is not there.
    for (value, fires_on_a) in [
        ("pushpool.deployment.a-id", true),
        ("a-id", true),
        ("a*", true),
        ("b", false),
    ] {
        let t = trigger(json!({"type": "event", "expect": ["pushpool.flow-run.*"],
            "related": {"deployment": [value]}}));
        assert_eq!(
            t.relevance(&ev(1, "Failed", "r1", "a", t0())).expect,
            fires_on_a,
            "{value}"
        );
    }
    let t = trigger(json!({"type": "event", "expect": ["*"], "related": {"tag": ["dev"]}}));
    assert!(!t.relevance(&ev(1, "Failed", "r1", "a", t0())).any());
    let t =
        trigger(json!({"type": "event", "expect": ["*"], "resource": ["pushpool.flow-run.r1"]}));
    assert!(t.relevance(&ev(1, "Failed", "r1", "a", t0())).any());
    assert!(!t.relevance(&ev(1, "Failed", "r2", "a", t0())).any());
    let mut labelled = ev(1, "Failed", "r1", "a", t0());
    labelled.labels.insert("team".into(), "data-eng".into());
    let t = trigger(json!({"type": "event", "expect": ["*"], "labels": {"team": ["data-*"]}}));
    assert!(t.relevance(&labelled).any());
    assert!(!t.relevance(&ev(1, "Failed", "r1", "a", t0())).any());
}

fn stuck_running() -> EventTrigger {
    trigger(json!({
        "type": "event", "posture": "proactive",
        "after": ["pushpool.flow-run.Running"],
        "expect": ["pushpool.flow-run.Completed", "pushpool.flow-run.Failed",
                   "pushpool.flow-run.Crashed", "pushpool.flow-run.Cancelled"],
        "for_each": "resource", "within": 1800
    }))
}

#[test]
fn a_run_left_running_past_the_window_fires_one_that_completes_in_time_does_not() {
    let t = stuck_running();
    let m = Duration::minutes(1);
    let (fires, mut groups) = feed(
        &t,
        &[
            ev(1, "Running", "slow", "a", t0()),
            ev(2, "Running", "quick", "a", t0() + m),
            ev(3, "Completed", "quick", "a", t0() + m * 20),
        ],
    );
    assert!(fires.is_empty());
    assert_eq!(groups.len(), 1, "the quick run's window closed: {groups:?}");
    // Not yet at 29 minutes; at 30 the slow run fires, once.
    assert!(tick(&t, &mut groups, t0() + m * 29).is_empty());
    let fires = tick(&t, &mut groups, t0() + m * 30);
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].event_id.as_deref(), Some("e1"));
    assert!(fires[0].occurrence.contains("pushpool.flow-run.slow"));
    assert!(groups.is_empty());
    assert!(tick(&t, &mut groups, t0() + m * 90).is_empty());
}

#[test]
fn a_second_running_event_keeps_the_first_window() {
    let t = stuck_running();
    let m = Duration::minutes(1);
    let (_, mut groups) = feed(
        &t,
        &[
            ev(1, "Running", "r", "a", t0()),
            ev(2, "Running", "r", "a", t0() + m * 10),
        ],
    );
    assert_eq!(tick(&t, &mut groups, t0() + m * 30).len(), 1);
}

#[test]
fn no_completed_run_of_a_deployment_in_a_day_fires_once_per_silent_window() {
    let t = trigger(json!({
        "type": "event", "posture": "proactive",
        "expect": ["pushpool.flow-run.Completed"], "related": {"deployment": ["nightly"]},
        "within": 86400
    }));
    let h = Duration::hours(1);
    let mut groups: BTreeMap<String, GroupState> = BTreeMap::new();
    groups.insert("".into(), on_enable(&t, to_micros(t0())).unwrap());
    // A completion after 10 h restarts the day.
    let e = ev(1, "Completed", "r1", "nightly", t0() + h * 10);
    let step = on_event(&t, groups.remove(""), &e, t.relevance(&e));
    groups.insert("".into(), step.state.unwrap());
    assert!(tick(&t, &mut groups, t0() + h * 30).is_empty());
    let fires = tick(&t, &mut groups, t0() + h * 34);
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].event_id, None);
    // The next silent day fires again, with another occurrence.
    assert!(tick(&t, &mut groups, t0() + h * 57).is_empty());
    let again = tick(&t, &mut groups, t0() + h * 58);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].occurrence, fires[0].occurrence);
    // A long silence fires once, not once per missed day.
    assert_eq!(tick(&t, &mut groups, t0() + h * 24 * 10).len(), 1);
    assert_eq!(tick(&t, &mut groups, t0() + h * 24 * 10).len(), 0);
}

#[test]
fn triggers_that_break_a_rule_name_the_field() {
    for (body, field) in [
        (json!({"type": "event"}), "trigger.expect"),
        (
            json!({"type": "event", "expect": ["a*b"]}),
            "trigger.expect[0]",
        ),
        (
            json!({"type": "event", "expect": ["x"], "threshold": 0}),
            "trigger.threshold",
        ),
        (
            json!({"type": "event", "expect": ["x"], "threshold": 3}),
            "trigger.within",
        ),
        (
            json!({"type": "event", "expect": ["x"], "posture": "proactive"}),
            "trigger.within",
        ),
        (
            json!({"type": "event", "expect": ["x"], "after": ["y"]}),
            "trigger.after",
        ),
        (
            json!({"type": "event", "expect": ["x"], "related": {"flow": ["y"]}}),
            "trigger.related.flow",
        ),
        (
            json!({"type": "event", "expect": ["x"], "within": 99999999}),
            "trigger.within",
        ),
        (json!({"type": "run-state", "states": []}), "trigger.states"),
        (
            json!({"type": "run-state", "states": ["Failed", "Exploded"]}),
            "trigger.states[1]",
        ),
    ] {
        let t: Trigger = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(t.compile().unwrap_err().field, field, "{body}");
    }
}

#[test]
fn group_state_round_trips_through_json_compactly() {
    let s = GroupState {
        times: vec![1, 2],
        ..GroupState::default()
    };
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(text, r#"{"times":[1,2]}"#);
    assert_eq!(serde_json::from_str::<GroupState>(&text).unwrap(), s);
}
