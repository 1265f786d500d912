//! The access-control store suite (principals, memberships, custom roles, API keys, rotation,
//! audit log, upgrade from schema 3): every test runs against SQLite and against PostgreSQL.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pushpool::auth::generate_api_key;
use pushpool::model::{now_micros, to_micros, Micros, Workspace};
use pushpool::store::{
    AuditEntry, AuditFilter, NewApiKey, NewAuditEntry, Principal, PrincipalKind, Store, StoreError,
    StoredApiKey, WorkspaceOwner,
};
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::json;
use uuid::Uuid;

both_backends!(
    workspace_with_new_owner_creates_user_membership_and_key,
    duplicate_workspace_leaves_nothing_behind,
    users_have_unique_names_and_are_listed,
    members_are_added_changed_and_removed,
    removing_a_member_revokes_their_keys_in_that_workspace_only,
    the_last_owner_can_be_neither_demoted_nor_removed,
    service_accounts_have_a_role_keys_and_per_workspace_names,
    deleting_a_service_account_revokes_it,
    custom_roles_are_created_listed_and_deleted_when_unused,
    api_keys_are_created_listed_scoped_and_revoked,
    api_key_status_is_active_expired_or_revoked,
    rotation_replaces_a_key_with_a_grace_period,
    only_an_active_unrotated_key_can_be_rotated,
    pending_audit_records_are_finished,
    audit_log_is_filtered_paged_and_isolated,
    upgrade_from_schema_3_turns_old_keys_into_users,
    concurrent_demotions_keep_an_owner,
    audit_action_prefix_matches_literally,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn new_key(
    principal_id: Uuid,
    name: &str,
    role: Option<&str>,
    expires: Option<Micros>,
) -> NewApiKey {
    let g = generate_api_key();
    NewApiKey {
        principal_id,
        name: name.into(),
        prefix: g.prefix,
        hash: g.hash,
        role: role.map(str::to_string),
        expires,
    }
}

#[track_caller]
fn assert_conflict<T: Debug>(res: Result<T, StoreError>, field: &str) {
    match res {
        Err(StoreError::Conflict { field: Some(f), .. }) if f == field => {}
        other => panic!("expected a Conflict on `{field}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: Debug>(res: Result<T, StoreError>) {
    match res {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// A store with workspace `default` owned by the new admin user `admin` (the bootstrap shape).
struct Fixture {
    store: Store,
    ws: Workspace,
    admin: Principal,
    admin_key: StoredApiKey,
}

async fn fixture(db: &TestDb) -> Fixture {
    let store = connect(db, 4).await;
    let (ws, admin, admin_key) = store
        .create_workspace_with_owner(
            "default",
            WorkspaceOwner::NewUser {
                name: "admin".into(),
                admin: true,
            },
            |p| new_key(p, "owner", None, None),
        )
        .await
        .unwrap();
    Fixture {
        store,
        ws,
        admin,
        admin_key,
    }
}

impl Fixture {
    /// A second workspace owned by the admin.
    async fn other_workspace(&self, name: &str) -> Workspace {
        self.store
            .create_workspace_with_owner(name, WorkspaceOwner::Existing(self.admin.clone()), |p| {
                new_key(p, "owner", None, None)
            })
            .await
            .unwrap()
            .0
    }

    async fn role_of(&self, ws: &Workspace, principal: Uuid) -> Option<String> {
        self.store
            .workspace_access(&ws.name, principal)
            .await
            .unwrap()
            .expect("workspace exists")
            .1
    }

    async fn key(&self, ws: Uuid, principal: Uuid, name: &str) -> StoredApiKey {
        self.store
            .create_api_key(ws, new_key(principal, name, None, None))
            .await
            .unwrap()
    }

    async fn reload(&self, key: &StoredApiKey) -> StoredApiKey {
        self.store.api_key(key.workspace_id, key.id).await.unwrap()
    }
}

fn entry(ws: Option<Uuid>, name: &str, id: &str, action: &str, outcome: &str) -> NewAuditEntry {
    NewAuditEntry {
        workspace_id: ws,
        actor_kind: "user".into(),
        actor_id: Some(id.into()),
        actor_name: name.into(),
        key_id: None,
        action: action.into(),
        target: Some(format!("thing:{action}")),
        outcome: outcome.into(),
        status: 200,
        source: Some("10.0.0.1".into()),
        method: "POST".into(),
        path: format!("/api/{action}"),
        detail: None,
    }
}

fn filter() -> AuditFilter {
    AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    }
}

fn actions(entries: &[AuditEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.action.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Workspaces and users

async fn workspace_with_new_owner_creates_user_membership_and_key(db: TestDb) {
    let fx = fixture(&db).await;
    let Fixture {
        store,
        ws,
        admin,
        admin_key,
    } = &fx;
    assert_eq!(ws.name, "default");
    assert_eq!(admin.kind, PrincipalKind::User);
    assert_eq!(admin.name, "admin");
    assert!(admin.admin, "the admin flag is kept");
    assert_eq!(admin.workspace_id, None);
    assert_eq!(admin.deleted, None);
    assert_eq!(store.user("admin").await.unwrap(), *admin);
    assert_eq!(store.principal(admin.id).await.unwrap(), *admin);

    // The owner membership.
    let members = store.list_members(ws.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, admin.id);
    assert_eq!(members[0].role, "owner");
    assert_eq!(
        store.workspaces_of(admin.id).await.unwrap(),
        vec![(ws.clone(), "owner".to_string())]
    );

    // The key, found by its prefix with its principal.
    assert_eq!(admin_key.workspace_id, ws.id);
    assert_eq!(admin_key.principal_id, admin.id);
    assert_eq!(admin_key.role, None);
    let found = store
        .api_key_by_prefix(&admin_key.prefix)
        .await
        .unwrap()
        .expect("key found by prefix");
    assert_eq!(found.key, *admin_key);
    assert_eq!(found.principal, *admin);
    assert!(store.api_key_by_prefix("nosuchpx").await.unwrap().is_none());

    // Access: owner; a non-member has none; an unknown workspace is None.
    assert_eq!(
        store.workspace_access("default", admin.id).await.unwrap(),
        Some((ws.clone(), Some("owner".to_string())))
    );
    let bob = store.create_user("bob", false).await.unwrap();
    assert_eq!(
        store.workspace_access("default", bob.id).await.unwrap(),
        Some((ws.clone(), None))
    );
    assert_eq!(
        store.workspace_access("nowhere", admin.id).await.unwrap(),
        None
    );

    // An existing user as the first owner of another workspace.
    let (ws2, owner2, key2) = store
        .create_workspace_with_owner("second", WorkspaceOwner::Existing(bob.clone()), |p| {
            new_key(p, "bob", Some("viewer"), None)
        })
        .await
        .unwrap();
    assert_eq!(owner2, bob);
    assert_eq!((key2.principal_id, key2.workspace_id), (bob.id, ws2.id));
    assert_eq!(fx.role_of(&ws2, bob.id).await.as_deref(), Some("owner"));
    assert_eq!(fx.role_of(&ws2, admin.id).await, None);
    assert_eq!(fx.role_of(ws, bob.id).await, None);
}

async fn duplicate_workspace_leaves_nothing_behind(db: TestDb) {
    let fx = fixture(&db).await;
    let store = &fx.store;
    let users_before = store.list_users().await.unwrap();

    // Same workspace name, new owner: refused, and neither the user nor the key is left.
    let mut attempted = None;
    let res = store
        .create_workspace_with_owner(
            "default",
            WorkspaceOwner::NewUser {
                name: "carol".into(),
                admin: false,
            },
            |p| {
                let k = new_key(p, "owner", None, None);
                attempted = Some(k.prefix.clone());
                k
            },
        )
        .await;
    assert_conflict(res, "name");
    assert_not_found(store.user("carol").await);
    assert_eq!(store.list_users().await.unwrap(), users_before);
    if let Some(prefix) = attempted {
        assert!(store.api_key_by_prefix(&prefix).await.unwrap().is_none());
    }
    // The existing workspace is untouched.
    assert_eq!(store.list_members(fx.ws.id).await.unwrap().len(), 1);
    assert_eq!(store.list_api_keys(fx.ws.id, None).await.unwrap().len(), 1);

    // A new workspace whose new owner's name is taken: refused as a whole (no workspace left).
    let mut attempted = None;
    let res = store
        .create_workspace_with_owner(
            "third",
            WorkspaceOwner::NewUser {
                name: "admin".into(),
                admin: true,
            },
            |p| {
                let k = new_key(p, "owner", None, None);
                attempted = Some(k.prefix.clone());
                k
            },
        )
        .await;
    assert_conflict(res, "name");
    assert_eq!(
        store.workspace_access("third", fx.admin.id).await.unwrap(),
        None
    );
    assert_eq!(store.list_users().await.unwrap(), users_before);
    if let Some(prefix) = attempted {
        assert!(store.api_key_by_prefix(&prefix).await.unwrap().is_none());
    }
    // …and the name is still free.
    fx.other_workspace("third").await;
}

async fn users_have_unique_names_and_are_listed(db: TestDb) {
    let fx = fixture(&db).await;
    let store = &fx.store;
    let bob = store.create_user("bob", true).await.unwrap();
    let alice = store.create_user("alice", false).await.unwrap();
    assert_eq!((alice.kind, alice.admin), (PrincipalKind::User, false));
    assert!(bob.admin);
    assert_conflict(store.create_user("alice", true).await, "name");
    assert_conflict(store.create_user("admin", false).await, "name");

    // Service accounts are not users.
    store
        .create_service_account(fx.ws.id, "ci", "runner", |p| new_key(p, "ci", None, None))
        .await
        .unwrap();
    let users = store.list_users().await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["admin", "alice", "bob"]);
    assert_eq!(users[1], alice);
    assert_eq!(users[2], bob);

    assert_eq!(store.user("alice").await.unwrap(), alice);
    assert_not_found(store.user("nobody").await);
    assert_not_found(store.user("ci").await);
    assert_eq!(store.principal(bob.id).await.unwrap(), bob);
    assert_not_found(store.principal(Uuid::now_v7()).await);
}

// ---------------------------------------------------------------------------------------------
// Members

async fn members_are_added_changed_and_removed(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let alice = store.create_user("alice", false).await.unwrap();
    store.create_user("bob", false).await.unwrap();

    assert_not_found(store.add_member(ws, "ghost", "viewer").await);
    let m = store.add_member(ws, "alice", "developer").await.unwrap();
    assert_eq!(
        (m.user_id, m.user.as_str(), m.role.as_str()),
        (alice.id, "alice", "developer")
    );
    assert!(matches!(
        store.add_member(ws, "alice", "viewer").await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.member(ws, "alice").await.unwrap().role, "developer");
    assert_eq!(
        fx.role_of(&fx.ws, alice.id).await.as_deref(),
        Some("developer")
    );

    // Service accounts are members but not listed as such.
    store
        .create_service_account(ws, "ci", "controller", |p| new_key(p, "ci", None, None))
        .await
        .unwrap();
    let members = store.list_members(ws).await.unwrap();
    let names: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.user.as_str(), m.role.as_str()))
        .collect();
    assert_eq!(names, [("admin", "owner"), ("alice", "developer")]);

    // Role change.
    let changed = store.set_member_role(ws, "alice", "viewer").await.unwrap();
    assert_eq!(changed.role, "viewer");
    assert!(changed.updated >= changed.created);
    assert_eq!(store.member(ws, "alice").await.unwrap().role, "viewer");
    assert_eq!(
        fx.role_of(&fx.ws, alice.id).await.as_deref(),
        Some("viewer")
    );
    assert_not_found(store.set_member_role(ws, "bob", "viewer").await);
    assert_not_found(store.set_member_role(ws, "ghost", "viewer").await);

    // Removal.
    store.remove_member(ws, "alice").await.unwrap();
    assert_eq!(fx.role_of(&fx.ws, alice.id).await, None);
    assert_not_found(store.member(ws, "alice").await);
    assert_not_found(store.remove_member(ws, "alice").await);
    assert_not_found(store.remove_member(ws, "bob").await);
    assert_eq!(store.list_members(ws).await.unwrap().len(), 1);
    // …and added back.
    store.add_member(ws, "alice", "runner").await.unwrap();
    assert_eq!(
        fx.role_of(&fx.ws, alice.id).await.as_deref(),
        Some("runner")
    );
}

async fn removing_a_member_revokes_their_keys_in_that_workspace_only(db: TestDb) {
    let fx = fixture(&db).await;
    let store = &fx.store;
    let ws2 = fx.other_workspace("second").await;
    let alice = store.create_user("alice", false).await.unwrap();
    store
        .add_member(fx.ws.id, "alice", "developer")
        .await
        .unwrap();
    store
        .add_member(ws2.id, "alice", "developer")
        .await
        .unwrap();
    let here_a = fx.key(fx.ws.id, alice.id, "a").await;
    let here_b = fx.key(fx.ws.id, alice.id, "b").await;
    let there = fx.key(ws2.id, alice.id, "there").await;
    let admin_here = fx.key(fx.ws.id, fx.admin.id, "admin").await;

    store.remove_member(fx.ws.id, "alice").await.unwrap();
    let now = Utc::now();
    assert_eq!(fx.reload(&here_a).await.status(now), "revoked");
    assert_eq!(fx.reload(&here_b).await.status(now), "revoked");
    assert_eq!(fx.reload(&there).await.status(now), "active");
    assert_eq!(fx.reload(&there).await.revoked, None);
    assert_eq!(fx.reload(&admin_here).await.status(now), "active");
    assert_eq!(fx.reload(&fx.admin_key).await.status(now), "active");
    assert_eq!(
        fx.role_of(&ws2, alice.id).await.as_deref(),
        Some("developer")
    );
}

async fn the_last_owner_can_be_neither_demoted_nor_removed(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    assert_conflict(
        store.set_member_role(ws, "admin", "developer").await,
        "role",
    );
    assert_conflict(store.remove_member(ws, "admin").await, "role");
    assert_eq!(
        fx.role_of(&fx.ws, fx.admin.id).await.as_deref(),
        Some("owner")
    );
    // Owner to owner is no demotion.
    store.set_member_role(ws, "admin", "owner").await.unwrap();

    // With a second owner, one can step down; the remaining one is the last again.
    store.create_user("alice", false).await.unwrap();
    store.add_member(ws, "alice", "owner").await.unwrap();
    store
        .set_member_role(ws, "admin", "developer")
        .await
        .unwrap();
    assert_conflict(store.set_member_role(ws, "alice", "viewer").await, "role");
    assert_conflict(store.remove_member(ws, "alice").await, "role");
    store.set_member_role(ws, "admin", "owner").await.unwrap();
    store.remove_member(ws, "alice").await.unwrap();
    assert_conflict(store.remove_member(ws, "admin").await, "role");

    // A service account that owns the workspace counts as an owner, and is protected the same way.
    store
        .create_service_account(ws, "root", "owner", |p| new_key(p, "root", None, None))
        .await
        .unwrap();
    store.set_member_role(ws, "admin", "viewer").await.unwrap();
    assert_conflict(
        store.set_service_account_role(ws, "root", "viewer").await,
        "role",
    );
    assert_conflict(store.delete_service_account(ws, "root").await, "role");
    assert_eq!(
        store.service_account(ws, "root").await.unwrap().role,
        "owner"
    );
    store.set_member_role(ws, "admin", "owner").await.unwrap();
    store.delete_service_account(ws, "root").await.unwrap();
    // The deleted account no longer counts.
    assert_conflict(store.set_member_role(ws, "admin", "viewer").await, "role");
}

// ---------------------------------------------------------------------------------------------
// Service accounts

async fn service_accounts_have_a_role_keys_and_per_workspace_names(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let ws2 = fx.other_workspace("second").await;

    let (sa, key) = store
        .create_service_account(ws, "ci", "controller", |p| new_key(p, "ci-key", None, None))
        .await
        .unwrap();
    assert_eq!(
        (sa.name.as_str(), sa.workspace_id, sa.role.as_str()),
        ("ci", ws, "controller")
    );
    assert_eq!((key.principal_id, key.workspace_id), (sa.id, ws));
    let p = store.principal(sa.id).await.unwrap();
    assert_eq!(p.kind, PrincipalKind::ServiceAccount);
    assert_eq!(p.workspace_id, Some(ws));
    assert!(!p.admin);
    assert_eq!(p.deleted, None);
    assert_eq!(
        fx.role_of(&fx.ws, sa.id).await.as_deref(),
        Some("controller")
    );
    let found = store.api_key_by_prefix(&key.prefix).await.unwrap().unwrap();
    assert_eq!(found.key, key);
    assert_eq!(found.principal, p);

    // Found by id and by name; listed.
    assert_eq!(
        store.service_account(ws, &sa.id.to_string()).await.unwrap(),
        sa
    );
    assert_eq!(store.service_account(ws, "ci").await.unwrap(), sa);
    assert_eq!(
        store.list_service_accounts(ws).await.unwrap(),
        vec![sa.clone()]
    );
    assert_not_found(store.service_account(ws, "nope").await);
    assert_not_found(store.service_account(ws2.id, &sa.id.to_string()).await);

    // Names are unique per workspace (nothing is left of a refused one)…
    let mut attempted = None;
    let res = store
        .create_service_account(ws, "ci", "viewer", |p| {
            let k = new_key(p, "dup", None, None);
            attempted = Some(k.prefix.clone());
            k
        })
        .await;
    assert_conflict(res, "name");
    if let Some(prefix) = attempted {
        assert!(store.api_key_by_prefix(&prefix).await.unwrap().is_none());
    }
    assert_eq!(store.list_service_accounts(ws).await.unwrap().len(), 1);
    // …but another workspace may use the same name.
    let (sa2, _) = store
        .create_service_account(ws2.id, "ci", "runner", |p| new_key(p, "ci", None, None))
        .await
        .unwrap();
    assert_ne!(sa2.id, sa.id);
    assert_eq!(store.service_account(ws2.id, "ci").await.unwrap(), sa2);
    assert_eq!(store.service_account(ws, "ci").await.unwrap(), sa);

    // Role change.
    let changed = store
        .set_service_account_role(ws, "ci", "runner")
        .await
        .unwrap();
    assert_eq!(changed.role, "runner");
    assert_eq!(
        store
            .service_account(ws, &sa.id.to_string())
            .await
            .unwrap()
            .role,
        "runner"
    );
    assert_eq!(fx.role_of(&fx.ws, sa.id).await.as_deref(), Some("runner"));
    assert_eq!(
        store.service_account(ws2.id, "ci").await.unwrap().role,
        "runner"
    );
    store
        .set_service_account_role(ws2.id, "ci", "viewer")
        .await
        .unwrap();
    assert_eq!(
        store.service_account(ws, "ci").await.unwrap().role,
        "runner"
    );
    assert_not_found(store.set_service_account_role(ws, "nope", "viewer").await);
}

async fn deleting_a_service_account_revokes_it(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let ws2 = fx.other_workspace("second").await;
    let (sa, first) = store
        .create_service_account(ws, "ci", "runner", |p| new_key(p, "first", None, None))
        .await
        .unwrap();
    let second = fx.key(ws, sa.id, "second").await;
    let (other, other_key) = store
        .create_service_account(ws2.id, "ci", "runner", |p| new_key(p, "other", None, None))
        .await
        .unwrap();

    store
        .delete_service_account(ws, &sa.id.to_string())
        .await
        .unwrap();
    let p = store.principal(sa.id).await.unwrap();
    assert!(p.deleted.is_some(), "the principal is marked deleted");
    assert_eq!(fx.role_of(&fx.ws, sa.id).await, None, "membership removed");
    let now = Utc::now();
    assert_eq!(fx.reload(&first).await.status(now), "revoked");
    assert_eq!(fx.reload(&second).await.status(now), "revoked");
    let found = store
        .api_key_by_prefix(&first.prefix)
        .await
        .unwrap()
        .unwrap();
    assert!(found.principal.deleted.is_some());
    assert_not_found(store.service_account(ws, "ci").await);
    assert!(store.list_service_accounts(ws).await.unwrap().is_empty());
    assert_not_found(store.delete_service_account(ws, "ci").await);

    // The same name in the other workspace is untouched.
    assert_eq!(store.service_account(ws2.id, "ci").await.unwrap(), other);
    assert_eq!(fx.reload(&other_key).await.status(now), "active");

    // The name is free again.
    let (again, _) = store
        .create_service_account(ws, "ci", "viewer", |p| new_key(p, "again", None, None))
        .await
        .unwrap();
    assert_ne!(again.id, sa.id);
    assert_eq!(store.service_account(ws, "ci").await.unwrap(), again);
}

// ---------------------------------------------------------------------------------------------
// Custom roles

async fn custom_roles_are_created_listed_and_deleted_when_unused(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let ws2 = fx.other_workspace("second").await;
    let scopes = vec!["deployments:write".to_string(), "runs:create".to_string()];

    let deployer = store
        .create_role(ws, "deployer", Some("ships code"), &scopes)
        .await
        .unwrap();
    assert_eq!(deployer.name, "deployer");
    assert_eq!(deployer.description.as_deref(), Some("ships code"));
    assert_eq!(deployer.scopes, scopes);
    let auditor = store
        .create_role(ws, "auditor", None, &["audit:read".to_string()])
        .await
        .unwrap();
    assert_eq!(
        store.list_roles(ws).await.unwrap(),
        vec![auditor.clone(), deployer.clone()]
    );
    assert_eq!(
        store.custom_role_scopes(ws, "deployer").await.unwrap(),
        Some(scopes.clone())
    );
    assert_eq!(store.custom_role_scopes(ws, "nope").await.unwrap(), None);
    assert_eq!(
        store.custom_role_scopes(ws2.id, "deployer").await.unwrap(),
        None
    );
    assert!(store.list_roles(ws2.id).await.unwrap().is_empty());
    assert_conflict(
        store.create_role(ws, "deployer", None, &scopes).await,
        "name",
    );
    // Another workspace may have its own role of that name.
    store
        .create_role(ws2.id, "deployer", None, &["runs:read".to_string()])
        .await
        .unwrap();
    assert_eq!(
        store.custom_role_scopes(ws, "deployer").await.unwrap(),
        Some(scopes.clone())
    );

    // Held by a member: refused.
    store.create_user("alice", false).await.unwrap();
    store.add_member(ws, "alice", "deployer").await.unwrap();
    assert_conflict(store.delete_role(ws, "deployer").await, "name");
    store.set_member_role(ws, "alice", "viewer").await.unwrap();
    // Held by a service account: refused.
    store
        .create_service_account(ws, "ci", "deployer", |p| new_key(p, "ci", None, None))
        .await
        .unwrap();
    assert_conflict(store.delete_role(ws, "deployer").await, "name");
    store.delete_service_account(ws, "ci").await.unwrap();
    // Capping a live key: refused; once revoked: allowed.
    let capped = store
        .create_api_key(ws, new_key(fx.admin.id, "capped", Some("deployer"), None))
        .await
        .unwrap();
    assert_conflict(store.delete_role(ws, "deployer").await, "name");
    assert_eq!(store.list_roles(ws).await.unwrap().len(), 2);
    store.revoke_api_key(ws, capped.id).await.unwrap();
    store.delete_role(ws, "deployer").await.unwrap();

    assert_eq!(store.list_roles(ws).await.unwrap(), vec![auditor]);
    assert_eq!(
        store.custom_role_scopes(ws, "deployer").await.unwrap(),
        None
    );
    assert_not_found(store.delete_role(ws, "deployer").await);
    assert_not_found(store.delete_role(ws, "never-was").await);
    // The other workspace's role of the same name is untouched.
    assert_eq!(
        store.custom_role_scopes(ws2.id, "deployer").await.unwrap(),
        Some(vec!["runs:read".to_string()])
    );
}

// ---------------------------------------------------------------------------------------------
// API keys

async fn api_keys_are_created_listed_scoped_and_revoked(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let ws2 = fx.other_workspace("second").await;
    let alice = store.create_user("alice", false).await.unwrap();
    store.add_member(ws, "alice", "developer").await.unwrap();

    let expires = now_micros() + 3_600_000_000;
    let uncapped = new_key(fx.admin.id, "uncapped", None, None);
    let hash = uncapped.hash.clone();
    let uncapped = store.create_api_key(ws, uncapped).await.unwrap();
    assert_eq!(uncapped.role, None);
    assert_eq!((uncapped.revoked, uncapped.rotated_to), (None, None));
    let reread = fx.reload(&uncapped).await;
    assert_eq!(reread, uncapped);
    assert_eq!(reread.role, None, "no cap reads back as None");
    assert_eq!(reread.hash, hash);

    let capped = store
        .create_api_key(
            ws,
            new_key(alice.id, "capped", Some("viewer"), Some(expires)),
        )
        .await
        .unwrap();
    assert_eq!(capped.role.as_deref(), Some("viewer"));
    let reread = fx.reload(&capped).await;
    assert_eq!(reread, capped);
    assert_eq!(reread.role.as_deref(), Some("viewer"));
    assert_eq!(reread.expires.map(to_micros), Some(expires));
    let by_prefix = store
        .api_key_by_prefix(&capped.prefix)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_prefix.key, capped);
    assert_eq!(by_prefix.principal, alice);

    // Listing: all keys of the workspace, or one principal's.
    let all: Vec<Uuid> = store
        .list_api_keys(ws, None)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(all, [fx.admin_key.id, uncapped.id, capped.id]);
    assert_eq!(
        store.list_api_keys(ws, Some(alice.id)).await.unwrap(),
        vec![capped.clone()]
    );
    let admins: Vec<Uuid> = store
        .list_api_keys(ws, Some(fx.admin.id))
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(admins, [fx.admin_key.id, uncapped.id]);
    assert_eq!(
        store.list_api_keys(ws2.id, Some(alice.id)).await.unwrap(),
        vec![]
    );
    assert_eq!(store.list_api_keys(ws2.id, None).await.unwrap().len(), 1);

    // Another workspace's key is not found through this one.
    assert_not_found(store.api_key(ws2.id, capped.id).await);
    assert_not_found(store.api_key(ws, Uuid::now_v7()).await);
    assert_not_found(store.revoke_api_key(ws2.id, capped.id).await);
    assert_eq!(fx.reload(&capped).await.revoked, None);

    // Revoke, once.
    let revoked = store.revoke_api_key(ws, capped.id).await.unwrap();
    assert!(revoked.revoked.is_some());
    assert_eq!(revoked.status(Utc::now()), "revoked");
    assert_eq!(fx.reload(&capped).await, revoked);
    assert_conflict(store.revoke_api_key(ws, capped.id).await, "id");
    assert_not_found(store.revoke_api_key(ws, Uuid::now_v7()).await);
    assert_eq!(fx.reload(&uncapped).await.revoked, None);
}

async fn api_key_status_is_active_expired_or_revoked(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let now = Utc::now();
    let past = now_micros() - 1_000_000;
    let future = now_micros() + 3_600_000_000;

    let plain = fx.key(ws, fx.admin.id, "plain").await;
    let expired = store
        .create_api_key(ws, new_key(fx.admin.id, "expired", None, Some(past)))
        .await
        .unwrap();
    let later = store
        .create_api_key(ws, new_key(fx.admin.id, "later", None, Some(future)))
        .await
        .unwrap();
    let now = now.max(Utc::now());
    assert_eq!(fx.reload(&plain).await.status(now), "active");
    assert_eq!(fx.reload(&expired).await.status(now), "expired");
    let later_read = fx.reload(&later).await;
    assert_eq!(later_read.status(now), "active");
    // At (and after) its expiry a key is expired.
    let at = later_read.expires.unwrap();
    assert_eq!(later_read.status(at), "expired");
    assert_eq!(
        later_read.status(at - chrono::Duration::microseconds(1)),
        "active"
    );
    // Revoked wins over expired and over active.
    let revoked_later = store.revoke_api_key(ws, later.id).await.unwrap();
    assert_eq!(revoked_later.status(now), "revoked");
    let revoked_expired = store.revoke_api_key(ws, expired.id).await.unwrap();
    assert_eq!(revoked_expired.status(now), "revoked");
}

// ---------------------------------------------------------------------------------------------
// Rotation

/// What the API asks for on rotation: same principal, name, role and expiry; a fresh secret.
fn successor(old: &StoredApiKey) -> NewApiKey {
    let g = generate_api_key();
    NewApiKey {
        principal_id: old.principal_id,
        name: old.name.clone(),
        prefix: g.prefix,
        hash: g.hash,
        role: old.role.clone(),
        expires: old.expires.map(to_micros),
    }
}

async fn rotation_replaces_a_key_with_a_grace_period(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let alice = store.create_user("alice", false).await.unwrap();
    store.add_member(ws, "alice", "developer").await.unwrap();
    let own_expiry = now_micros() + 30 * 86_400_000_000;
    let old = store
        .create_api_key(
            ws,
            new_key(alice.id, "deploy", Some("runner"), Some(own_expiry)),
        )
        .await
        .unwrap();

    let grace_end = now_micros() + 3_600_000_000;
    let mut seen = None;
    let (new, old_after) = store
        .rotate_api_key(
            ws,
            old.id,
            |k| {
                seen = Some(k.clone());
                successor(k)
            },
            grace_end,
        )
        .await
        .unwrap();
    assert_eq!(
        seen.as_ref(),
        Some(&old),
        "the closure is given the old key"
    );
    assert_ne!(new.id, old.id);
    assert_ne!(new.prefix, old.prefix);
    assert_eq!(new.principal_id, alice.id);
    assert_eq!(new.workspace_id, ws);
    assert_eq!(new.name, "deploy");
    assert_eq!(new.role.as_deref(), Some("runner"));
    assert_eq!(new.expires, old.expires);
    assert_eq!((new.revoked, new.rotated_to), (None, None));
    assert_eq!(fx.reload(&new).await, new);

    assert_eq!(old_after.id, old.id);
    assert_eq!(old_after.expires.map(to_micros), Some(grace_end));
    assert_eq!(old_after.rotated_to, Some(new.id));
    assert_eq!(old_after.revoked, None);
    assert_eq!(
        old_after.status(Utc::now()),
        "active",
        "works during the grace period"
    );
    assert_eq!(fx.reload(&old).await, old_after);
    let by_prefix = store.api_key_by_prefix(&new.prefix).await.unwrap().unwrap();
    assert_eq!(by_prefix.principal.id, alice.id);

    // Rotating the old key again is refused (and creates nothing); the new one can be rotated.
    let before = store.list_api_keys(ws, Some(alice.id)).await.unwrap().len();
    assert_conflict(
        store.rotate_api_key(ws, old.id, successor, grace_end).await,
        "id",
    );
    assert_eq!(
        store.list_api_keys(ws, Some(alice.id)).await.unwrap().len(),
        before
    );
    let (newer, new_after) = store
        .rotate_api_key(ws, new.id, successor, grace_end)
        .await
        .unwrap();
    assert_eq!(new_after.rotated_to, Some(newer.id));

    // The grace period never extends a key's own earlier expiry.
    let soon = now_micros() + 600_000_000;
    let short = store
        .create_api_key(ws, new_key(fx.admin.id, "short", None, Some(soon)))
        .await
        .unwrap();
    let (short_new, short_after) = store
        .rotate_api_key(ws, short.id, successor, now_micros() + 7_200_000_000)
        .await
        .unwrap();
    assert_eq!(short_after.expires.map(to_micros), Some(soon));
    assert_eq!(short_new.expires.map(to_micros), Some(soon));
    assert_eq!(short_new.role, None);

    // A key without expiry gets the grace end.
    let forever = fx.key(ws, fx.admin.id, "forever").await;
    let (forever_new, forever_after) = store
        .rotate_api_key(ws, forever.id, successor, grace_end)
        .await
        .unwrap();
    assert_eq!(forever_after.expires.map(to_micros), Some(grace_end));
    assert_eq!(forever_new.expires, None);
}

async fn only_an_active_unrotated_key_can_be_rotated(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let ws2 = fx.other_workspace("second").await;
    let grace_end = now_micros() + 3_600_000_000;
    let count = || async { store.list_api_keys(ws, None).await.unwrap().len() };

    let revoked = fx.key(ws, fx.admin.id, "revoked").await;
    store.revoke_api_key(ws, revoked.id).await.unwrap();
    let expired = store
        .create_api_key(
            ws,
            new_key(fx.admin.id, "expired", None, Some(now_micros() - 1_000_000)),
        )
        .await
        .unwrap();
    let before = count().await;

    let mut attempted = Vec::new();
    let mut make = |k: &StoredApiKey| {
        let n = successor(k);
        attempted.push(n.prefix.clone());
        n
    };
    assert_conflict(
        store
            .rotate_api_key(ws, revoked.id, &mut make, grace_end)
            .await,
        "id",
    );
    assert_conflict(
        store
            .rotate_api_key(ws, expired.id, &mut make, grace_end)
            .await,
        "id",
    );
    assert_not_found(
        store
            .rotate_api_key(ws2.id, fx.admin_key.id, &mut make, grace_end)
            .await,
    );
    assert_not_found(
        store
            .rotate_api_key(ws, Uuid::now_v7(), &mut make, grace_end)
            .await,
    );
    assert_eq!(count().await, before, "a refused rotation creates no key");
    for prefix in &attempted {
        assert!(store.api_key_by_prefix(prefix).await.unwrap().is_none());
    }
    // The refused keys are unchanged.
    let r = fx.reload(&revoked).await;
    assert_eq!((r.rotated_to, r.expires), (None, None));
    assert_eq!(fx.reload(&expired).await, expired);

    // A key whose grace period is over (rotated with grace 0) cannot be rotated either.
    let k = fx.key(ws, fx.admin.id, "k").await;
    let (_, k_after) = store
        .rotate_api_key(ws, k.id, successor, now_micros())
        .await
        .unwrap();
    assert_eq!(k_after.status(Utc::now()), "expired");
    assert_conflict(
        store.rotate_api_key(ws, k.id, successor, grace_end).await,
        "id",
    );
}

// ---------------------------------------------------------------------------------------------
// Audit log

async fn pending_audit_records_are_finished(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let actor = fx.admin.id.to_string();

    let mut e = entry(Some(ws), "admin", &actor, "work_pool.update", "pending");
    e.target = Some("work_pool:etl".into());
    e.key_id = Some(fx.admin_key.id);
    e.status = 0;
    e.detail = Some(json!({"before": 1}));
    let kept = store.insert_audit_pending(e).await.unwrap();

    let mut e = entry(Some(ws), "admin", &actor, "work_pool.create", "pending");
    e.target = None;
    let set = store.insert_audit_pending(e).await.unwrap();

    store
        .finish_audit(
            kept,
            "success",
            200,
            None,
            Some(json!({"changed": ["paused"]})),
        )
        .await
        .unwrap();
    store
        .finish_audit(set, "denied", 403, Some("work_pool:new".into()), None)
        .await
        .unwrap();

    let log = store.list_audit(ws, &filter()).await.unwrap();
    assert_eq!(log.len(), 2);
    let (newest, oldest) = (&log[0], &log[1]);
    assert_eq!(newest.id, set);
    assert_eq!(oldest.id, kept);

    assert_eq!(oldest.outcome, "success");
    assert_eq!(oldest.status, 200);
    assert_eq!(
        oldest.target.as_deref(),
        Some("work_pool:etl"),
        "target kept"
    );
    assert_eq!(oldest.detail, Some(json!({"changed": ["paused"]})));
    assert_eq!(oldest.workspace_id, Some(ws));
    assert_eq!(
        oldest.actor,
        json!({"kind": "user", "id": actor, "name": "admin", "key_id": fx.admin_key.id.to_string()})
    );
    assert_eq!(oldest.action, "work_pool.update");
    assert_eq!(oldest.method, "POST");
    assert_eq!(oldest.path, "/api/work_pool.update");
    assert_eq!(oldest.source.as_deref(), Some("10.0.0.1"));

    assert_eq!(newest.outcome, "denied");
    assert_eq!(newest.status, 403);
    assert_eq!(newest.target.as_deref(), Some("work_pool:new"));
    assert_eq!(newest.detail, None);
    assert!(newest.time >= oldest.time);
}

async fn audit_log_is_filtered_paged_and_isolated(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let ws2 = fx.other_workspace("second").await;
    let (alice, bob) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let pause = || tokio::time::sleep(Duration::from_millis(5));

    let records = [
        ("alice", &alice, "work_pool.create", "success"),
        ("bob", &bob, "api_key.create", "success"),
        ("alice", &alice, "api_key.revoke", "denied"),
        ("bob", &bob, "work_pool.delete", "failed"),
        ("alice", &alice, "apikey.other", "success"),
    ];
    let mut since = None;
    for (i, (name, id, action, outcome)) in records.iter().enumerate() {
        if i == 3 {
            pause().await;
            since = Some(Utc::now());
            pause().await;
        }
        store
            .insert_audit(entry(Some(ws), name, id, action, outcome))
            .await
            .unwrap();
    }
    // Records of another workspace, and of none, never show up.
    store
        .insert_audit(entry(
            Some(ws2.id),
            "alice",
            &alice,
            "api_key.create",
            "success",
        ))
        .await
        .unwrap();
    store
        .insert_audit(entry(None, "alice", &alice, "work_pool.create", "success"))
        .await
        .unwrap();

    let all = store.list_audit(ws, &filter()).await.unwrap();
    assert_eq!(
        actions(&all),
        [
            "apikey.other",
            "work_pool.delete",
            "api_key.revoke",
            "api_key.create",
            "work_pool.create"
        ],
        "newest first"
    );
    assert!(all.iter().all(|e| e.workspace_id == Some(ws)));
    assert!(all.windows(2).all(|w| w[0].time >= w[1].time));
    let other = store.list_audit(ws2.id, &filter()).await.unwrap();
    assert_eq!(actions(&other), ["api_key.create"]);
    assert!(!all.iter().any(|e| e.id == other[0].id));

    let run = |f: AuditFilter| async move { store.list_audit(ws, &f).await.unwrap() };

    // Actor by name and by id.
    let by_name = run(AuditFilter {
        actor: Some("alice".into()),
        ..filter()
    })
    .await;
    assert_eq!(
        actions(&by_name),
        ["apikey.other", "api_key.revoke", "work_pool.create"]
    );
    let by_id = run(AuditFilter {
        actor: Some(bob.clone()),
        ..filter()
    })
    .await;
    assert_eq!(actions(&by_id), ["work_pool.delete", "api_key.create"]);
    assert!(run(AuditFilter {
        actor: Some("carol".into()),
        ..filter()
    })
    .await
    .is_empty());

    // Action, exact (prefixes: `audit_action_prefix_matches_literally`).
    let exact = run(AuditFilter {
        action: Some("work_pool.create".into()),
        ..filter()
    })
    .await;
    assert_eq!(actions(&exact), ["work_pool.create"]);
    let none = run(AuditFilter {
        action: Some("work_pool".into()),
        ..filter()
    })
    .await;
    assert!(none.is_empty(), "without `*` the action must match exactly");

    // Outcome.
    let denied = run(AuditFilter {
        outcome: Some("denied".into()),
        ..filter()
    })
    .await;
    assert_eq!(actions(&denied), ["api_key.revoke"]);
    let alice_ok = run(AuditFilter {
        actor: Some("alice".into()),
        outcome: Some("success".into()),
        ..filter()
    })
    .await;
    assert_eq!(actions(&alice_ok), ["apikey.other", "work_pool.create"]);

    // Since.
    let recent = run(AuditFilter { since, ..filter() }).await;
    assert_eq!(actions(&recent), ["apikey.other", "work_pool.delete"]);
    let recent_bob = run(AuditFilter {
        since,
        actor: Some("bob".into()),
        ..filter()
    })
    .await;
    assert_eq!(actions(&recent_bob), ["work_pool.delete"]);

    // Cursor paging: two pages of 3 cover the 5 records exactly once, in order.
    let page1 = run(AuditFilter {
        limit: 3,
        ..filter()
    })
    .await;
    assert_eq!(page1.len(), 3);
    let page2 = run(AuditFilter {
        limit: 3,
        cursor: Some(page1.last().unwrap().id),
        ..filter()
    })
    .await;
    assert_eq!(page2.len(), 2);
    let paged: Vec<Uuid> = page1.iter().chain(&page2).map(|e| e.id).collect();
    let everything: Vec<Uuid> = all.iter().map(|e| e.id).collect();
    assert_eq!(paged, everything);
    assert_eq!(paged.iter().collect::<HashSet<_>>().len(), 5);
    let page3 = run(AuditFilter {
        limit: 3,
        cursor: Some(page2.last().unwrap().id),
        ..filter()
    })
    .await;
    assert!(page3.is_empty());
    // Paging with a filter.
    let alice_page = run(AuditFilter {
        actor: Some("alice".into()),
        limit: 1,
        cursor: Some(by_name[0].id),
        ..filter()
    })
    .await;
    assert_eq!(actions(&alice_page), ["api_key.revoke"]);
}

/// `action: "api_key.*"` selects the actions starting with `api_key.`, taken literally: `_` and
/// `%` in the prefix are ordinary characters, not LIKE wildcards.
async fn audit_action_prefix_matches_literally(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    let actor = fx.admin.id.to_string();
    for action in [
        "work_pool.create",
        "api_key.create",
        "apikey.other",
        "api-key.lookalike",
        "api_key.revoke",
        "work_pool.delete",
    ] {
        store
            .insert_audit(entry(Some(ws), "admin", &actor, action, "success"))
            .await
            .unwrap();
    }
    let run = |action: &str| {
        let f = AuditFilter {
            action: Some(action.into()),
            ..filter()
        };
        async move { store.list_audit(ws, &f).await.unwrap() }
    };
    assert_eq!(
        actions(&run("api_key.*").await),
        ["api_key.revoke", "api_key.create"]
    );
    assert_eq!(
        actions(&run("work_pool.*").await),
        ["work_pool.delete", "work_pool.create"]
    );
    assert_eq!(actions(&run("apikey.*").await), ["apikey.other"]);
    assert_eq!(actions(&run("*").await).len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Upgrade

fn split_statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

const SCHEMA_3: [(i64, &str, &str); 3] = [
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "pool_submit_rate",
        include_str!("../../migrations/0002_pool_submit_rate.sql"),
    ),
    (
        3,
        "active_indexes",
        include_str!("../../migrations/0003_active_indexes.sql"),
    ),
];

async fn upgrade_from_schema_3_turns_old_keys_into_users(db: TestDb) {
    sqlx::any::install_default_drivers();
    let url = if db.url.starts_with("sqlite:") {
        format!("{}?mode=rwc", db.url)
    } else {
        db.url.clone()
    };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    for (_, _, sql) in SCHEMA_3 {
        for statement in split_statements(sql) {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
    }
    sqlx::query(
        "CREATE TABLE pushpool_migrations \
         (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (version, name, _) in SCHEMA_3 {
        sqlx::query("INSERT INTO pushpool_migrations (version, name, applied) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
            .bind(now_micros())
            .execute(&pool)
            .await
            .unwrap();
    }
    let ws_id = Uuid::now_v7();
    let created = now_micros();
    sqlx::query("INSERT INTO workspaces (id, name, created) VALUES ($1, $2, $3)")
        .bind(ws_id.to_string())
        .bind("default")
        .bind(created)
        .execute(&pool)
        .await
        .unwrap();
    let insert_key = |id: Uuid,
                      name: &'static str,
                      prefix: String,
                      hash: String,
                      role: &'static str,
                      admin: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO api_keys (id, workspace_id, name, prefix, hash, role, created, admin) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id.to_string())
            .bind(ws_id.to_string())
            .bind(name)
            .bind(prefix)
            .bind(hash)
            .bind(role)
            .bind(created)
            .bind(admin)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let owner = generate_api_key();
    let owner_id = Uuid::now_v7();
    insert_key(
        owner_id,
        "owner",
        owner.prefix.clone(),
        owner.hash.clone(),
        "owner",
        1,
    )
    .await;
    let dev = generate_api_key();
    let dev_id = Uuid::now_v7();
    insert_key(
        dev_id,
        "ci",
        dev.prefix.clone(),
        dev.hash.clone(),
        "developer",
        0,
    )
    .await;
    pool.close().await;

    let store = connect(&db, 4).await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        pushpool::store::SCHEMA_VERSION
    );

    let found = store
        .api_key_by_prefix(&owner.prefix)
        .await
        .unwrap()
        .expect("the old key still authenticates");
    assert_eq!(found.key.id, owner_id);
    assert_eq!(found.key.hash, owner.hash);
    assert_eq!(found.key.workspace_id, ws_id);
    assert_eq!(found.key.role, None, "the old role became the principal's");
    assert_eq!(found.key.status(Utc::now()), "active");
    assert_eq!(found.principal.kind, PrincipalKind::User);
    assert!(found.principal.admin, "the admin flag moves to the user");
    assert_eq!(found.principal.id, found.key.principal_id);
    assert_eq!(found.principal.name, format!("owner-{}", owner.prefix));
    let (ws, role) = store
        .workspace_access("default", found.principal.id)
        .await
        .unwrap()
        .expect("workspace kept");
    assert_eq!((ws.id, ws.name.as_str()), (ws_id, "default"));
    assert_eq!(role.as_deref(), Some("owner"));

    let dev_found = store.api_key_by_prefix(&dev.prefix).await.unwrap().unwrap();
    assert_eq!(dev_found.key.id, dev_id);
    assert_eq!(dev_found.key.role, None);
    assert!(!dev_found.principal.admin);
    assert_ne!(dev_found.principal.id, found.principal.id);
    let (_, dev_role) = store
        .workspace_access("default", dev_found.principal.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dev_role.as_deref(), Some("developer"));
    assert_eq!(store.list_members(ws_id).await.unwrap().len(), 2);

    // The upgraded owner can manage the workspace like any other owner.
    assert_conflict(
        store
            .set_member_role(ws_id, &found.principal.name, "viewer")
            .await,
        "role",
    );
    store.close().await;

    // Reconnecting does not migrate again.
    let store = connect(&db, 4).await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        pushpool::store::SCHEMA_VERSION
    );
    assert_eq!(store.list_users().await.unwrap().len(), 2);
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// Two owners demote each other at the same time, many times: a workspace must never be left
/// without an owner.
async fn concurrent_demotions_keep_an_owner(db: TestDb) {
    let fx = fixture(&db).await;
    let (store, ws) = (&fx.store, fx.ws.id);
    store.create_user("alice", false).await.unwrap();
    store.add_member(ws, "alice", "owner").await.unwrap();
    for round in 0..30 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let demote = |user: &'static str| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.set_member_role(ws, user, "viewer").await
            })
        };
        let (a, b) = (demote("admin"), demote("alice"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let owners: Vec<String> = store
            .list_members(ws)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.role == "owner")
            .map(|m| m.user)
            .collect();
        assert!(
            !owners.is_empty(),
            "round {round}: both demotions succeeded ({a:?}, {b:?}); the workspace has no owner"
        );
        assert!(
            a.is_err() || b.is_err(),
            "round {round}: one demotion must be refused"
        );
        for user in ["admin", "alice"] {
            store.set_member_role(ws, user, "owner").await.unwrap();
        }
    }
}
