//! The generative escalation test (issue 19's acceptance list, item 1), on SQLite and PostgreSQL.
//!
//! proptest draws short sequences (at most 12 steps) of key, role, member, service-account and
//! rotation calls; each step is made through the real HTTP API with a key the model picks
//! (one of the keys made at setup or one minted during the sequence) against the key's own
//! workspace or the other one. Two workspaces per case: `A` (owner, developer, runner, viewer,
//! a custom `keyadmin` role with `keys:self`/`keys:read`/`keys:write`, a service account, an
//! owner key capped at `runner` and expiring, an expiring viewer key) and `B` (the instance
//! administrator `admin` as a member, another owner, the developer of `A` as an owner, the
//! `keyadmin` user).
//!
//! After every step the test reads the store (as the operator would) and checks:
//!
//! - **nothing exceeds its giver**: every live key was handed out by a 2xx answer the model saw,
//!   acts in the workspace its creator's key acts in, expires no later than its creator's key
//!   did, and holds no scope (its principal's role ∩ its cap) that neither its creator (at
//!   creation) nor whoever later changed its principal's role held;
//! - **administrators**: no key of the administrator exists that somebody else made, and no key
//!   of the sequence reaches the administrator routes (`/api/users`, `/api/audit_log`,
//!   `POST /api/workspaces`);
//! - **no lockout by a non-owner**: whenever an owner's key stops working or loses scopes
//!   (revoked, rotated out, the owner demoted or removed), the caller was that owner itself or
//!   a full owner (its key holds every scope); each workspace keeps an owner.
//!
//! `PROPTEST_CASES` sets the number of cases (default 48), `PROPTEST_RNG_SEED` fixes the seed,
//! `PUSHPOOL_ESCALATION_TRACE=1` prints every case's transcript (with `--no-capture`). A failure
//! is shrunk by proptest and its message is the transcript of the minimal sequence.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{Duration as ChronoDuration, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pushpool::access::{builtin_scopes, Scope, Scopes};
use pushpool::store::Store;
use pushpool_testkit::{both_backends, call_json, serve_fresh, Served, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

both_backends!(random_sequences_never_escalate);

fn cases() -> u32 {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default().cases
    } else {
        48
    }
}

/// Users made once per store; memberships are per case (fresh workspaces).
const USERS: [&str; 7] = ["own1", "dev", "run", "view", "kadm", "own2", "admin"];
/// Roles a step may grant or cap with: the built-ins, the setup's custom role, and two names a
/// step may create.
const ROLES: [&str; 8] = [
    "owner",
    "developer",
    "runner",
    "viewer",
    "controller",
    "keyadmin",
    "c0",
    "c1",
];
/// Scopes a created custom role picks from (a bit mask over these).
const ROLE_SCOPES: [&str; 6] = [
    "keys:self",
    "keys:write",
    "keys:read",
    "members:write",
    "members:read",
    "runs:read",
];
/// Key lifetimes a step may ask for (hours); setup keys that expire do so in 2 hours.
const EXPIRIES_H: [i64; 3] = [1, 3, 24 * 40];

#[derive(Debug, Clone)]
enum Who {
    Own,
    User(usize),
    Sa(usize),
}

#[derive(Debug, Clone)]
enum Act {
    Mint {
        who: Who,
        role: Option<usize>,
        expires: Option<usize>,
    },
    Rotate {
        key: usize,
        grace: Option<i64>,
    },
    Revoke {
        key: usize,
    },
    AddMember {
        user: usize,
        role: usize,
    },
    PatchMember {
        user: usize,
        role: usize,
    },
    RemoveMember {
        user: usize,
    },
    CreateSa {
        role: usize,
    },
    PatchSa {
        sa: usize,
        role: usize,
    },
    DeleteSa {
        sa: usize,
    },
    CreateRole {
        scopes: u8,
    },
}

impl Act {
    fn kind(&self) -> &'static str {
        match self {
            Act::Mint { .. } => "mint",
            Act::Rotate { .. } => "rotate",
            Act::Revoke { .. } => "revoke",
            Act::AddMember { .. } => "add member",
            Act::PatchMember { .. } => "patch member",
            Act::RemoveMember { .. } => "remove member",
            Act::CreateSa { .. } => "create service account",
            Act::PatchSa { .. } => "patch service account",
            Act::DeleteSa { .. } => "delete service account",
            Act::CreateRole { .. } => "create role",
        }
    }
}

/// One step: the caller's key (an index into the model's keys), whether it calls the other
/// workspace, and what it does.
#[derive(Debug, Clone)]
struct Step {
    by: usize,
    other_ws: bool,
    act: Act,
}

fn arb_who() -> impl Strategy<Value = Who> {
    prop_oneof![
        1 => Just(Who::Own),
        3 => (0..USERS.len()).prop_map(Who::User),
        1 => (0usize..4).prop_map(Who::Sa),
    ]
}

fn arb_act() -> impl Strategy<Value = Act> {
    let role = 0..ROLES.len();
    prop_oneof![
        5 => (
            arb_who(),
            prop::option::weighted(0.4, role.clone()),
            prop::option::weighted(0.4, 0..EXPIRIES_H.len()),
        )
            .prop_map(|(who, role, expires)| Act::Mint { who, role, expires }),
        3 => (0usize..32, prop::option::of(prop_oneof![Just(0i64), Just(60)]))
            .prop_map(|(key, grace)| Act::Rotate { key, grace }),
        2 => (0usize..32).prop_map(|key| Act::Revoke { key }),
        1 => (0..USERS.len(), role.clone()).prop_map(|(user, role)| Act::AddMember { user, role }),
        2 => (0..USERS.len(), role.clone())
            .prop_map(|(user, role)| Act::PatchMember { user, role }),
        1 => (0..USERS.len()).prop_map(|user| Act::RemoveMember { user }),
        2 => role.clone().prop_map(|role| Act::CreateSa { role }),
        1 => (0usize..4, role).prop_map(|(sa, role)| Act::PatchSa { sa, role }),
        1 => (0usize..4).prop_map(|sa| Act::DeleteSa { sa }),
        1 => (1u8..64).prop_map(|scopes| Act::CreateRole { scopes }),
    ]
}

/// The caller: often one of the setup keys that may hand something out (owners, the developer
/// who owns `B`, the `keyadmin` users, the administrator in `B`: indices in the order
/// `Case::setup` makes them), else any key.
fn arb_caller() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![0usize, 5, 7, 8, 9, 11]),
        0usize..32,
    ]
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (arb_caller(), prop::bool::weighted(0.15), arb_act())
            .prop_map(|(by, other_ws, act)| Step { by, other_ws, act }),
        1..=12,
    )
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A key the model knows, with what its creator held when it was handed out.
#[derive(Debug, Clone)]
struct KeyM {
    id: Uuid,
    secret: String,
    ws: usize,
    principal: Uuid,
    label: String,
    /// Scopes its creator held at creation, plus those of whoever later changed its
    /// principal's role.
    bound: Scopes,
    /// Its creator's key expiry at creation (microseconds; `None` = never).
    bound_expires: Option<i64>,
    /// Who made it (`None`: the test's setup, trusted).
    creator: Option<Uuid>,
}

/// A key as the store has it now.
#[derive(Debug, Clone)]
struct KeySnap {
    ws: usize,
    principal: Uuid,
    active: bool,
    /// Its principal's role ∩ its cap (empty when the principal is no member).
    eff: Scopes,
    expires: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct Snap {
    keys: HashMap<Uuid, KeySnap>,
    /// (workspace, principal) → role, members and service accounts.
    roles: HashMap<(usize, Uuid), String>,
}

impl Snap {
    fn owners(&self, ws: usize) -> Vec<Uuid> {
        self.roles
            .iter()
            .filter(|((w, _), r)| *w == ws && r.as_str() == "owner")
            .map(|((_, p), _)| *p)
            .collect()
    }
}

struct World {
    served: Served,
    admin: Uuid,
    users: HashMap<String, Uuid>,
    case: AtomicUsize,
    /// Per kind of step: (answered 2xx, refused), shown at the end.
    stats: Mutex<BTreeMap<&'static str, (usize, usize)>>,
}

/// One case's state.
struct Case<'a> {
    world: &'a World,
    ws: [String; 2],
    ws_ids: [Uuid; 2],
    keys: Vec<KeyM>,
    /// Service accounts: (workspace, id, name).
    sas: Vec<(usize, Uuid, String)>,
    names: HashMap<Uuid, String>,
    transcript: Vec<String>,
    made: usize,
    /// An owner itself left its workspace without a working owner key.
    owners_gave_up: [bool; 2],
}

fn all_scopes() -> Scopes {
    Scope::ALL.into_iter().collect()
}

fn micros(t: chrono::DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl World {
    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        call_json(
            &self.served.client,
            method,
            &format!("{}/api{path}", self.served.base),
            key,
            body,
        )
        .await
    }

    async fn ok(&self, method: &str, path: &str, key: &str, body: Value) -> Value {
        let (s, b) = self.call(method, path, key, Some(body)).await;
        assert!((200..300).contains(&s), "setup {method} {path}: {s} {b}");
        b
    }

    fn store(&self) -> &Store {
        &self.served.store
    }
}

fn ws_label(i: usize) -> &'static str {
    ["A", "B"][i]
}

impl Case<'_> {
    async fn setup(world: &World) -> Case<'_> {
        let n = world.case.fetch_add(1, Ordering::SeqCst);
        let admin_key = world.served.admin_key.clone();
        let mut case = Case {
            world,
            ws: [format!("m{n}a"), format!("m{n}b")],
            ws_ids: [Uuid::nil(); 2],
            keys: vec![],
            sas: vec![],
            names: world.users.iter().map(|(n, id)| (*id, n.clone())).collect(),
            transcript: vec![],
            made: 0,
            owners_gave_up: [false; 2],
        };
        let mut ws_keys = vec![];
        for i in 0..2 {
            let created = world
                .ok(
                    "POST",
                    "/workspaces",
                    &admin_key,
                    json!({"name": case.ws[i]}),
                )
                .await;
            case.ws_ids[i] = Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
            let key = created["api_key"]["key"].as_str().unwrap().to_string();
            let ws = &case.ws[i];
            world
                .ok(
                    "POST",
                    &format!("/workspaces/{ws}/roles"),
                    &key,
                    json!({"name": "keyadmin", "scopes": ["keys:self", "keys:read", "keys:write"]}),
                )
                .await;
            ws_keys.push((key, created["api_key"].clone()));
        }
        let members: [&[(&str, &str)]; 2] = [
            &[
                ("own1", "owner"),
                ("dev", "developer"),
                ("run", "runner"),
                ("view", "viewer"),
                ("kadm", "keyadmin"),
            ],
            &[("own2", "owner"), ("dev", "owner"), ("kadm", "keyadmin")],
        ];
        let later = Utc::now() + ChronoDuration::hours(2);
        for (i, list) in members.iter().enumerate() {
            let ws = case.ws[i].clone();
            let key = ws_keys[i].0.clone();
            for (user, role) in *list {
                world
                    .ok(
                        "POST",
                        &format!("/workspaces/{ws}/members"),
                        &key,
                        json!({"user": user, "role": role}),
                    )
                    .await;
            }
            let mut mints: Vec<(String, Value)> = list
                .iter()
                .map(|(u, _)| (format!("{u}@{}", ws_label(i)), json!({"user": u})))
                .collect();
            if i == 0 {
                mints.insert(
                    1,
                    (
                        "own1@A[cap runner, expiring]".into(),
                        json!({"user": "own1", "role": "runner", "expires_at": later}),
                    ),
                );
                mints.push((
                    "view@A[expiring]".into(),
                    json!({"user": "view", "expires_at": later}),
                ));
            }
            for (label, mut body) in mints {
                body["name"] = json!(label);
                let b = world
                    .ok("POST", &format!("/workspaces/{ws}/api_keys"), &key, body)
                    .await;
                case.push_key(i, &b, label, all_scopes(), None, None);
            }
        }
        // A: the administrator leaves (removed by the owner); a service account.
        let own1 = case.keys[0].secret.clone();
        let a = case.ws[0].clone();
        world
            .ok(
                "DELETE",
                &format!("/workspaces/{a}/members/admin"),
                &own1,
                json!(null),
            )
            .await;
        let sa = world
            .ok(
                "POST",
                &format!("/workspaces/{a}/service_accounts"),
                &own1,
                json!({"name": "sa-setup", "role": "runner"}),
            )
            .await;
        let sa_id = Uuid::parse_str(sa["id"].as_str().unwrap()).unwrap();
        case.sas.push((0, sa_id, "sa-setup".into()));
        case.names.insert(sa_id, "sa-setup".into());
        case.push_key(
            0,
            &sa["api_key"],
            "sa-setup@A".into(),
            all_scopes(),
            None,
            None,
        );
        // B: the administrator stays an owner, with the key the workspace was created with.
        case.push_key(1, &ws_keys[1].1, "admin@B".into(), all_scopes(), None, None);
        case
    }

    fn push_key(
        &mut self,
        ws: usize,
        answer: &Value,
        label: String,
        bound: Scopes,
        bound_expires: Option<i64>,
        creator: Option<Uuid>,
    ) -> usize {
        let principal = Uuid::parse_str(answer["principal_id"].as_str().unwrap()).unwrap();
        self.keys.push(KeyM {
            id: Uuid::parse_str(answer["id"].as_str().unwrap()).unwrap(),
            secret: answer["key"].as_str().unwrap().to_string(),
            ws,
            principal,
            label,
            bound,
            bound_expires,
            creator,
        });
        self.keys.len() - 1
    }

    fn name(&self, p: Uuid) -> String {
        self.names.get(&p).cloned().unwrap_or_else(|| p.to_string())
    }

    /// Every key of both workspaces with what it holds now, and every role.
    async fn snapshot(&self) -> Snap {
        let store = self.world.store();
        let now = Utc::now();
        let mut snap = Snap::default();
        for (i, ws_id) in self.ws_ids.iter().enumerate() {
            let mut custom: HashMap<String, Scopes> = HashMap::new();
            for r in store.list_roles(*ws_id).await.unwrap() {
                let scopes = r.scopes.iter().filter_map(|s| s.parse().ok()).collect();
                custom.insert(r.name, scopes);
            }
            let scopes_of = |role: &str| {
                builtin_scopes(role)
                    .or_else(|| custom.get(role).cloned())
                    .unwrap_or_default()
            };
            for m in store.list_members(*ws_id).await.unwrap() {
                snap.roles.insert((i, m.user_id), m.role);
            }
            for sa in store.list_service_accounts(*ws_id).await.unwrap() {
                snap.roles.insert((i, sa.id), sa.role);
            }
            for k in store.list_api_keys(*ws_id, None).await.unwrap() {
                let mut eff = snap
                    .roles
                    .get(&(i, k.principal_id))
                    .map(|r| scopes_of(r))
                    .unwrap_or_default();
                if let Some(cap) = &k.role {
                    let cap = scopes_of(cap);
                    eff.retain(|s| cap.contains(s));
                }
                snap.keys.insert(
                    k.id,
                    KeySnap {
                        ws: i,
                        principal: k.principal_id,
                        active: k.status(now) == "active",
                        eff,
                        expires: k.expires.map(micros),
                    },
                );
            }
        }
        snap
    }

    /// Makes the step's call; returns the status, the answer and a line for the transcript.
    async fn perform(&mut self, step: &Step) -> (usize, usize, u16, Value) {
        let by = step.by % self.keys.len();
        let caller = self.keys[by].clone();
        let ws = if step.other_ws {
            1 - caller.ws
        } else {
            caller.ws
        };
        let base = format!("/workspaces/{}", self.ws[ws]);
        self.made += 1;
        let n = self.made;
        let user = |u: usize| USERS[u % USERS.len()];
        // Keys and service accounts of the workspace called (another one's would be a 404).
        let here: Vec<Uuid> = self
            .keys
            .iter()
            .filter(|k| k.ws == ws)
            .map(|k| k.id)
            .collect();
        let key_id = |k: usize| here[k % here.len()];
        let sas_here: Vec<Uuid> = self.sas.iter().filter(|s| s.0 == ws).map(|s| s.1).collect();
        let sa = |s: usize| {
            if sas_here.is_empty() {
                Uuid::nil()
            } else {
                sas_here[s % sas_here.len()]
            }
        };
        let (method, path, body): (&str, String, Option<Value>) = match &step.act {
            Act::Mint { who, role, expires } => {
                let mut body = json!({"name": format!("k{n}")});
                match who {
                    Who::Own => {}
                    Who::User(u) => body["user"] = json!(user(*u)),
                    Who::Sa(s) => body["service_account_id"] = json!(sa(*s)),
                }
                if let Some(r) = role {
                    body["role"] = json!(ROLES[*r]);
                }
                if let Some(e) = expires {
                    body["expires_at"] = json!(Utc::now() + ChronoDuration::hours(EXPIRIES_H[*e]));
                }
                ("POST", format!("{base}/api_keys"), Some(body))
            }
            Act::Rotate { key, grace } => {
                let id = key_id(*key);
                let body = grace.map(|g| json!({"grace_seconds": g}));
                ("POST", format!("{base}/api_keys/{id}/rotate"), body)
            }
            Act::Revoke { key } => {
                let id = key_id(*key);
                ("DELETE", format!("{base}/api_keys/{id}"), None)
            }
            Act::AddMember { user: u, role } => (
                "POST",
                format!("{base}/members"),
                Some(json!({"user": user(*u), "role": ROLES[*role]})),
            ),
            Act::PatchMember { user: u, role } => (
                "PATCH",
                format!("{base}/members/{}", user(*u)),
                Some(json!({"role": ROLES[*role]})),
            ),
            Act::RemoveMember { user: u } => {
                ("DELETE", format!("{base}/members/{}", user(*u)), None)
            }
            Act::CreateSa { role } => (
                "POST",
                format!("{base}/service_accounts"),
                Some(json!({"name": format!("sa{n}"), "role": ROLES[*role]})),
            ),
            Act::PatchSa { sa: s, role } => (
                "PATCH",
                format!("{base}/service_accounts/{}", sa(*s)),
                Some(json!({"role": ROLES[*role]})),
            ),
            Act::DeleteSa { sa: s } => (
                "DELETE",
                format!("{base}/service_accounts/{}", sa(*s)),
                None,
            ),
            Act::CreateRole { scopes } => {
                let names: Vec<&str> = ROLE_SCOPES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| scopes & (1 << i) != 0)
                    .map(|(_, s)| *s)
                    .collect();
                let name = format!("c{}", n % 2);
                (
                    "POST",
                    format!("{base}/roles"),
                    Some(json!({"name": name, "scopes": names})),
                )
            }
        };
        let (status, answer) = self
            .world
            .call(method, &path, &caller.secret, body.clone())
            .await;
        let shown_path = self.readable(&path.replacen(
            &format!("/workspaces/{}", self.ws[ws]),
            &format!("/workspaces/{}", ws_label(ws)),
            1,
        ));
        let shown_body = body
            .map(|b| format!(" {}", self.readable(&b.to_string())))
            .unwrap_or_default();
        let why = if status >= 400 {
            format!(
                " ({})",
                answer["detail"]
                    .as_str()
                    .or(answer["message"].as_str())
                    .unwrap_or("")
            )
        } else {
            String::new()
        };
        let counts = &mut self.world.stats.lock().unwrap();
        let count = counts.entry(step.act.kind()).or_default();
        if (200..300).contains(&status) {
            count.0 += 1;
        } else {
            count.1 += 1;
        }
        self.transcript.push(format!(
            "{n}. with {} : {method} {shown_path}{shown_body} → {status}{why}",
            caller.label
        ));
        (by, ws, status, answer)
    }

    /// `text` with key and service-account ids replaced by their labels.
    fn readable(&self, text: &str) -> String {
        let mut out = text.to_string();
        for k in &self.keys {
            out = out.replace(&k.id.to_string(), &format!("<{}>", k.label));
        }
        for (_, id, name) in &self.sas {
            out = out.replace(&id.to_string(), &format!("<{name}>"));
        }
        out
    }

    /// Updates the model with a successful answer.
    fn learn(
        &mut self,
        step: &Step,
        by: usize,
        ws: usize,
        caller: &KeySnap,
        answer: &Value,
    ) -> Vec<usize> {
        let creator = Some(self.keys[by].principal);
        let bound = caller.eff.clone();
        let exp = caller.expires;
        let by_label = self.keys[by].label.clone();
        let mut new = vec![];
        match &step.act {
            Act::Mint { .. } => {
                let p = answer["principal"]["name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let label = format!(
                    "key {} of {p}@{} made by {by_label}",
                    answer["name"].as_str().unwrap_or("?"),
                    ws_label(ws)
                );
                new.push(self.push_key(ws, answer, label, bound, exp, creator));
            }
            Act::Rotate { .. } => {
                let a = &answer["api_key"];
                let p = a["principal"]["name"].as_str().unwrap_or("?").to_string();
                let label = format!("rotated key of {p}@{} made by {by_label}", ws_label(ws));
                new.push(self.push_key(ws, a, label, bound, exp, creator));
            }
            Act::CreateSa { .. } => {
                let id = Uuid::parse_str(answer["id"].as_str().unwrap()).unwrap();
                let name = answer["name"].as_str().unwrap().to_string();
                self.sas.push((ws, id, name.clone()));
                self.names.insert(id, name.clone());
                let label = format!("first key of {name}@{} made by {by_label}", ws_label(ws));
                new.push(self.push_key(ws, &answer["api_key"], label, bound, exp, creator));
            }
            Act::AddMember { .. } | Act::PatchMember { .. } | Act::PatchSa { .. } => {
                // Whoever changes a principal's role vouches for what its keys now hold.
                let p = if let Act::PatchSa { .. } = step.act {
                    Uuid::parse_str(answer["id"].as_str().unwrap()).unwrap()
                } else {
                    Uuid::parse_str(answer["user_id"].as_str().unwrap()).unwrap()
                };
                for k in self
                    .keys
                    .iter_mut()
                    .filter(|k| k.principal == p && k.ws == ws)
                {
                    k.bound.extend(bound.iter().copied());
                }
            }
            _ => {}
        }
        new
    }

    async fn run(&mut self, steps: &[Step]) -> Result<(), String> {
        let mut before = self.snapshot().await;
        // The administrator's key of B (and every other setup key) is no administrator key.
        let setup: Vec<usize> = (0..self.keys.len()).collect();
        self.probe_admin_routes(&setup).await?;
        for step in steps {
            let (by, ws, status, answer) = self.perform(step).await;
            if status >= 500 {
                return Err(format!("a {status}: {answer}"));
            }
            let caller_key = self.keys[by].clone();
            let caller = before.keys.get(&caller_key.id).cloned();
            let mut new = vec![];
            if (200..300).contains(&status) {
                let Some(caller) = caller.clone().filter(|c| c.active && !c.eff.is_empty()) else {
                    return Err("a key that does not work was answered 2xx".into());
                };
                if caller.ws != ws {
                    return Err("a key acted in another workspace".into());
                }
                if let Act::CreateRole { .. } = step.act {
                    let scopes: Scopes =
                        serde_json::from_value::<Vec<String>>(answer["scopes"].clone())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|s| s.parse().ok())
                            .collect();
                    if !scopes.is_subset(&caller.eff) {
                        return Err(format!(
                            "role {scopes:?} exceeds its creator's {:?}",
                            caller.eff
                        ));
                    }
                }
                new = self.learn(step, by, ws, &caller, &answer);
            }
            let after = self.snapshot().await;
            self.check(&before, &after, caller_key.principal, caller.as_ref(), ws)?;
            // Each workspace keeps an owner with a working uncapped key, unless an owner gave
            // it up itself (revoking or rotating out its own keys is its right).
            for w in 0..2 {
                let working = after.keys.values().any(|k| {
                    k.ws == w
                        && k.active
                        && k.eff == all_scopes()
                        && after.owners(w).contains(&k.principal)
                });
                if !working && !self.owners_gave_up[w] {
                    if before
                        .roles
                        .get(&(w, caller_key.principal))
                        .map(String::as_str)
                        == Some("owner")
                    {
                        self.owners_gave_up[w] = true;
                    } else {
                        return Err(format!(
                            "LOCKOUT: workspace {} has no owner with a working key",
                            ws_label(w)
                        ));
                    }
                }
            }
            self.probe_admin_routes(&new).await?;
            before = after;
        }
        Ok(())
    }

    /// No key in `which` reaches the administrator routes.
    async fn probe_admin_routes(&self, which: &[usize]) -> Result<(), String> {
        for i in which {
            let k = &self.keys[*i];
            for (method, path, body) in [
                ("GET", "/users", None),
                ("GET", "/audit_log", None),
                ("POST", "/workspaces", Some(json!({"name": ""}))),
            ] {
                let (s, b) = self.world.call(method, path, &k.secret, body).await;
                if s != 403 && s != 401 {
                    return Err(format!(
                        "ITEM 3: `{}` reached the administrator route {method} /api{path}: {s} {:.120}",
                        k.label, b.to_string()
                    ));
                }
            }
        }
        Ok(())
    }

    fn check(
        &self,
        before: &Snap,
        after: &Snap,
        caller_principal: Uuid,
        caller: Option<&KeySnap>,
        call_ws: usize,
    ) -> Result<(), String> {
        let model: HashMap<Uuid, &KeyM> = self.keys.iter().map(|k| (k.id, k)).collect();
        for (id, k) in &after.keys {
            if !k.active {
                continue;
            }
            let Some(m) = model.get(id) else {
                return Err(format!(
                    "key {id} exists without an answer that handed it out"
                ));
            };
            if k.ws != m.ws {
                return Err(format!(
                    "`{}` acts in another workspace than its creator",
                    m.label
                ));
            }
            if !k.eff.is_subset(&m.bound) {
                let extra: Vec<&str> = k.eff.difference(&m.bound).map(|s| s.as_str()).collect();
                return Err(format!(
                    "ITEM 1/2: `{}` holds {extra:?}, which its creator did not hold",
                    m.label
                ));
            }
            if let Some(b) = m.bound_expires {
                if k.expires.is_none_or(|e| e > b) {
                    return Err(format!(
                        "ITEM 1: `{}` outlives the key it was made with ({:?} > {b})",
                        m.label, k.expires
                    ));
                }
            }
            if k.principal == self.world.admin && m.creator.is_some_and(|c| c != self.world.admin) {
                return Err(format!(
                    "ITEM 3: `{}` is an administrator's key that {} made",
                    m.label,
                    self.name(m.creator.unwrap_or_default())
                ));
            }
        }
        // Owners: what they held stays theirs unless they or a full owner took it.
        let full_owner = caller.is_some_and(|c| c.active && c.eff == all_scopes());
        for ws in 0..2 {
            if after.owners(ws).is_empty() {
                return Err(format!("workspace {} has no owner", ws_label(ws)));
            }
            for owner in before.owners(ws) {
                if owner == caller_principal || (full_owner && ws == call_ws) {
                    continue;
                }
                let demoted = after.roles.get(&(ws, owner)).map(String::as_str) != Some("owner");
                let lost = before.keys.iter().find(|(id, k)| {
                    k.ws == ws
                        && k.principal == owner
                        && k.active
                        && after
                            .keys
                            .get(id)
                            .is_none_or(|a| !a.active || !k.eff.is_subset(&a.eff))
                });
                if demoted || lost.is_some() {
                    let what = lost
                        .and_then(|(id, _)| model.get(id).map(|m| m.label.clone()))
                        .map(|l| format!("lost its key `{l}`"))
                        .unwrap_or_else(|| "was demoted or removed".into());
                    return Err(format!(
                        "ITEM 2/lockout: owner {} of {} {what} through a caller that is no full owner",
                        self.name(owner),
                        ws_label(ws)
                    ));
                }
            }
        }
        Ok(())
    }
}

async fn random_sequences_never_escalate(db: TestDb) {
    let url = db.url.clone();
    let outcome = tokio::task::spawn_blocking(move || explore(&url))
        .await
        .unwrap();
    drop(db);
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

/// Runs the cases on a server of its own; the failure (shrunk) as text.
fn explore(url: &str) -> Result<(), String> {
    let world = runtime().block_on(async {
        let served = serve_fresh(url, false).await;
        let client = &served.client;
        let mut users = HashMap::new();
        for name in USERS.iter().filter(|n| **n != "admin") {
            let (s, b) = call_json(
                client,
                "POST",
                &format!("{}/api/users", served.base),
                &served.admin_key,
                Some(json!({"name": name})),
            )
            .await;
            assert_eq!(s, 201, "{b}");
            users.insert(
                name.to_string(),
                Uuid::parse_str(b["id"].as_str().unwrap()).unwrap(),
            );
        }
        let admin = served.store.user("admin").await.unwrap().id;
        users.insert("admin".into(), admin);
        World {
            served,
            admin,
            users,
            case: AtomicUsize::new(0),
            stats: Mutex::default(),
        }
    });
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    });
    let result = runner.run(&arb_steps(), |steps| {
        runtime().block_on(async {
            let mut case = Case::setup(&world).await;
            let outcome = case.run(&steps).await;
            if std::env::var_os("PUSHPOOL_ESCALATION_TRACE").is_some() {
                eprintln!("{}\n", case.transcript.join("\n"));
            }
            outcome.map_err(|e| {
                TestCaseError::fail(format!("{e}\nsequence:\n{}", case.transcript.join("\n")))
            })
        })
    });
    eprintln!(
        "steps answered 2xx / refused, by kind: {:?}",
        world.stats.lock().unwrap()
    );
    result.map_err(|e| e.to_string())
}
