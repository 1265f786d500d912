//! The `pushpool` binary: server commands (`up`, `controller`, `api`, `bench`) and the client CLI.

mod bench;
mod bench_command;
mod bench_prefect;
mod bench_schedule;
mod bench_ui;
mod chaos;
mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bench_command::BenchArgs;
use clap::{Parser, Subcommand};
use pushpool::execution::{ProcessPools, ProcessSandbox, SandboxLevel};
use pushpool::server::{bootstrap, serve, shutdown_signal, ServeOptions};
use pushpool::store::crypto::{resolve_key, KeyOptions, SECRET_KEY_ENV};
use pushpool::store::{ConnectOptions, SecretKey, Store};

/// pushpool — run workflow runs on serverless infrastructure through push work pools.
#[derive(Parser, Debug)]
#[command(name = "pushpool", version, about)]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

/// What a workspace's jobs may reach on this instance: local processes (`process` pools) and
/// custom endpoints (docs/security.md, "Execution boundary"). The API and the controller both
/// enforce it.
#[derive(clap::Args, Debug, Clone)]
struct TenantPolicyArgs {
    /// Which workspaces may have `process` pools: `disabled` (none), `admin` (only the
    /// bootstrap workspace `default`, the administrator's) or `all` (any workspace owner may run
    /// commands as this server's user, inside the sandbox).
    #[arg(
        long,
        env = "PUSHPOOL_PROCESS_POOLS",
        value_enum,
        default_value = "admin"
    )]
    process_pools: ProcessPools,
    /// Endpoint URL prefix every workspace's pools may use as `endpoint_url` (repeat, or
    /// comma-separated in the variable), e.g. `http://127.0.0.1` for emulators; other custom
    /// endpoints need the workspace's `custom-endpoints` grant.
    #[arg(
        long = "allowed-endpoint",
        env = "PUSHPOOL_ALLOWED_ENDPOINTS",
        value_delimiter = ','
    )]
    allowed_endpoints: Vec<String>,
    /// Let notification channels, webhook actions and SMTP servers be on private, loopback or
    /// link-local addresses (refused by default, so a workspace cannot reach internal services;
    /// docs/notifications.md).
    #[arg(long, env = "PUSHPOOL_ALLOW_PRIVATE_TARGETS")]
    allow_private_targets: bool,
}

impl TenantPolicyArgs {
    /// The notification worker's settings under this policy.
    fn notify(&self) -> pushpool::notify::worker::NotifyConfig {
        pushpool::notify::worker::NotifyConfig {
            policy: pushpool::notify::TargetPolicy {
                allow_private: self.allow_private_targets,
            },
            ..Default::default()
        }
    }
}

/// The scheduler that runs inside `up` and `controller` (docs/schedules.md): how far ahead it
/// keeps each active schedule's runs.
#[derive(clap::Args, Debug, Clone)]
struct SchedulerArgs {
    /// Do not run the scheduler here (another process does).
    #[arg(long, env = "PUSHPOOL_NO_SCHEDULER")]
    no_scheduler: bool,
    /// Keep at least this many future runs per schedule …
    #[arg(long, env = "PUSHPOOL_SCHEDULER_MIN_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    scheduler_min_runs: u64,
    /// … and at least this many seconds ahead,
    #[arg(long, env = "PUSHPOOL_SCHEDULER_MIN_SECONDS", default_value_t = 3600)]
    scheduler_min_seconds: u64,
    /// but at most this many future runs per schedule …
    #[arg(long, env = "PUSHPOOL_SCHEDULER_MAX_RUNS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    scheduler_max_runs: u64,
    /// … and at most this many seconds ahead (default 100 days).
    #[arg(
        long,
        env = "PUSHPOOL_SCHEDULER_MAX_SECONDS",
        default_value_t = 8_640_000
    )]
    scheduler_max_seconds: u64,
    /// Seconds between scheduler passes.
    #[arg(long, env = "PUSHPOOL_SCHEDULER_INTERVAL_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    scheduler_interval_seconds: u64,
    /// `catchup: all` creates at most this many missed slots per schedule.
    #[arg(long, env = "PUSHPOOL_SCHEDULER_CATCHUP_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    scheduler_catchup_limit: u64,
}

impl SchedulerArgs {
    fn config(&self) -> Option<pushpool::scheduler::SchedulerConfig> {
        let seconds = |s: u64| chrono::Duration::seconds(s.min(i64::MAX as u64 / 1_000_000) as i64);
        (!self.no_scheduler).then(|| pushpool::scheduler::SchedulerConfig {
            min_runs: self.scheduler_min_runs as usize,
            min_time: seconds(self.scheduler_min_seconds),
            max_runs: self.scheduler_max_runs as usize,
            max_time: seconds(self.scheduler_max_seconds),
            catchup_limit: self.scheduler_catchup_limit as usize,
            interval: Duration::from_secs(self.scheduler_interval_seconds),
            ..Default::default()
        })
    }
}

/// Where a command that serves a store named by `--database-url` finds the key that encrypts
/// its secrets at rest (docs/security.md, "Secrets at rest").
#[derive(clap::Args, Debug, Clone)]
struct KeyArgs {
    /// Data directory holding secret.key (default $PUSHPOOL_HOME, else ./.pushpool).
    #[arg(long, env = "PUSHPOOL_HOME")]
    home: Option<PathBuf>,
    /// The secret key file that encrypts secrets at rest (default $PUSHPOOL_HOME/secret.key,
    /// or the key in $PUSHPOOL_SECRET_KEY).
    #[arg(long, env = "PUSHPOOL_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The key, if one is configured: see [`optional_secret_key`].
    fn key(&self) -> anyhow::Result<Option<SecretKey>> {
        optional_secret_key(self.home.clone(), self.secret_key_file.clone())
    }
}

/// How the controller's `process` jobs are sandboxed.
#[derive(clap::Args, Debug, Clone)]
struct SandboxArgs {
    /// `best-effort`: Landlock where the kernel has it, else run with a clean environment and
    /// a private directory only (each run's logs say which); `required`: refuse to run jobs
    /// Landlock cannot restrict.
    #[arg(
        long,
        env = "PUSHPOOL_PROCESS_SANDBOX",
        value_enum,
        default_value = "best-effort"
    )]
    process_sandbox: SandboxLevel,
    /// Where each process job gets its private directory (default
    /// <temp dir>/pushpool-runs-<uid>; never inside the data directory).
    #[arg(long, env = "PUSHPOOL_RUNS_DIR")]
    runs_dir: Option<PathBuf>,
}

impl SandboxArgs {
    /// The sandbox setting, with this binary as the Landlock supervisor.
    fn sandbox(&self) -> ProcessSandbox {
        ProcessSandbox {
            supervisor: std::env::current_exe().ok(),
            runs_dir: self.runs_dir.clone(),
            required: self.process_sandbox == SandboxLevel::Required,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// API and controller in one process on an embedded SQLite store (or --database-url).
    Up {
        /// Data directory (default $PUSHPOOL_HOME, else ./.pushpool).
        #[arg(long, env = "PUSHPOOL_HOME")]
        home: Option<PathBuf>,
        /// API listen address.
        #[arg(long, default_value = "127.0.0.1:4300", env = "PUSHPOOL_LISTEN")]
        listen: SocketAddr,
        /// Use this database instead of the embedded SQLite file.
        #[arg(long, env = "PUSHPOOL_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// URL jobs use to reach the API (default http://<listen>).
        #[arg(long, env = "PUSHPOOL_PUBLIC_API_URL")]
        public_api_url: Option<String>,
        /// Seconds a provider may keep failing status polls with transient errors (429, 5xx,
        /// timeouts) before a run is marked CRASHED.
        #[arg(long, env = "PUSHPOOL_STATUS_DEADLINE_SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        status_deadline_seconds: Option<u64>,
        /// Most runs of one workspace this controller drives at once (fair share: one
        /// workspace's backlog cannot take every slot); default half of the 2,000 in-flight slots.
        #[arg(long, env = "PUSHPOOL_MAX_IN_FLIGHT_PER_WORKSPACE", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_in_flight_per_workspace: Option<u64>,
        /// The secret key file that encrypts secrets at rest (default $PUSHPOOL_HOME/secret.key,
        /// or the key in $PUSHPOOL_SECRET_KEY).
        #[arg(long, env = "PUSHPOOL_SECRET_KEY_FILE")]
        secret_key_file: Option<PathBuf>,
        #[command(flatten)]
        policy: TenantPolicyArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
    /// The controller alone (run several side by side on PostgreSQL), or serving a Prefect
    /// server's push pools with --prefect-api-url (no database; docs/prefect.md).
    Controller {
        /// Store URL (not with --prefect-api-url).
        #[arg(
            long,
            env = "PUSHPOOL_DATABASE_URL",
            hide_env_values = true,
            required_unless_present = "prefect_api_url",
            conflicts_with = "prefect_api_url"
        )]
        database_url: Option<String>,
        #[command(flatten)]
        prefect: cli::prefect::PrefectArgs,
        /// URL jobs use to reach the API.
        #[arg(
            long,
            env = "PUSHPOOL_PUBLIC_API_URL",
            default_value = "http://127.0.0.1:4300"
        )]
        public_api_url: String,
        /// Controller id (lease owner name); default is a fresh one per start.
        #[arg(long, env = "PUSHPOOL_CONTROLLER_ID")]
        id: Option<String>,
        /// Lease length in seconds: how long a vanished controller's runs wait before rescue.
        #[arg(long, env = "PUSHPOOL_LEASE_SECONDS")]
        lease_seconds: Option<u64>,
        /// Seconds a provider may keep failing status polls with transient errors (429, 5xx,
        /// timeouts) before a run is marked CRASHED.
        #[arg(long, env = "PUSHPOOL_STATUS_DEADLINE_SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        status_deadline_seconds: Option<u64>,
        /// Most runs of one workspace this controller drives at once (fair share: one
        /// workspace's backlog cannot take every slot); default half of the 2,000 in-flight slots.
        #[arg(long, env = "PUSHPOOL_MAX_IN_FLIGHT_PER_WORKSPACE", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_in_flight_per_workspace: Option<u64>,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        policy: TenantPolicyArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
    /// The API alone.
    Api {
        /// Store URL.
        #[arg(long, env = "PUSHPOOL_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:4300", env = "PUSHPOOL_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        policy: TenantPolicyArgs,
    },
    /// Secrets at rest: re-encrypt the store's secrets (see docs/security.md).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Drive N runs through full lifecycles on the built-in null provider and report figures.
    Bench(BenchArgs),
    /// Fault-injection suite: create the chaos workspace and N due runs (used by scripts/chaos).
    #[command(hide = true)]
    ChaosSeed {
        /// Store URL.
        #[arg(long)]
        database_url: String,
        /// Runs to create.
        #[arg(long)]
        runs: usize,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Fault-injection suite: check the invariants and print the summary line (used by scripts/chaos).
    #[command(hide = true)]
    ChaosCheck {
        /// Store URL.
        #[arg(long)]
        database_url: String,
        /// The null provider's journal directory.
        #[arg(long)]
        journal_dir: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Prefect mode: work pools on a Prefect server (docs/prefect.md).
    Prefect {
        #[command(subcommand)]
        command: cli::prefect::PrefectCommand,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Subcommand, Debug)]
enum SecretsCommand {
    /// Re-encrypt every secret of the store with a new key, in one transaction. Stop every
    /// pushpool process on the store first; afterwards put the new key where the old one was.
    RotateKey {
        /// Data directory (default $PUSHPOOL_HOME, else ./.pushpool): its pushpool.db is the
        /// store unless --database-url is given, its secret.key the current key unless
        /// --secret-key-file or $PUSHPOOL_SECRET_KEY say otherwise.
        #[arg(long, env = "PUSHPOOL_HOME")]
        home: Option<PathBuf>,
        /// The store (default: the SQLite file in --home).
        #[arg(long, env = "PUSHPOOL_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// The secret key file that encrypts secrets at rest (default $PUSHPOOL_HOME/secret.key,
        /// or the key in $PUSHPOOL_SECRET_KEY).
        #[arg(long, env = "PUSHPOOL_SECRET_KEY_FILE")]
        secret_key_file: Option<PathBuf>,
        /// The new key: read when the file exists, else created (mode 0600) with a fresh key.
        /// Without it, secrets are re-encrypted with the current key (encrypting any value
        /// still stored in plain text).
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PUSHPOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    // The sandbox supervisor of process jobs: restrict this process, then exec the job's
    // command. Before anything else (no runtime, no threads: Landlock restricts one thread).
    #[cfg(feature = "process")]
    {
        let mut args = std::env::args_os();
        if args.nth(1).as_deref() == Some(pushpool_process::sandbox::SUPERVISOR_ARG.as_ref()) {
            std::process::exit(pushpool_process::sandbox::supervise(args));
        }
    }
    // Usage errors exit 1 (the contract); --help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Client(command) => cli::execute(&cli.client, command).await,
            Command::Prefect { command } => match cli::prefect::execute(command).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
            server => {
                init_tracing();
                match run_server(server).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        1
                    }
                }
            }
        }
    });
    std::process::exit(code);
}

/// The secret key of a server command: `--secret-key-file`, else `$PUSHPOOL_SECRET_KEY`, else
/// `home/secret.key`, created (0600) when missing and `create`.
fn secret_key(
    home: Option<PathBuf>,
    file: Option<PathBuf>,
    create: bool,
) -> anyhow::Result<SecretKey> {
    let options = KeyOptions {
        file,
        env: std::env::var(SECRET_KEY_ENV).ok(),
        home: home.unwrap_or_else(|| PathBuf::from(".pushpool")),
        create,
    };
    if create && options.file.is_none() && options.env.as_deref().is_none_or(str::is_empty) {
        pushpool::server::prepare_home(&options.home)?;
    }
    Ok(resolve_key(&options)?)
}

/// The secret key of a command that serves a store named by `--database-url` (`api`,
/// `controller`): as [`secret_key`], but a missing `secret.key` is created only in a data directory
/// named with `--home`/`$PUSHPOOL_HOME`. Without one, no key and no file in `./.pushpool`, the
/// process runs without a key: secrets it writes are stored in plain text (a warning says so)
/// and a store holding encrypted secrets refuses to open, naming the way to configure the key.
/// Creating a key in whatever directory a replica happens to start in would give each replica
/// its own key, and the second replica on a shared store could not start.
fn optional_secret_key(
    home: Option<PathBuf>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<SecretKey>> {
    let configured = file.is_some()
        || std::env::var(SECRET_KEY_ENV).is_ok_and(|v| !v.trim().is_empty())
        || home.is_some()
        || PathBuf::from(".pushpool").join("secret.key").exists();
    if configured {
        return Ok(Some(secret_key(home, file, true)?));
    }
    tracing::warn!(
        "no secret key configured ({SECRET_KEY_ENV}, --secret-key-file or --home): provider \
         credentials and the run-token secret this process writes are stored unencrypted"
    );
    Ok(None)
}

/// Opens the store the server commands name on the command line, sealing secrets with `key`.
async fn open_store(
    database_url: &str,
    key: impl Into<Option<SecretKey>>,
) -> anyhow::Result<Store> {
    let store = Store::connect_with(
        database_url,
        ConnectOptions {
            secret_key: key.into(),
            ..ConnectOptions::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "opening the store at {}",
            pushpool::store::redact_url(database_url)
        )
    })?;
    // Fails at once, naming the key's source, when the key is not the one the store was
    // written with (the run-token secret is made here on a fresh store).
    pushpool::server::run_tokens(&store).await?;
    Ok(store)
}

/// Opens the store at `options.database_url` and serves until a shutdown signal.
async fn connect_and_serve(options: ServeOptions, key: Option<SecretKey>) -> anyhow::Result<()> {
    let store = open_store(&options.database_url, key).await?;
    serve(store, options, shutdown_signal()).await?;
    Ok(())
}

/// The per-workspace in-flight quota flag as a count (clap bounds it to 1..=1,000,000).
fn per_workspace(flag: Option<u64>) -> Option<usize> {
    flag.map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

async fn run_server(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            home,
            listen,
            database_url,
            public_api_url,
            status_deadline_seconds,
            max_in_flight_per_workspace,
            secret_key_file,
            policy,
            sandbox,
            scheduler,
        } => {
            let home = home.unwrap_or_else(|| PathBuf::from(".pushpool"));
            pushpool::server::prepare_home(&home)?;
            let key = secret_key(Some(home.clone()), secret_key_file, true)?;
            let default_db = home.join("pushpool.db");
            if database_url.is_none() {
                pushpool::server::secure_sqlite_files(&default_db)?;
            }
            let url = database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", default_db.display()));
            let store = open_store(&url, key).await?;
            if database_url.is_none() {
                // The connection may have just made `-wal`/`-shm`.
                pushpool::server::secure_sqlite_files(&default_db)?;
            }
            // Records this process under --home; runs of a previous `up` that provably died
            // are adopted at once (docs/reliability.md).
            let (controller_id, _) = pushpool::handover::take_over(&store, &home).await?;
            if let Some(key) = bootstrap(&store, &home).await? {
                println!("Created workspace `default` and its owner API key (shown once, also saved to {}):", home.join("owner.key").display());
                println!("{key}");
            }
            println!(
                "pushpool is up: API http://{listen} (docs http://{listen}/docs), store {}",
                store.redacted_url()
            );
            serve(
                store,
                ServeOptions {
                    database_url: url,
                    listen: Some(listen),
                    controller: true,
                    api_url: public_api_url,
                    home: Some(home),
                    controller_id: Some(controller_id),
                    lease: None,
                    status_deadline: status_deadline_seconds.map(Duration::from_secs),
                    max_in_flight_per_workspace: per_workspace(max_in_flight_per_workspace),
                    process_pools: policy.process_pools,
                    process_sandbox: sandbox.sandbox(),
                    notify: policy.notify(),
                    allowed_endpoints: policy.allowed_endpoints,
                    scheduler: scheduler.config(),
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Controller {
            database_url: None,
            prefect,
            id,
            status_deadline_seconds,
            keys,
            policy,
            sandbox,
            ..
        } => {
            let options = prefect.options(
                id,
                keys.home,
                policy.process_pools,
                policy.allowed_endpoints,
                sandbox.sandbox(),
                status_deadline_seconds.map(Duration::from_secs),
            )?;
            pushpool::controller::prefect::serve::serve_prefect(options, shutdown_signal()).await?;
        }
        Command::Controller {
            database_url: Some(database_url),
            public_api_url,
            id,
            lease_seconds,
            status_deadline_seconds,
            max_in_flight_per_workspace,
            keys,
            policy,
            scheduler,
            sandbox,
            ..
        } => {
            let key = keys.key()?;
            connect_and_serve(
                ServeOptions {
                    database_url,
                    // Its secret.key is one of the paths no process job may reach.
                    home: keys.home,
                    controller: true,
                    api_url: Some(public_api_url),
                    controller_id: id,
                    lease: lease_seconds.map(Duration::from_secs),
                    status_deadline: status_deadline_seconds.map(Duration::from_secs),
                    max_in_flight_per_workspace: per_workspace(max_in_flight_per_workspace),
                    process_pools: policy.process_pools,
                    process_sandbox: sandbox.sandbox(),
                    notify: policy.notify(),
                    allowed_endpoints: policy.allowed_endpoints,
                    scheduler: scheduler.config(),
                    ..ServeOptions::default()
                },
                key,
            )
            .await?;
        }
        Command::Api {
            database_url,
            listen,
            keys,
            policy,
        } => {
            let key = keys.key()?;
            connect_and_serve(
                ServeOptions {
                    database_url,
                    listen: Some(listen),
                    process_pools: policy.process_pools,
                    notify: policy.notify(),
                    allowed_endpoints: policy.allowed_endpoints,
                    ..ServeOptions::default()
                },
                key,
            )
            .await?;
        }
        Command::Secrets {
            command:
                SecretsCommand::RotateKey {
                    home,
                    database_url,
                    secret_key_file,
                    new_key_file,
                },
        } => {
            let home = home.unwrap_or_else(|| PathBuf::from(".pushpool"));
            let url = database_url
                .unwrap_or_else(|| format!("sqlite://{}", home.join("pushpool.db").display()));
            let current = secret_key(Some(home), secret_key_file, false)?;
            let new = match &new_key_file {
                None => current.clone(),
                Some(path) if path.exists() => SecretKey::read_file(path)?,
                Some(path) => SecretKey::create_file(path)?,
            };
            let store = open_store(&url, current.clone()).await?;
            let report = store.reseal_all(&new).await?;
            println!(
                "re-encrypted the secrets of {} setting(s), {} work pool(s), {} deployment(s) and {} flow run(s) with key {} (was {})",
                report.settings, report.work_pools, report.deployments, report.flow_runs,
                new.id(), current.id()
            );
            if let Some(path) = new_key_file {
                println!(
                    "now replace the key from {} with the one in {} before starting pushpool again",
                    current.source(),
                    path.display()
                );
            }
        }
        Command::Bench(args) => bench_command::run(args).await?,
        Command::ChaosSeed {
            database_url,
            runs,
            keys,
        } => {
            let store = open_store(&database_url, keys.key()?).await?;
            chaos::seed(&store, runs).await?;
        }
        Command::ChaosCheck {
            database_url,
            journal_dir,
            keys,
        } => {
            let store = open_store(&database_url, keys.key()?).await?;
            let report = chaos::check(&store, &journal_dir).await?;
            for example in &report.examples {
                eprintln!("  {example}");
            }
            println!("{}", report.line());
            if !report.is_clean() {
                anyhow::bail!("invariants violated: {}", report.line());
            }
        }
        Command::Client(_) | Command::Prefect { .. } => {
            anyhow::bail!("client commands are dispatched before")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: `--process-pools` and `--process-sandbox` on the server commands; `admin` and
    /// `best-effort` by default.
    #[test]
    fn process_flags_parse_with_safe_defaults() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        match parse(&["pushpool", "up"]).unwrap() {
            Command::Up {
                policy, sandbox, ..
            } => {
                assert_eq!(policy.process_pools, ProcessPools::Admin);
                assert_eq!(sandbox.process_sandbox, SandboxLevel::BestEffort);
                assert_eq!(sandbox.runs_dir, None);
            }
            other => panic!("{other:?}"),
        }
        let cmd = parse(&[
            "pushpool",
            "controller",
            "--database-url",
            "x",
            "--process-pools",
            "all",
            "--process-sandbox",
            "required",
            "--runs-dir",
            "/var/lib/runs",
        ])
        .unwrap();
        match cmd {
            Command::Controller {
                policy, sandbox, ..
            } => {
                assert_eq!(policy.process_pools, ProcessPools::All);
                let s = sandbox.sandbox();
                assert!(s.required);
                assert_eq!(s.runs_dir, Some(PathBuf::from("/var/lib/runs")));
                assert!(s.supervisor.is_some());
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "pushpool",
            "api",
            "--database-url",
            "x",
            "--process-pools",
            "disabled",
        ])
        .unwrap()
        {
            Command::Api { policy, .. } => {
                assert_eq!(policy.process_pools, ProcessPools::Disabled)
            }
            other => panic!("{other:?}"),
        }
        let err = parse(&["pushpool", "up", "--process-pools", "some"]).unwrap_err();
        assert!(err.to_string().contains("--process-pools"), "{err}");
    }
}
