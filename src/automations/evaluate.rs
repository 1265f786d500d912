//! The trigger state machine, pure: the state of one group of one automation
//! ([`GroupState`]), how an event moves it ([`on_event`]), how time moves it ([`on_time`]), and
//! when it fires ([`Fire`]). The engine stores the state between events (so firing survives a
//! restart) and makes each [`Fire::occurrence`] fire at most once.

use serde::{Deserialize, Serialize};

use super::facts::EventFacts;
use super::trigger::{EventTrigger, Posture, Relevance};
use crate::model::{to_micros, Micros};

/// The kept state of one group (one `for_each` value) of one automation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Reactive: when the matching events still inside the window happened (µs), oldest first;
    /// fewer than the threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<Micros>,
    /// Proactive: when the open window ends (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Micros>,
    /// Proactive: what opened the window (an event id, or `enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<String>,
    /// Proactive: expected events seen in the open window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seen: u32,
    /// Proactive: the event that opened the window ([`EventFacts::to_json`]), for the actions'
    /// templates when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A firing: the trigger's condition held once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Names this occurrence of the condition; the engine fires each at most once per
    /// automation.
    pub occurrence: String,
    /// The event that completed the condition (reactive) or opened the window (proactive
    /// with `after`).
    pub event_id: Option<String>,
    /// Reactive: the events counted; proactive: the expected events seen in the window.
    pub count: u32,
    /// The event of `event_id` ([`EventFacts::to_json`]), if any.
    pub event: Option<serde_json::Value>,
}

/// The outcome of a step: the new state (`None`: nothing kept) and maybe a firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The state to keep.
    pub state: Option<GroupState>,
    /// The firing, if the condition held.
    pub fire: Option<Fire>,
}

fn window(t: &EventTrigger) -> Micros {
    i64::try_from(t.within)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000)
}

/// The state a proactive trigger without `after` and without `for_each` starts in when its
/// automation is enabled at `now`: a window ending `within` later. `None` for other triggers
/// (their groups open on events).
pub fn on_enable(t: &EventTrigger, now: Micros) -> Option<GroupState> {
    (t.posture == Posture::Proactive && t.after.is_empty() && t.for_each.is_none()).then(|| {
        GroupState {
            deadline: Some(now.saturating_add(window(t))),
            opened_by: Some("enabled".into()),
            ..GroupState::default()
        }
    })
}

/// Moves a group's state by one event of that group. `rel` is [`EventTrigger::relevance`].
pub fn on_event(
    t: &EventTrigger,
    state: Option<GroupState>,
    ev: &EventFacts,
    rel: Relevance,
) -> Step {
    let at = to_micros(ev.occurred);
    match t.posture {
        Posture::Reactive => {
            if !rel.expect {
                return Step { state, fire: None };
            }
            let mut s = state.unwrap_or_default();
            let oldest = at.saturating_sub(window(t));
            s.times.retain(|&x| x >= oldest);
            s.times.push(at);
            if s.times.len() >= t.threshold as usize {
                let count = s.times.len() as u32;
                Step {
                    state: None,
                    fire: Some(Fire {
                        occurrence: format!("event:{}", ev.id),
                        event_id: Some(ev.id.clone()),
                        count,
                        event: Some(ev.to_json()),
                    }),
                }
            } else {
                Step {
                    state: (t.within > 0).then_some(s),
                    fire: None,
                }
            }
        }
        Posture::Proactive => {
            let mut state = state;
            if rel.expect {
                match state.as_mut() {
                    Some(s) => {
                        s.seen += 1;
                        if s.seen >= t.threshold {
                            // Satisfied: the window closes; without `after` the next one opens
                            // at this event.
                            state = rearm(t, ev);
                        }
                    }
                    None => state = rearm(t, ev),
                }
            }
            if rel.after && state.is_none() {
                state = Some(GroupState {
                    deadline: Some(at.saturating_add(window(t))),
                    opened_by: Some(ev.id.clone()),
                    event: Some(ev.to_json()),
                    ..GroupState::default()
                });
            }
            Step { state, fire: None }
        }
    }
}

/// Without `after`, each expected event opens the next window; with `after`, only an opening
/// event does.
fn rearm(t: &EventTrigger, ev: &EventFacts) -> Option<GroupState> {
    t.after.is_empty().then(|| GroupState {
        deadline: Some(to_micros(ev.occurred).saturating_add(window(t))),
        opened_by: Some(ev.id.clone()),
        event: Some(ev.to_json()),
        ..GroupState::default()
    })
}

/// Moves a group's state to `horizon`, the time up to which every event has been seen: a
/// proactive window that ended by then without enough expected events fires (and, without
/// `after`, the next window opens); a reactive group drops events older than its window.
pub fn on_time(t: &EventTrigger, key: &str, state: GroupState, horizon: Micros) -> Step {
    match t.posture {
        Posture::Reactive => {
            let mut s = state;
            let oldest = horizon.saturating_sub(window(t));
            s.times.retain(|&x| x >= oldest);
            Step {
                state: (!s.times.is_empty()).then_some(s),
                fire: None,
            }
        }
        Posture::Proactive => {
            let Some(deadline) = state.deadline else {
                return Step {
                    state: None,
                    fire: None,
                };
            };
            if deadline > horizon {
                return Step {
                    state: Some(state),
                    fire: None,
                };
            }
            let opened_by = state.opened_by.clone().unwrap_or_default();
            let fire = Fire {
                occurrence: format!("window:{key}:{opened_by}:{deadline}"),
                event_id: (!t.after.is_empty()).then_some(opened_by.clone()),
                count: state.seen,
                event: state.event.clone(),
            };
            let next = t.after.is_empty().then(|| {
                // The next window follows this one, or starts now if the engine was away for
                // longer than a window (one firing for the whole silence).
                let mut next_deadline = deadline.saturating_add(window(t));
                if next_deadline <= horizon {
                    next_deadline = horizon.saturating_add(window(t));
                }
                GroupState {
                    deadline: Some(next_deadline),
                    opened_by: Some(format!("window:{deadline}")),
                    event: state.event.clone(),
                    ..GroupState::default()
                }
            });
            Step {
                state: next,
                fire: Some(fire),
            }
        }
    }
}

/// When `state` next needs [`on_time`]: a proactive window's end, or when a reactive group's
/// newest event leaves the window (then the state can go).
pub fn due_at(t: &EventTrigger, state: &GroupState) -> Option<Micros> {
    match t.posture {
        Posture::Proactive => state.deadline,
        Posture::Reactive => state.times.last().map(|x| x.saturating_add(window(t))),
    }
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
