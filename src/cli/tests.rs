//! Parsing of the client command line, the way `src/main.rs` embeds it.

use super::deployments::DeploymentCommand;
use super::pools::PoolCommand;
use super::workspaces::WorkspaceCommand;
use super::*;
use clap::{CommandFactory as _, Parser};

/// The way `src/main.rs` embeds the client: flattened args and flattened subcommands.
#[derive(Parser, Debug)]
struct TestCli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: TestCommand,
}

#[derive(clap::Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per test
enum TestCommand {
    /// A server command.
    Up,
    #[command(flatten)]
    Client(ClientCommand),
}

#[test]
fn the_command_line_is_well_formed() {
    TestCli::command().debug_assert();
}

#[test]
fn global_options_go_anywhere_and_vars_repeat() {
    let cli = TestCli::try_parse_from([
        "pushpool",
        "deployment",
        "run",
        "etl",
        "--var",
        "image=python:3.12",
        "--var",
        "env.FOO=bar",
        "-o",
        "json",
        "--workspace",
        "team",
        "--watch",
    ])
    .unwrap();
    assert_eq!(cli.client.output, OutputFormat::Json);
    assert_eq!(cli.client.workspace, "team");
    match cli.command {
        TestCommand::Client(ClientCommand::Deployment(DeploymentArgs {
            command: DeploymentCommand::Run {
                name, vars, watch, ..
            },
        })) => {
            assert_eq!(name, "etl");
            assert_eq!(vars, ["image=python:3.12", "env.FOO=bar"]);
            assert!(watch);
        }
        other => panic!("parsed as {other:?}"),
    }
    let cli = TestCli::try_parse_from([
        "pushpool",
        "pool",
        "create",
        "p",
        "--type",
        "process",
        "--concurrency-limit",
        "3",
    ])
    .unwrap();
    assert!(matches!(
        cli.command,
        TestCommand::Client(ClientCommand::Pool(PoolArgs {
            command: PoolCommand::Create {
                concurrency_limit: Some(3),
                ..
            }
        }))
    ));
    assert!(TestCli::try_parse_from(["pushpool", "pool", "default-template", "process"]).is_ok());
    assert!(TestCli::try_parse_from([
        "pushpool", "run", "ls", "--state", "FAILED", "--limit", "5"
    ])
    .is_ok());
    assert!(TestCli::try_parse_from(["pushpool", "workspace", "ls"]).is_ok());
}

fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
    let cli = TestCli::try_parse_from(std::iter::once("pushpool").chain(args.iter().copied()))?;
    match cli.command {
        TestCommand::Client(command) => Ok(command),
        TestCommand::Up => panic!("parsed as `up`"),
    }
}

#[test]
fn key_commands_parse() {
    use access::{KeyArgs, KeyCommand};
    match parse(&[
        "key",
        "create",
        "ci",
        "--role",
        "viewer",
        "--service-account",
        "deployer",
        "--expires-in",
        "30d",
    ])
    .unwrap()
    {
        ClientCommand::Key(KeyArgs {
            command:
                KeyCommand::Create {
                    name,
                    role,
                    service_account,
                    user,
                    expires_at,
                    expires_in,
                },
        }) => {
            assert_eq!(name, "ci");
            assert_eq!(role.as_deref(), Some("viewer"));
            assert_eq!(service_account.as_deref(), Some("deployer"));
            assert_eq!(user, None);
            assert_eq!(expires_at, None);
            assert_eq!(expires_in.as_deref(), Some("30d"));
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(matches!(
        parse(&[
            "key",
            "create",
            "mine",
            "--user",
            "alice",
            "--expires-at",
            "2030-01-01T00:00:00Z"
        ])
        .unwrap(),
        ClientCommand::Key(KeyArgs {
            command: KeyCommand::Create {
                user: Some(_),
                expires_at: Some(_),
                ..
            }
        })
    ));
    // One principal and one expiry at most; a name is required.
    assert!(parse(&[
        "key",
        "create",
        "k",
        "--user",
        "a",
        "--service-account",
        "b"
    ])
    .is_err());
    assert!(parse(&[
        "key",
        "create",
        "k",
        "--expires-at",
        "2030-01-01T00:00:00Z",
        "--expires-in",
        "1d"
    ])
    .is_err());
    assert!(parse(&["key", "create"]).is_err());
    assert!(matches!(
        parse(&["key", "ls", "-o", "json"]).unwrap(),
        ClientCommand::Key(KeyArgs {
            command: KeyCommand::Ls
        })
    ));
    assert!(matches!(
        parse(&["key", "revoke", "0190"]).unwrap(),
        ClientCommand::Key(KeyArgs {
            command: KeyCommand::Revoke { .. }
        })
    ));
    assert!(matches!(
        parse(&["key", "rotate", "0190", "--grace-seconds", "60"]).unwrap(),
        ClientCommand::Key(KeyArgs {
            command: KeyCommand::Rotate {
                grace_seconds: Some(60),
                ..
            }
        })
    ));
    assert!(parse(&["key", "rotate", "0190", "--grace-seconds", "-1"]).is_err());
}

#[test]
fn service_account_commands_parse() {
    use access::{ServiceAccountArgs, ServiceAccountCommand};
    match parse(&[
        "service-account",
        "create",
        "deployer",
        "--role",
        "operator",
    ])
    .unwrap()
    {
        ClientCommand::ServiceAccount(ServiceAccountArgs {
            command: ServiceAccountCommand::Create { name, role },
        }) => assert_eq!((name.as_str(), role.as_str()), ("deployer", "operator")),
        other => panic!("parsed as {other:?}"),
    }
    assert!(parse(&["service-account", "create", "deployer"]).is_err());
    assert!(parse(&["service-account", "ls"]).is_ok());
    match parse(&["service-account", "set-role", "deployer", "viewer"]).unwrap() {
        ClientCommand::ServiceAccount(ServiceAccountArgs {
            command: ServiceAccountCommand::SetRole { id_or_name, role },
        }) => assert_eq!((id_or_name.as_str(), role.as_str()), ("deployer", "viewer")),
        other => panic!("parsed as {other:?}"),
    }
    assert!(matches!(
        parse(&["service-account", "delete", "deployer"]).unwrap(),
        ClientCommand::ServiceAccount(ServiceAccountArgs {
            command: ServiceAccountCommand::Delete { .. }
        })
    ));
}

#[test]
fn user_member_and_role_commands_parse() {
    use access::{MemberArgs, MemberCommand, RoleArgs, RoleCommand, UserArgs, UserCommand};
    assert!(matches!(
        parse(&["user", "create", "alice", "--admin"]).unwrap(),
        ClientCommand::User(UserArgs {
            command: UserCommand::Create { admin: true, .. }
        })
    ));
    assert!(matches!(
        parse(&["user", "create", "bob"]).unwrap(),
        ClientCommand::User(UserArgs {
            command: UserCommand::Create { admin: false, .. }
        })
    ));
    assert!(parse(&["user", "ls"]).is_ok());
    match parse(&["member", "add", "alice", "--role", "viewer"]).unwrap() {
        ClientCommand::Member(MemberArgs {
            command: MemberCommand::Add { user, role },
        }) => assert_eq!((user.as_str(), role.as_str()), ("alice", "viewer")),
        other => panic!("parsed as {other:?}"),
    }
    assert!(parse(&["member", "add", "alice"]).is_err());
    assert!(parse(&["member", "ls"]).is_ok());
    assert!(matches!(
        parse(&["member", "set-role", "alice", "operator"]).unwrap(),
        ClientCommand::Member(MemberArgs {
            command: MemberCommand::SetRole { .. }
        })
    ));
    assert!(matches!(
        parse(&["member", "remove", "alice"]).unwrap(),
        ClientCommand::Member(MemberArgs {
            command: MemberCommand::Remove { .. }
        })
    ));
    match parse(&[
        "role",
        "create",
        "reader",
        "--scope",
        "runs:read",
        "--scope",
        "pools:read",
        "--description",
        "reads",
    ])
    .unwrap()
    {
        ClientCommand::Role(RoleArgs {
            command:
                RoleCommand::Create {
                    name,
                    scopes,
                    description,
                },
        }) => {
            assert_eq!(name, "reader");
            assert_eq!(scopes, ["runs:read", "pools:read"]);
            assert_eq!(description.as_deref(), Some("reads"));
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(parse(&["role", "create", "empty"]).is_err());
    assert!(parse(&["role", "ls"]).is_ok());
    assert!(parse(&["role", "delete", "reader"]).is_ok());
}

#[test]
fn audit_and_workspace_commands_parse() {
    use access::{AuditArgs, AuditCommand};
    match parse(&[
        "audit",
        "ls",
        "--actor",
        "admin",
        "--action",
        "api_key.create",
        "--outcome",
        "denied",
        "--since",
        "2030-01-01T00:00:00Z",
        "--limit",
        "20",
    ])
    .unwrap()
    {
        ClientCommand::Audit(AuditArgs {
            command:
                AuditCommand::Ls {
                    actor,
                    action,
                    outcome,
                    since,
                    limit,
                    cursor,
                },
        }) => {
            assert_eq!(actor.as_deref(), Some("admin"));
            assert_eq!(action.as_deref(), Some("api_key.create"));
            assert_eq!(outcome.as_deref(), Some("denied"));
            assert_eq!(since.as_deref(), Some("2030-01-01T00:00:00Z"));
            assert_eq!(limit, Some(20));
            assert_eq!(cursor, None);
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(parse(&["audit", "ls", "--limit", "many"]).is_err());
    assert!(matches!(
        parse(&["workspace", "create", "team"]).unwrap(),
        ClientCommand::Workspace(WorkspaceArgs {
            command: WorkspaceCommand::Create { .. }
        })
    ));
}

/// Issue 19 item 12: `run logs` never writes a job's control characters raw (ESC sequences, C1,
/// a newline inside one line); tabs and printable text stay as they are.
#[test]
fn run_logs_escape_terminal_control_characters() {
    let page = serde_json::json!([
        {"line": "plain\ttabbed ünïcode"},
        {"line": "\u{1b}]0;pwned\u{7}\u{1b}[2Jred\u{1b}[31m"},
        {"line": "fake\nsecond line\r\u{9b}31m\u{7f}"},
    ]);
    let shown = runs::log_lines(&page);
    assert_eq!(shown.lines().count(), 3, "{shown:?}");
    assert!(
        !shown
            .chars()
            .any(|c| c.is_control() && c != '\t' && c != '\n'),
        "{shown:?}"
    );
    assert_eq!(
        shown,
        "plain\ttabbed ünïcode\n\\x1b]0;pwned\\x07\\x1b[2Jred\\x1b[31m\n\
         fake\\nsecond line\\r\\x9b31m\\x7f"
    );
}

/// Issue 19 item 5: `pool create|update` set which job variables runs may override.
#[test]
fn pool_overridable_variables_flags_parse() {
    let overrides = |args: &[&str]| match parse(args).unwrap() {
        ClientCommand::Pool(PoolArgs {
            command: PoolCommand::Create { overrides, .. } | PoolCommand::Update { overrides, .. },
        }) => overrides.value(),
        other => panic!("parsed as {other:?}"),
    };
    let create = [
        "pool",
        "create",
        "p",
        "--type",
        "process",
        "--overridable-variable",
        "env",
        "--overridable-variable",
        "command",
    ];
    assert_eq!(
        overrides(&create),
        Some(serde_json::json!(["env", "command"]))
    );
    assert_eq!(overrides(&create[..5]), None, "the server's default: any");
    assert_eq!(
        overrides(&["pool", "update", "p", "--no-run-overrides"]),
        Some(serde_json::json!([]))
    );
    assert_eq!(
        overrides(&["pool", "update", "p", "--any-run-overrides"]),
        Some(serde_json::Value::Null)
    );
    assert_eq!(overrides(&["pool", "update", "p"]), None);
    for clash in [
        &[
            "pool",
            "update",
            "p",
            "--no-run-overrides",
            "--any-run-overrides",
        ][..],
        &[
            "pool",
            "update",
            "p",
            "--overridable-variable",
            "env",
            "--no-run-overrides",
        ],
    ] {
        assert!(parse(clash).is_err(), "{clash:?}");
    }
}

/// `workspace grant TEAM GRANT` names the target workspace, not the one the CLI acts in: the
/// administrator's key of `default` must be used (a positional named `workspace` shared the
/// global `--workspace` option's id and switched the CLI to `keys/TEAM.key`).
#[test]
fn workspace_grant_names_its_target_without_switching_workspace() {
    let cli =
        TestCli::try_parse_from(["pushpool", "workspace", "grant", "team", "ambient-aws"]).unwrap();
    assert_eq!(cli.client.workspace, "default");
    match cli.command {
        TestCommand::Client(ClientCommand::Workspace(w)) => match w.command {
            WorkspaceCommand::Grant { name, grant } => {
                assert_eq!((name.as_str(), grant.as_str()), ("team", "ambient-aws"));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let cli = TestCli::try_parse_from(["pushpool", "workspace", "revoke", "team", "ambient-aws"])
        .unwrap();
    assert_eq!(cli.client.workspace, "default");
}

#[test]
fn schedule_commands_parse() {
    let create = parse(&[
        "deployment",
        "create",
        "weekly",
        "--pool",
        "p",
        "--cron",
        "0 9 * * MON",
        "--timezone",
        "Europe/Berlin",
        "--catchup",
        "latest",
    ])
    .unwrap();
    let ClientCommand::Deployment(DeploymentArgs {
        command: DeploymentCommand::Create { schedule, .. },
    }) = create
    else {
        panic!("not a create")
    };
    let body = schedule.body().unwrap().unwrap();
    assert_eq!(body["cron"], "0 9 * * MON");
    assert_eq!(body["timezone"], "Europe/Berlin");
    assert_eq!(body["catchup"], "latest");
    // One spec at most; options without a spec are refused.
    assert!(parse(&[
        "deployment",
        "create",
        "d",
        "--pool",
        "p",
        "--cron",
        "@daily",
        "--interval",
        "60"
    ])
    .is_err());
    let ClientCommand::Deployment(DeploymentArgs {
        command: DeploymentCommand::Create { schedule, .. },
    }) = parse(&[
        "deployment",
        "create",
        "d",
        "--pool",
        "p",
        "--timezone",
        "UTC",
    ])
    .unwrap()
    else {
        panic!("not a create")
    };
    assert!(schedule.body().is_err());
    for args in [
        &["deployment", "schedule", "add", "d", "--interval", "PT1H"][..],
        &["deployment", "schedule", "ls", "d"],
        &[
            "deployment",
            "schedule",
            "pause",
            "d",
            "0190c0de-0000-7000-8000-000000000000",
        ],
        &[
            "deployment",
            "schedule",
            "resume",
            "d",
            "0190c0de-0000-7000-8000-000000000000",
        ],
        &[
            "deployment",
            "schedule",
            "delete",
            "d",
            "0190c0de-0000-7000-8000-000000000000",
        ],
        &["deployment", "upcoming", "d", "-n", "5"],
        &[
            "deployment",
            "backfill",
            "d",
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2026-01-02T00:00:00Z",
        ],
    ] {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    assert!(parse(&[
        "deployment",
        "schedule",
        "add",
        "d",
        "--catchup",
        "sometimes",
        "--cron",
        "@daily"
    ])
    .is_err());
}

#[test]
fn channel_and_hook_commands_parse() {
    let c = parse(&[
        "channel",
        "create",
        "ops",
        "--kind",
        "email",
        "--smtp-host",
        "smtp.example.com",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--to",
        "c@example.com",
    ])
    .unwrap();
    match c {
        ClientCommand::Channel(a) => match a.command {
            notify::ChannelCommand::Create { to, kind, .. } => {
                assert_eq!(to.len(), 2);
                assert_eq!(kind, notify::KindArg::Email);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(parse(&["channel", "test", "ops", "--wait", "5"]).is_ok());
    assert!(parse(&["channel", "deliveries", "--limit", "5"]).is_ok());
    assert!(parse(&[
        "hook",
        "create",
        "gh",
        "--event",
        "github.{{ body.action }}",
        "--signed"
    ])
    .is_ok());
    assert!(parse(&["channel", "create", "x", "--kind", "carrier-pigeon"]).is_err());
}
