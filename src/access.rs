//! Who may do what: the fixed set of permission scopes, the built-in roles, and custom roles.
//!
//! Every API key acts in exactly one workspace. What it may do there is the intersection of the
//! scopes of its principal's role in that workspace and the scopes of the key's own role cap (a
//! key created with `role: viewer` stays a viewer key even if its user becomes an owner). A role
//! change of the principal, or the removal of its membership, takes effect on the next request.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One permission. The set is fixed; custom roles are made of these.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Scope {
    /// Read work pools and their queues.
    #[serde(rename = "pools:read")]
    PoolsRead,
    /// Create, change, pause and delete work pools and queues.
    #[serde(rename = "pools:write")]
    PoolsWrite,
    /// Read deployments and preview their job configuration.
    #[serde(rename = "deployments:read")]
    DeploymentsRead,
    /// Create, change and delete deployments.
    #[serde(rename = "deployments:write")]
    DeploymentsWrite,
    /// Read flow runs, their state history and logs.
    #[serde(rename = "runs:read")]
    RunsRead,
    /// Create flow runs of deployments.
    #[serde(rename = "runs:create")]
    RunsCreate,
    /// Create flow runs with run-level `job_variables`, which change what the run executes
    /// (its command, image, function, endpoint); `runs:create` alone starts runs as their
    /// deployment says.
    #[serde(rename = "runs:override")]
    RunsOverride,
    /// Cancel flow runs.
    #[serde(rename = "runs:cancel")]
    RunsCancel,
    /// Claim due runs of a pool (controllers working through the API).
    #[serde(rename = "runs:claim")]
    RunsClaim,
    /// Report the state of runs the caller claimed.
    #[serde(rename = "runs:report")]
    RunsReport,
    /// Read the workspace's event stream.
    #[serde(rename = "events:read")]
    EventsRead,
    /// List the workspace's members.
    #[serde(rename = "members:read")]
    MembersRead,
    /// Add and remove members and change their roles.
    #[serde(rename = "members:write")]
    MembersWrite,
    /// List service accounts.
    #[serde(rename = "service_accounts:read")]
    ServiceAccountsRead,
    /// Create and delete service accounts and change their roles.
    #[serde(rename = "service_accounts:write")]
    ServiceAccountsWrite,
    /// Create, list, rotate and revoke the caller's own API keys.
    #[serde(rename = "keys:self")]
    KeysSelf,
    /// List every API key of the workspace (never the secrets).
    #[serde(rename = "keys:read")]
    KeysRead,
    /// Create, rotate and revoke API keys of any principal of the workspace.
    #[serde(rename = "keys:write")]
    KeysWrite,
    /// Read the roles of the workspace.
    #[serde(rename = "roles:read")]
    RolesRead,
    /// Create and delete custom roles.
    #[serde(rename = "roles:write")]
    RolesWrite,
    /// Read the audit log.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Read notification channels (secrets masked), deliveries and inbound hooks.
    #[serde(rename = "notifications:read")]
    NotificationsRead,
    /// Create, test and delete notification channels and inbound hooks.
    #[serde(rename = "notifications:write")]
    NotificationsWrite,
}

/// The read scope a reader of the event stream needs to see an event, by its kind (the part
/// after `pushpool.`, docs/events.md), as the route that lists those objects asks for: security
/// events (keys, service accounts, members, roles) stay with those who may read them. Kinds not
/// listed here need `audit:read`, so a new kind is hidden until someone decides otherwise.
pub fn event_read_scope(event: &str) -> Scope {
    match crate::events::event_kind(event) {
        "workspace" | "controller" => Scope::EventsRead,
        "work-pool" | "work-queue" | "work_pool" | "work_queue" => Scope::PoolsRead,
        "deployment" | "schedule" => Scope::DeploymentsRead,
        "flow-run" | "flow_run" => Scope::RunsRead,
        "api-key" | "api_key" => Scope::KeysRead,
        "service-account" | "service_account" => Scope::ServiceAccountsRead,
        "member" => Scope::MembersRead,
        "role" => Scope::RolesRead,
        "notification" | "notification_channel" | "inbound_hook" => Scope::NotificationsRead,
        _ => Scope::AuditRead,
    }
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 23] = [
        Scope::PoolsRead,
        Scope::PoolsWrite,
        Scope::DeploymentsRead,
        Scope::DeploymentsWrite,
        Scope::RunsRead,
        Scope::RunsCreate,
        Scope::RunsOverride,
        Scope::RunsCancel,
        Scope::RunsClaim,
        Scope::RunsReport,
        Scope::EventsRead,
        Scope::MembersRead,
        Scope::MembersWrite,
        Scope::ServiceAccountsRead,
        Scope::ServiceAccountsWrite,
        Scope::KeysSelf,
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::RolesRead,
        Scope::RolesWrite,
        Scope::AuditRead,
        Scope::NotificationsRead,
        Scope::NotificationsWrite,
    ];

    /// The scope's wire name, e.g. `pools:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::PoolsRead => "pools:read",
            Scope::PoolsWrite => "pools:write",
            Scope::DeploymentsRead => "deployments:read",
            Scope::DeploymentsWrite => "deployments:write",
            Scope::RunsRead => "runs:read",
            Scope::RunsCreate => "runs:create",
            Scope::RunsOverride => "runs:override",
            Scope::RunsCancel => "runs:cancel",
            Scope::RunsClaim => "runs:claim",
            Scope::RunsReport => "runs:report",
            Scope::EventsRead => "events:read",
            Scope::MembersRead => "members:read",
            Scope::MembersWrite => "members:write",
            Scope::ServiceAccountsRead => "service_accounts:read",
            Scope::ServiceAccountsWrite => "service_accounts:write",
            Scope::KeysSelf => "keys:self",
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::RolesRead => "roles:read",
            Scope::RolesWrite => "roles:write",
            Scope::AuditRead => "audit:read",
            Scope::NotificationsRead => "notifications:read",
            Scope::NotificationsWrite => "notifications:write",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .iter()
            .copied()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scope `{}`; the scopes are: {}",
                    shorten(s, 60),
                    Scope::ALL.map(Scope::as_str).join(", ")
                )
            })
    }
}

/// At most `max` characters of user input, for echoing it in a message.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// A set of scopes.
pub type Scopes = BTreeSet<Scope>;

/// The built-in roles, in decreasing power.
pub const BUILTIN_ROLES: [&str; 5] = ["owner", "developer", "runner", "viewer", "controller"];

/// The scopes of a built-in role, or `None` for any other name.
pub fn builtin_scopes(role: &str) -> Option<Scopes> {
    use Scope::*;
    let read = [
        PoolsRead,
        DeploymentsRead,
        RunsRead,
        EventsRead,
        NotificationsRead,
    ];
    let scopes: Vec<Scope> = match role {
        "owner" => Scope::ALL.to_vec(),
        "developer" => [
            &read[..],
            &[
                PoolsWrite,
                DeploymentsWrite,
                RunsCreate,
                RunsOverride,
                RunsCancel,
                KeysSelf,
                NotificationsWrite,
            ],
        ]
        .concat(),
        "runner" => [&read[..], &[RunsCreate, RunsCancel, KeysSelf]].concat(),
        "viewer" => [&read[..], &[KeysSelf]].concat(),
        "controller" => vec![RunsClaim, RunsReport],
        _ => return None,
    };
    Some(scopes.into_iter().collect())
}

/// What a built-in role is for (shown by `GET …/roles`).
pub fn builtin_description(role: &str) -> &'static str {
    match role {
        "owner" => "Everything in the workspace: members, service accounts, keys, roles, audit log.",
        "developer" => "Work pools, deployments and runs (also with run-level job variables), notification channels and inbound webhooks; reads everything but security settings.",
        "runner" => "Creates runs as their deployment says (no run-level job variables) and cancels them; reads pools, deployments, runs, events and notifications.",
        "viewer" => "Reads pools, deployments, runs, events and notifications.",
        "controller" => "What a controller working through the API needs: claim due runs of a pool and report their states. Nothing else.",
        _ => "",
    }
}

/// Checks a custom role's name: lowercase letters, digits, `-`, `_`; not a built-in name.
pub fn check_custom_role_name(name: &str) -> Result<(), String> {
    if BUILTIN_ROLES.contains(&name) {
        return Err(format!("`{name}` is a built-in role"));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err("must be 1–64 characters of lowercase letters, digits, `-` or `_`, starting with a letter".into())
    }
}

/// Parses a list of scope names (no duplicates allowed, at least one).
pub fn parse_scopes(names: &[String]) -> Result<Scopes, (usize, String)> {
    if names.is_empty() {
        return Err((0, "a role needs at least one scope".into()));
    }
    let mut out = Scopes::new();
    for (i, n) in names.iter().enumerate() {
        let scope: Scope = n.parse().map_err(|e| (i, e))?;
        if !out.insert(scope) {
            return Err((i, format!("scope `{n}` is listed twice")));
        }
    }
    Ok(out)
}

/// What one credential holds in its workspace: whose it is, what it may do there (principal
/// role ∩ key cap), until when, and whether its principal is special (administrator, owner).
///
/// Used both for the caller's own key and for a key (or role) the caller is about to hand out:
/// [`check_grant`] compares the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The principal the credential acts for.
    pub principal: uuid::Uuid,
    /// Effective scopes in the workspace.
    pub scopes: Scopes,
    /// Expiry in microseconds since the epoch; `None` = never.
    pub expires: Option<i64>,
    /// The principal is an instance administrator.
    pub admin: bool,
    /// The principal is an owner of the workspace.
    pub owner: bool,
}

/// The one rule for every credential-minting or principal-changing action (create or rotate a
/// key, create a service account with its key, add a member, change a role): what `caller`
/// hands out (`given`) may never hold more than `caller` holds itself.
///
/// - no scope the caller's effective grant lacks;
/// - no later expiry than the caller's key (a key without expiry outlives an expiring one);
/// - an administrator's key only by the administrator itself (nobody else mints or rotates
///   one; it confers administrator powers only in its home workspace, see the guard);
/// - another principal's owner key only by a full owner (every scope), so a `keys:write` role
///   can never rotate an owner out with a zero grace period.
///
/// The error is the message of a 403, naming the rule.
pub fn check_grant(caller: &Grant, given: &Grant) -> Result<(), String> {
    let for_other = given.principal != caller.principal;
    if given.admin && for_other {
        return Err(
            "an administrator's keys are minted and rotated only by that administrator: \
                    nobody else may hold an administrator's key"
                .into(),
        );
    }
    if let Some(missing) = given.scopes.iter().find(|s| !caller.scopes.contains(s)) {
        return Err(format!(
            "the result would hold `{missing}`, which you do not hold: nothing you hand out may \
             exceed your own grant (your role ∩ your key's cap)"
        ));
    }
    if let Some(mine) = caller.expires {
        if given.expires.is_none_or(|theirs| theirs > mine) {
            return Err(
                "the key would outlive yours: a key you hand out expires no later than \
                        the key you call with"
                    .into(),
            );
        }
    }
    if given.owner && for_other && !full_owner(caller) {
        return Err(
            "only an owner may mint or rotate another owner's key (a rotation could lock them out)"
                .into(),
        );
    }
    Ok(())
}

/// The same rule for taking away instead of handing out (revoking a key): another principal's
/// owner key is revoked only by a full owner (every scope), so a `keys:write` role can never
/// lock an owner out. `target` is what the key holds now; its scopes and expiry do not matter
/// (revoking a key nobody needs is never an escalation).
///
/// The error is the message of a 403, naming the rule.
pub fn check_revoke(caller: &Grant, target: &Grant) -> Result<(), String> {
    if target.owner && target.principal != caller.principal && !full_owner(caller) {
        return Err(
            "only an owner may revoke another owner's key (a revocation could lock them out)"
                .into(),
        );
    }
    Ok(())
}

/// The caller holds every scope (an owner with an uncapped or owner-capped key).
fn full_owner(caller: &Grant) -> bool {
    Scope::ALL.iter().all(|s| caller.scopes.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(principal: u128, role: &str, expires: Option<i64>) -> Grant {
        Grant {
            principal: uuid::Uuid::from_u128(principal),
            scopes: builtin_scopes(role).unwrap(),
            expires,
            admin: false,
            owner: role == "owner",
        }
    }

    #[test]
    fn a_grant_never_exceeds_its_giver() {
        let owner = grant(1, "owner", None);
        assert_eq!(check_grant(&owner, &grant(2, "owner", None)), Ok(()));
        assert_eq!(check_grant(&owner, &grant(1, "viewer", Some(5))), Ok(()));
        // Scopes: a viewer-capped key mints no owner key, not even for its own principal.
        let capped = grant(1, "viewer", Some(10));
        let err = check_grant(&capped, &grant(1, "owner", Some(10))).unwrap_err();
        assert!(err.contains("which you do not hold"), "{err}");
        // Lifetime: never later than the caller's key, never unlimited.
        assert_eq!(check_grant(&capped, &grant(1, "viewer", Some(10))), Ok(()));
        for later in [Some(11), None] {
            let err = check_grant(&capped, &grant(1, "viewer", later)).unwrap_err();
            assert!(err.contains("outlive"), "{err}");
        }
        // Administrators: only by themselves.
        let mut admin = grant(3, "owner", None);
        admin.admin = true;
        let err = check_grant(&owner, &admin).unwrap_err();
        assert!(err.contains("administrator"), "{err}");
        assert_eq!(check_grant(&admin, &admin), Ok(()));
        // Owners: another owner's key (even a capped one) only by a full owner.
        let mut key_admin = grant(4, "viewer", None);
        key_admin.scopes = [Scope::KeysSelf, Scope::KeysRead, Scope::KeysWrite].into();
        let mut owner_capped = grant(2, "owner", None);
        owner_capped.scopes = [Scope::KeysSelf].into();
        let err = check_grant(&key_admin, &owner_capped).unwrap_err();
        assert!(err.contains("only an owner"), "{err}");
        assert_eq!(check_grant(&owner, &owner_capped), Ok(()));
        // Revocation: another owner's key only by a full owner; anyone else's with keys:write.
        let err = check_revoke(&key_admin, &owner_capped).unwrap_err();
        assert!(err.contains("only an owner may revoke"), "{err}");
        assert_eq!(check_revoke(&owner, &owner_capped), Ok(()));
        assert_eq!(
            check_revoke(&key_admin, &grant(5, "developer", None)),
            Ok(())
        );
        let mut own_capped = grant(2, "owner", None);
        own_capped.scopes = [Scope::KeysSelf].into();
        assert_eq!(check_revoke(&own_capped, &grant(2, "owner", None)), Ok(()));
    }

    #[test]
    fn builtin_roles_nest_and_controller_is_narrow() {
        let owner = builtin_scopes("owner").unwrap();
        let dev = builtin_scopes("developer").unwrap();
        let runner = builtin_scopes("runner").unwrap();
        let viewer = builtin_scopes("viewer").unwrap();
        let controller = builtin_scopes("controller").unwrap();
        assert!(viewer.is_subset(&runner) && runner.is_subset(&dev) && dev.is_subset(&owner));
        assert!(controller.is_subset(&owner));
        assert_eq!(
            controller,
            [Scope::RunsClaim, Scope::RunsReport].into_iter().collect()
        );
        assert!(!dev.contains(&Scope::AuditRead) && !dev.contains(&Scope::KeysWrite));
        // Run-level job variables change what a run executes: authors only (issue 19 item 5).
        assert!(owner.contains(&Scope::RunsOverride) && dev.contains(&Scope::RunsOverride));
        assert!(!runner.contains(&Scope::RunsOverride) && !viewer.contains(&Scope::RunsOverride));
        assert!(!controller.contains(&Scope::RunsOverride));
        assert!(builtin_scopes("admin").is_none());
    }

    #[test]
    fn scopes_round_trip_through_their_names() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        let err = "pools:delete".parse::<Scope>().unwrap_err();
        assert!(err.contains("unknown scope `pools:delete`"), "{err}");
    }

    #[test]
    fn custom_role_names_and_scope_lists_are_checked() {
        assert!(check_custom_role_name("deployer").is_ok());
        assert!(check_custom_role_name("owner").is_err());
        assert!(check_custom_role_name("Bad Name").is_err());
        assert!(parse_scopes(&[]).is_err());
        assert_eq!(
            parse_scopes(&["runs:read".into(), "runs:read".into()])
                .unwrap_err()
                .0,
            1
        );
    }
}
