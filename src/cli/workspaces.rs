//! `pushpool workspace …`: workspaces, and saving a new workspace's owner key.

use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};

use super::api::{Api, CliError};
use super::input;
use super::output::{emit, field, key_values, list_table, time_field};
use super::{get_and_show, send_and_show, OutputFormat};

/// `pushpool workspace …`
#[derive(clap::Args, Debug, Clone)]
pub struct WorkspaceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: WorkspaceCommand,
}

/// Workspace commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum WorkspaceCommand {
    /// Create a workspace; its owner key is saved to $PUSHPOOL_HOME/keys/<NAME>.key (else
    /// ./.pushpool/keys/<NAME>.key).
    Create {
        /// Workspace name.
        name: String,
    },
    /// List the workspaces the API key's principal belongs to, with its role (`*`: the key's own).
    #[command(visible_alias = "list")]
    Ls,
    /// Grant a workspace a cloud-identity power (instance administrators): `ambient-aws`,
    /// `ambient-gcp`, `host-credential-files` or `custom-endpoints`.
    Grant {
        /// Workspace name (not `workspace`: that id is the global `--workspace` option's).
        #[arg(value_name = "WORKSPACE")]
        name: String,
        /// The grant.
        grant: String,
    },
    /// Take a cloud-identity grant from a workspace (instance administrators).
    Revoke {
        /// Workspace name.
        #[arg(value_name = "WORKSPACE")]
        name: String,
        /// The grant.
        grant: String,
    },
    /// Every workspace's cloud-identity grants (instance administrators).
    Grants,
}

pub(super) async fn workspace(
    api: &Api,
    out: OutputFormat,
    key_home: &Path,
    command: WorkspaceCommand,
) -> Result<i32, CliError> {
    match command {
        WorkspaceCommand::Create { name } => {
            let workspace = send_and_show(
                api,
                out,
                Method::POST,
                api.url(&["workspaces"]),
                Some(&json!({ "name": name })),
                |w| {
                    key_values(&[
                        ("name", field(w, "name")),
                        ("id", field(w, "id")),
                        ("role", field(w, "role")),
                        ("created", time_field(w, "created")),
                    ])
                },
            )
            .await?;
            let secret = workspace
                .get("api_key")
                .and_then(|k| k.get("key"))
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty());
            let Some(secret) = secret else {
                eprintln!("warning: the API sent no owner key for the new workspace");
                return Ok(0);
            };
            let ws_name = workspace
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(&name);
            save_owner_key(out, key_home, ws_name, secret);
        }
        WorkspaceCommand::Grant { name, grant } => {
            send_and_show(
                api,
                out,
                Method::PUT,
                api.url(&["grants", &name, &grant]),
                None,
                |g| {
                    key_values(&[
                        ("workspace", field(g, "workspace")),
                        ("grant", field(g, "grant")),
                        ("allows", field(g, "description")),
                        ("granted by", field(g, "granted_by")),
                        ("granted at", time_field(g, "granted_at")),
                    ])
                },
            )
            .await?;
        }
        WorkspaceCommand::Revoke { name, grant } => {
            send_and_show(
                api,
                out,
                Method::DELETE,
                api.url(&["grants", &name, &grant]),
                None,
                |_| format!("Revoked `{grant}` from workspace `{name}`."),
            )
            .await?;
        }
        WorkspaceCommand::Grants => {
            get_and_show(api, out, api.url(&["grants"]), |v| {
                list_table(
                    v,
                    &["WORKSPACE", "GRANT", "GRANTED BY", "GRANTED AT"],
                    |g| {
                        vec![
                            field(g, "workspace"),
                            field(g, "grant"),
                            field(g, "granted_by"),
                            time_field(g, "granted_at"),
                        ]
                    },
                )
            })
            .await?;
        }
        WorkspaceCommand::Ls => {
            get_and_show(api, out, api.url(&["workspaces"]), |v| {
                list_table(v, &["CURRENT", "NAME", "ROLE", "ID", "CREATED"], |w| {
                    let current = w.get("current").and_then(Value::as_bool) == Some(true);
                    vec![
                        if current { "*" } else { "" }.to_string(),
                        field(w, "name"),
                        field(w, "role"),
                        field(w, "id"),
                        time_field(w, "created"),
                    ]
                })
            })
            .await?;
        }
    }
    Ok(0)
}

/// Saves a new workspace's owner key under `key_home/keys/` and says where. When it cannot be
/// saved (a file is already there, or writing fails) the key is printed instead, once, so it is
/// not lost. With `-o json` the key is already in the JSON on stdout and notes go to stderr.
fn save_owner_key(out: OutputFormat, key_home: &Path, workspace: &str, secret: &str) {
    let note = |text: &str| match out {
        OutputFormat::Table => emit(text),
        OutputFormat::Json => eprintln!("{text}"),
    };
    let problem = match input::save_key_file(key_home, workspace, secret) {
        Ok(input::Saved::Written(path)) => {
            note(&format!(
                "\nThe owner API key of `{workspace}` was saved to {} (mode 0600); the CLI uses \
                 it with --workspace {workspace}. It cannot be retrieved again.",
                path.display()
            ));
            return;
        }
        Ok(input::Saved::Exists(path)) => format!(
            "note: {} already exists and was left alone; the new owner key was not saved",
            path.display()
        ),
        Err(e) => format!("warning: the new owner key was not saved: {e}"),
    };
    eprintln!("{problem}");
    if out == OutputFormat::Table {
        emit(&format!(
            "\nThe owner API key of `{workspace}` is shown once and cannot be retrieved again; \
             store it now:\n{secret}"
        ));
    }
}
