//! The `pushpool` binary: server commands (`up`, `controller`, `api`, `bench`) and the client CLI.

mod bench;
mod chaos;
mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bench::{run_bench, BenchOptions};
use clap::{Parser, Subcommand};
use pushpool::server::{bootstrap, serve, shutdown_signal, ServeOptions};
use pushpool::store::Store;

/// pushpool — run workflow runs on serverless infrastructure through push work pools.
#[derive(Parser, Debug)]
#[command(name = "pushpool", version, about)]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
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
        /// Endpoint URL prefix every workspace's pools may use as `endpoint_url` (repeat, or
        /// comma-separated in the variable), e.g. `http://127.0.0.1` for emulators; other custom
        /// endpoints need the workspace's `custom-endpoints` grant.
        #[arg(
            long = "allowed-endpoint",
            env = "PUSHPOOL_ALLOWED_ENDPOINTS",
            value_delimiter = ','
        )]
        allowed_endpoints: Vec<String>,
    },
    /// The controller alone (run several side by side on PostgreSQL).
    Controller {
        /// Store URL.
        #[arg(long, env = "PUSHPOOL_DATABASE_URL", hide_env_values = true)]
        database_url: String,
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
        /// Endpoint URL prefix every workspace's pools may use as `endpoint_url` (repeat, or
        /// comma-separated in the variable), e.g. `http://127.0.0.1` for emulators; other custom
        /// endpoints need the workspace's `custom-endpoints` grant.
        #[arg(
            long = "allowed-endpoint",
            env = "PUSHPOOL_ALLOWED_ENDPOINTS",
            value_delimiter = ','
        )]
        allowed_endpoints: Vec<String>,
    },
    /// The API alone.
    Api {
        /// Store URL.
        #[arg(long, env = "PUSHPOOL_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:4300", env = "PUSHPOOL_LISTEN")]
        listen: SocketAddr,
        /// Endpoint URL prefix every workspace's pools may use as `endpoint_url` (repeat, or
        /// comma-separated in the variable), e.g. `http://127.0.0.1` for emulators; other custom
        /// endpoints need the workspace's `custom-endpoints` grant.
        #[arg(
            long = "allowed-endpoint",
            env = "PUSHPOOL_ALLOWED_ENDPOINTS",
            value_delimiter = ','
        )]
        allowed_endpoints: Vec<String>,
    },
    /// Drive N runs through full lifecycles on the built-in null provider and report figures.
    Bench {
        /// `sqlite` (a fresh temp file) or `postgres` (needs --database-url).
        #[arg(long, default_value = "sqlite")]
        store: String,
        /// Store URL (required for postgres; for sqlite a file path/URL instead of a temp file).
        #[arg(long, env = "PUSHPOOL_BENCH_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Number of runs.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Runs per second coming due; 0 makes all due at once.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Null provider submit latency in milliseconds.
        #[arg(long, default_value_t = 0)]
        provider_latency_ms: u64,
        /// Controller instances, each with its own connections.
        #[arg(long, default_value_t = 1)]
        controllers: usize,
    },
    /// Fault-injection suite: create the chaos workspace and N due runs (used by scripts/chaos).
    #[command(hide = true)]
    ChaosSeed {
        /// Store URL.
        #[arg(long)]
        database_url: String,
        /// Runs to create.
        #[arg(long)]
        runs: usize,
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
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
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

/// Opens the store the server commands name on the command line.
async fn open_store(database_url: &str) -> anyhow::Result<Store> {
    Store::connect(database_url)
        .await
        .context("opening the store")
}

/// Opens the store at `options.database_url` and serves until a shutdown signal.
async fn connect_and_serve(options: ServeOptions) -> anyhow::Result<()> {
    let store = open_store(&options.database_url).await?;
    serve(store, options, shutdown_signal()).await?;
    Ok(())
}

async fn run_server(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            home,
            listen,
            database_url,
            public_api_url,
            status_deadline_seconds,
            allowed_endpoints,
        } => {
            let home = home.unwrap_or_else(|| PathBuf::from(".pushpool"));
            pushpool::server::prepare_home(&home)?;
            let default_db = home.join("pushpool.db");
            if database_url.is_none() {
                pushpool::server::secure_sqlite_files(&default_db)?;
            }
            let url = database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", default_db.display()));
            let store = Store::connect(&url).await.with_context(|| {
                format!("opening the store at {}", pushpool::store::redact_url(&url))
            })?;
            if database_url.is_none() {
                // The connection may have just made `-wal`/`-shm`.
                pushpool::server::secure_sqlite_files(&default_db)?;
            }
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
                    controller_id: None,
                    lease: None,
                    status_deadline: status_deadline_seconds.map(Duration::from_secs),
                    allowed_endpoints,
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Controller {
            database_url,
            public_api_url,
            id,
            lease_seconds,
            status_deadline_seconds,
            allowed_endpoints,
        } => {
            connect_and_serve(ServeOptions {
                database_url,
                controller: true,
                api_url: Some(public_api_url),
                controller_id: id,
                lease: lease_seconds.map(Duration::from_secs),
                status_deadline: status_deadline_seconds.map(Duration::from_secs),
                allowed_endpoints,
                ..ServeOptions::default()
            })
            .await?;
        }
        Command::Api {
            database_url,
            listen,
            allowed_endpoints,
        } => {
            connect_and_serve(ServeOptions {
                database_url,
                listen: Some(listen),
                allowed_endpoints,
                ..ServeOptions::default()
            })
            .await?;
        }
        Command::Bench {
            store,
            database_url,
            runs,
            rate,
            provider_latency_ms,
            controllers,
        } => {
            let database_url = match store.as_str() {
                "sqlite" => database_url,
                "postgres" => Some(database_url.context("--store postgres needs --database-url")?),
                other => anyhow::bail!("--store must be `sqlite` or `postgres`, not `{other}`"),
            };
            if runs == 0 {
                anyhow::bail!("--runs must be at least 1");
            }
            let report = run_bench(
                BenchOptions {
                    database_url,
                    runs,
                    rate,
                    provider_latency: Duration::from_millis(provider_latency_ms),
                    controllers,
                },
                |line| eprintln!("{line}"),
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
            if report.double_submits > 0 || report.lost > 0 {
                anyhow::bail!(
                    "bench found {} double submissions and {} lost runs",
                    report.double_submits,
                    report.lost
                );
            }
        }
        Command::ChaosSeed { database_url, runs } => {
            let store = open_store(&database_url).await?;
            chaos::seed(&store, runs).await?;
        }
        Command::ChaosCheck {
            database_url,
            journal_dir,
        } => {
            let store = open_store(&database_url).await?;
            let report = chaos::check(&store, &journal_dir).await?;
            for example in &report.examples {
                eprintln!("  {example}");
            }
            println!("{}", report.line());
            if !report.is_clean() {
                anyhow::bail!("invariants violated: {}", report.line());
            }
        }
        Command::Client(_) => anyhow::bail!("client commands are dispatched before"),
    }
    Ok(())
}
