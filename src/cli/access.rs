//! Access-control commands: `key`, `service-account`, `user`, `member`, `role` and `audit`.
//!
//! Secrets are printed only when the API has just created one (a new or rotated key, a new
//! service account's first key), once, on stdout as the last line so scripts can capture it.

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::api::{Api, CliError};
use super::input;
use super::output::{field, items, key_values, list_table, text, time_field};
use super::{create, delete, get_and_show, send_and_show, show, OutputFormat};

/// `pushpool key …`
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeyCommand,
}

/// API-key commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum KeyCommand {
    /// Create an API key (the secret is shown once).
    Create {
        /// Key name (a label for people).
        name: String,
        /// Cap the key at this role (default: whatever its principal's role allows).
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// Make the key for this service account (id or name) instead of for yourself.
        #[arg(long, value_name = "ID_OR_NAME", conflicts_with = "user")]
        service_account: Option<String>,
        /// Make the key for this member user instead of for yourself.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long, value_name = "RFC3339", conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// How long the key works, e.g. 90m, 12h, 30d, 2w.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List API keys (all with `keys:read`, else your own); never the secrets.
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke an API key: it stops working at once.
    Revoke {
        /// Key id.
        id: String,
    },
    /// Replace an API key with a new one; the old one keeps working for a grace period.
    Rotate {
        /// Key id.
        id: String,
        /// How long the old key keeps working (server default 3600, at most 30 days).
        #[arg(long, value_name = "N")]
        grace_seconds: Option<u32>,
    },
}

/// `pushpool service-account …`
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceAccountArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ServiceAccountCommand,
}

/// Service-account commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ServiceAccountCommand {
    /// Create a service account and its first API key (the secret is shown once).
    Create {
        /// Service account name.
        name: String,
        /// Its role in the workspace.
        #[arg(long, value_name = "ROLE")]
        role: String,
    },
    /// List service accounts.
    #[command(visible_alias = "list")]
    Ls,
    /// Change a service account's role.
    SetRole {
        /// Service account id or name.
        id_or_name: String,
        /// The new role.
        role: String,
    },
    /// Delete a service account (its keys stop working).
    Delete {
        /// Service account id or name.
        id_or_name: String,
    },
}

/// `pushpool user …`
#[derive(clap::Args, Debug, Clone)]
pub struct UserArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: UserCommand,
}

/// User commands (instance administrators only).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum UserCommand {
    /// Create a user (member of no workspace yet; see `member add`).
    Create {
        /// User name.
        name: String,
        /// Make the user an instance administrator.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    #[command(visible_alias = "list")]
    Ls,
}

/// `pushpool member …`
#[derive(clap::Args, Debug, Clone)]
pub struct MemberArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MemberCommand,
}

/// Workspace-membership commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum MemberCommand {
    /// Add a user to the workspace with a role.
    Add {
        /// User name.
        user: String,
        /// Their role in the workspace.
        #[arg(long, value_name = "ROLE")]
        role: String,
    },
    /// List the workspace's members and their roles.
    #[command(visible_alias = "list")]
    Ls,
    /// Change a member's role.
    SetRole {
        /// User name.
        user: String,
        /// The new role.
        role: String,
    },
    /// Remove a user from the workspace (their keys here stop working).
    Remove {
        /// User name.
        user: String,
    },
}

/// `pushpool role …`
#[derive(clap::Args, Debug, Clone)]
pub struct RoleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RoleCommand,
}

/// Role commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RoleCommand {
    /// Create a custom role from permission scopes.
    Create {
        /// Role name.
        name: String,
        /// A permission scope, e.g. `runs:read`. Repeatable.
        #[arg(long = "scope", value_name = "S", required = true)]
        scopes: Vec<String>,
        /// What the role is for.
        #[arg(long, value_name = "D")]
        description: Option<String>,
    },
    /// List built-in and custom roles with their scopes.
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a custom role no one holds.
    Delete {
        /// Role name.
        name: String,
    },
}

/// `pushpool audit …`
#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Audit-log commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AuditCommand {
    /// List audit records, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only records of this actor (name or id).
        #[arg(long, value_name = "A")]
        actor: Option<String>,
        /// Only records of this action, e.g. `api_key.create`.
        #[arg(long, value_name = "A")]
        action: Option<String>,
        /// Only records with this outcome (success, denied, failed, pending).
        #[arg(long, value_name = "O")]
        outcome: Option<String>,
        /// Only records at or after this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// At most this many records (1–1000; server default 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only records older than this record id (the last id of the previous page).
        #[arg(long, value_name = "ID")]
        cursor: Option<String>,
    },
}

/// `kind/name` of a principal or actor object.
fn principal_label(principal: &Value) -> String {
    match (
        principal.get("kind").and_then(Value::as_str),
        principal.get("name").and_then(Value::as_str),
    ) {
        (Some(kind), Some(name)) if kind == name => text(&json!(name)),
        (Some(kind), Some(name)) => text(&json!(format!("{kind}/{name}"))),
        (None, Some(name)) => text(&json!(name)),
        _ => "-".to_string(),
    }
}

/// A key's role cap; a key without one acts with its principal's role.
fn key_role(key: &Value) -> String {
    match key.get("role") {
        None | Some(Value::Null) => "(inherits)".to_string(),
        Some(role) => text(role),
    }
}

fn key_details(key: &Value) -> String {
    key_values(&[
        ("id", field(key, "id")),
        ("name", field(key, "name")),
        ("prefix", field(key, "prefix")),
        (
            "principal",
            principal_label(key.get("principal").unwrap_or(&Value::Null)),
        ),
        ("role", key_role(key)),
        ("status", field(key, "status")),
        ("created", time_field(key, "created")),
        ("expires", time_field(key, "expires")),
        ("revoked", time_field(key, "revoked")),
    ])
}

/// The secret of a key the API has just created, with the warning that it is shown once. The
/// secret is the last line, on its own, so `| tail -n 1` captures it.
fn secret_block(key: &Value) -> Result<String, CliError> {
    let secret = key
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| CliError::Response("the API's answer has no `key`".into()))?;
    Ok(format!(
        "The API key below is shown once and cannot be retrieved again; store it now:\n{secret}"
    ))
}

/// Prints a key the API has just created (`create`, `rotate`): the JSON, or its details and
/// then the secret.
fn show_new_key(
    out: OutputFormat,
    answer: &Value,
    key: &Value,
    details: String,
) -> Result<(), CliError> {
    let secret = secret_block(key)?;
    show(out, answer, |_| format!("{details}\n\n{secret}"));
    Ok(())
}

/// Runs one `key` command.
pub async fn key(api: &Api, out: OutputFormat, command: KeyCommand) -> Result<i32, CliError> {
    match command {
        KeyCommand::Create {
            name,
            role,
            service_account,
            user,
            expires_at,
            expires_in,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            if let Some(role) = role {
                body.insert("role".into(), json!(role));
            }
            if let Some(sa) = service_account {
                body.insert("service_account_id".into(), json!(sa));
            }
            if let Some(user) = user {
                body.insert("user".into(), json!(user));
            }
            let expires = match (expires_at, expires_in) {
                (Some(at), _) => Some(input::parse_time("--expires-at", &at)?),
                (None, Some(within)) => Some(input::time_after(
                    chrono::Utc::now(),
                    input::parse_duration("--expires-in", &within)?,
                )?),
                (None, None) => None,
            };
            if let Some(expires) = expires {
                body.insert("expires_at".into(), json!(expires));
            }
            let key = api
                .send(
                    Method::POST,
                    api.ws_url(&["api_keys"]),
                    Some(&Value::Object(body)),
                )
                .await?
                .body;
            show_new_key(out, &key, &key, key_details(&key))?;
        }
        KeyCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["api_keys"]), |v| {
                list_table(
                    v,
                    &[
                        "ID",
                        "NAME",
                        "PREFIX",
                        "PRINCIPAL",
                        "ROLE",
                        "STATUS",
                        "CREATED",
                        "EXPIRES",
                    ],
                    |k| {
                        vec![
                            field(k, "id"),
                            field(k, "name"),
                            field(k, "prefix"),
                            principal_label(k.get("principal").unwrap_or(&Value::Null)),
                            key_role(k),
                            field(k, "status"),
                            time_field(k, "created"),
                            time_field(k, "expires"),
                        ]
                    },
                )
            })
            .await?;
        }
        KeyCommand::Revoke { id } => {
            send_and_show(
                api,
                out,
                Method::DELETE,
                api.ws_url(&["api_keys", &id]),
                None,
                |k| format!("revoked key {} ({})", field(k, "id"), field(k, "name")),
            )
            .await?;
        }
        KeyCommand::Rotate { id, grace_seconds } => {
            let body = grace_seconds.map(|g| json!({ "grace_seconds": g }));
            let answer = api
                .send(
                    Method::POST,
                    api.ws_url(&["api_keys", &id, "rotate"]),
                    body.as_ref(),
                )
                .await?
                .body;
            let new = answer.get("api_key").unwrap_or(&Value::Null);
            let previous = answer.get("previous").unwrap_or(&Value::Null);
            let details = format!(
                "{}\n\nthe previous key {} keeps working until {}",
                key_details(new),
                field(previous, "id"),
                time_field(previous, "expires"),
            );
            show_new_key(out, &answer, new, details)?;
        }
    }
    Ok(0)
}

fn service_account_details(sa: &Value) -> String {
    key_values(&[
        ("name", field(sa, "name")),
        ("id", field(sa, "id")),
        ("role", field(sa, "role")),
        ("workspace_id", field(sa, "workspace_id")),
        ("created", time_field(sa, "created")),
    ])
}

/// Runs one `service-account` command.
pub async fn service_account(
    api: &Api,
    out: OutputFormat,
    command: ServiceAccountCommand,
) -> Result<i32, CliError> {
    match command {
        ServiceAccountCommand::Create { name, role } => {
            let sa = api
                .send(
                    Method::POST,
                    api.ws_url(&["service_accounts"]),
                    Some(&json!({ "name": name, "role": role })),
                )
                .await?
                .body;
            let key = sa.get("api_key").unwrap_or(&Value::Null);
            let details = format!(
                "{}\n\napi key:\n{}",
                service_account_details(&sa),
                key_details(key)
            );
            show_new_key(out, &sa, key, details)?;
        }
        ServiceAccountCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["service_accounts"]), |v| {
                list_table(v, &["NAME", "ID", "ROLE", "CREATED"], |s| {
                    vec![
                        field(s, "name"),
                        field(s, "id"),
                        field(s, "role"),
                        time_field(s, "created"),
                    ]
                })
            })
            .await?;
        }
        ServiceAccountCommand::SetRole { id_or_name, role } => {
            send_and_show(
                api,
                out,
                Method::PATCH,
                api.ws_url(&["service_accounts", &id_or_name]),
                Some(&json!({ "role": role })),
                service_account_details,
            )
            .await?;
        }
        ServiceAccountCommand::Delete { id_or_name } => {
            delete(
                api,
                out,
                api.ws_url(&["service_accounts", &id_or_name]),
                &format!("deleted service account {id_or_name}"),
            )
            .await?;
        }
    }
    Ok(0)
}

/// Runs one `user` command.
pub async fn user(api: &Api, out: OutputFormat, command: UserCommand) -> Result<i32, CliError> {
    match command {
        UserCommand::Create { name, admin } => {
            send_and_show(
                api,
                out,
                Method::POST,
                api.url(&["users"]),
                Some(&json!({ "name": name, "admin": admin })),
                |u| {
                    key_values(&[
                        ("name", field(u, "name")),
                        ("id", field(u, "id")),
                        ("admin", field(u, "admin")),
                        ("created", time_field(u, "created")),
                    ])
                },
            )
            .await?;
        }
        UserCommand::Ls => {
            get_and_show(api, out, api.url(&["users"]), |v| {
                list_table(v, &["NAME", "ID", "ADMIN", "CREATED"], |u| {
                    vec![
                        field(u, "name"),
                        field(u, "id"),
                        field(u, "admin"),
                        time_field(u, "created"),
                    ]
                })
            })
            .await?;
        }
    }
    Ok(0)
}

fn member_details(member: &Value) -> String {
    key_values(&[
        ("user", field(member, "user")),
        ("user_id", field(member, "user_id")),
        ("role", field(member, "role")),
        ("created", time_field(member, "created")),
        ("updated", time_field(member, "updated")),
    ])
}

/// Runs one `member` command.
pub async fn member(api: &Api, out: OutputFormat, command: MemberCommand) -> Result<i32, CliError> {
    match command {
        MemberCommand::Add { user, role } => {
            create(
                api,
                out,
                "members",
                &json!({ "user": user, "role": role }),
                member_details,
            )
            .await?;
        }
        MemberCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["members"]), |v| {
                list_table(v, &["USER", "ROLE", "CREATED", "UPDATED"], |m| {
                    vec![
                        field(m, "user"),
                        field(m, "role"),
                        time_field(m, "created"),
                        time_field(m, "updated"),
                    ]
                })
            })
            .await?;
        }
        MemberCommand::SetRole { user, role } => {
            send_and_show(
                api,
                out,
                Method::PATCH,
                api.ws_url(&["members", &user]),
                Some(&json!({ "role": role })),
                member_details,
            )
            .await?;
        }
        MemberCommand::Remove { user } => {
            delete(
                api,
                out,
                api.ws_url(&["members", &user]),
                &format!("removed member {user}"),
            )
            .await?;
        }
    }
    Ok(0)
}

/// A role's scopes as one comma-separated cell.
fn scope_list(role: &Value) -> String {
    let scopes: Vec<String> = items(role.get("scopes").unwrap_or(&Value::Null))
        .iter()
        .map(text)
        .collect();
    if scopes.is_empty() {
        "-".to_string()
    } else {
        scopes.join(",")
    }
}

/// Longest description shown in the `role ls` table (the JSON has it whole).
const MAX_DESCRIPTION_CELL: usize = 48;

/// A cell shortened to `max` characters, ending in `…` when cut.
fn shortened(cell: String, max: usize) -> String {
    if cell.chars().count() <= max {
        return cell;
    }
    let mut short: String = cell.chars().take(max.saturating_sub(1)).collect();
    short.truncate(short.trim_end().len());
    short.push('…');
    short
}

/// Runs one `role` command.
pub async fn role(api: &Api, out: OutputFormat, command: RoleCommand) -> Result<i32, CliError> {
    match command {
        RoleCommand::Create {
            name,
            scopes,
            description,
        } => {
            let mut body = json!({ "name": name, "scopes": scopes });
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            send_and_show(
                api,
                out,
                Method::POST,
                api.ws_url(&["roles"]),
                Some(&body),
                |r| {
                    key_values(&[
                        ("name", field(r, "name")),
                        ("description", field(r, "description")),
                        ("scopes", scope_list(r)),
                        ("created", time_field(r, "created")),
                    ])
                },
            )
            .await?;
        }
        RoleCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["roles"]), |v| {
                list_table(v, &["NAME", "BUILTIN", "DESCRIPTION", "SCOPES"], |r| {
                    vec![
                        field(r, "name"),
                        field(r, "builtin"),
                        shortened(field(r, "description"), MAX_DESCRIPTION_CELL),
                        scope_list(r),
                    ]
                })
            })
            .await?;
        }
        RoleCommand::Delete { name } => {
            delete(
                api,
                out,
                api.ws_url(&["roles", &name]),
                &format!("deleted role {name}"),
            )
            .await?;
        }
    }
    Ok(0)
}

/// Runs one `audit` command.
pub async fn audit(api: &Api, out: OutputFormat, command: AuditCommand) -> Result<i32, CliError> {
    match command {
        AuditCommand::Ls {
            actor,
            action,
            outcome,
            since,
            limit,
            cursor,
        } => {
            let since = since
                .map(|s| input::parse_time("--since", &s))
                .transpose()?;
            let mut url = api.ws_url(&["audit_log"]);
            {
                let mut query = url.query_pairs_mut();
                if let Some(actor) = actor {
                    query.append_pair("actor", &actor);
                }
                if let Some(action) = action {
                    query.append_pair("action", &action);
                }
                if let Some(outcome) = outcome {
                    query.append_pair("outcome", &outcome.trim().to_ascii_lowercase());
                }
                if let Some(since) = since {
                    query.append_pair("since", &since);
                }
                if let Some(limit) = limit {
                    query.append_pair("limit", &limit.to_string());
                }
                if let Some(cursor) = cursor {
                    query.append_pair("cursor", &cursor);
                }
            }
            if url.query() == Some("") {
                url.set_query(None);
            }
            get_and_show(api, out, url, |v| {
                list_table(
                    v,
                    &[
                        "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "STATUS", "SOURCE",
                    ],
                    |r| {
                        vec![
                            time_field(r, "time"),
                            principal_label(r.get("actor").unwrap_or(&Value::Null)),
                            field(r, "action"),
                            field(r, "target"),
                            field(r, "outcome"),
                            field(r, "status"),
                            field(r, "source"),
                        ]
                    },
                )
            })
            .await?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_render_principal_and_inherited_role() {
        let key = json!({
            "id": "k1", "name": "ci", "prefix": "pp_ab", "role": null, "status": "active",
            "principal": {"kind": "service_account", "name": "deployer"},
            "created": "2030-01-31T12:00:00Z", "expires": null, "revoked": null,
        });
        let text = key_details(&key);
        assert!(
            text.contains("principal:  service_account/deployer"),
            "{text}"
        );
        assert!(text.contains("role:       (inherits)"), "{text}");
        assert_eq!(key_role(&json!({"role": "viewer"})), "viewer");
        assert_eq!(principal_label(&Value::Null), "-");
        assert_eq!(
            principal_label(&json!({"kind": "anonymous", "name": "anonymous"})),
            "anonymous"
        );
    }

    #[test]
    fn the_secret_is_the_last_line_after_the_warning() {
        let block = secret_block(&json!({"key": "pp_secret"})).unwrap();
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.last(), Some(&"pp_secret"));
        assert!(block.contains("shown once and cannot be retrieved again"));
        assert!(matches!(
            secret_block(&json!({"id": "k1"})),
            Err(CliError::Response(_))
        ));
    }

    #[test]
    fn role_scopes_are_one_cell() {
        assert_eq!(
            scope_list(&json!({"scopes": ["runs:read", "pools:read"]})),
            "runs:read,pools:read"
        );
        assert_eq!(scope_list(&json!({"scopes": []})), "-");
    }

    #[test]
    fn long_cells_are_shortened() {
        assert_eq!(shortened("short".into(), 10), "short");
        assert_eq!(shortened("exactly10!".into(), 10), "exactly10!");
        assert_eq!(shortened("reads runs and pools".into(), 11), "reads runs…");
        assert_eq!(shortened("ééééé".into(), 3), "éé…");
    }
}
