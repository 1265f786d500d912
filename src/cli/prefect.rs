//! Prefect mode on the command line: the `--prefect-api-url` options of `pushpool controller`
//! and `pushpool prefect pool create|preview` (docs/prefect.md).

use std::path::PathBuf;
use std::time::Duration;

use pushpool::controller::prefect::pools;
use pushpool::controller::prefect::serve::PrefectServeOptions;
use pushpool::controller::prefect::{PrefectAuth, PrefectClient, PrefectSettings};
use pushpool::execution::{ProcessPools, ProcessSandbox};

use super::input::{parse_assignments, read_json_file};

/// How to reach a Prefect API: the variables Prefect users already set.
#[derive(clap::Args, Debug, Clone)]
pub struct PrefectApiArgs {
    /// Prefect API base URL: `http://HOST:4200/api` (self-hosted) or
    /// `https://api.prefect.cloud/api/accounts/ACCOUNT/workspaces/WORKSPACE`.
    #[arg(long = "prefect-api-url", env = "PREFECT_API_URL")]
    pub prefect_api_url: Option<String>,
    /// Prefect API key (bearer token; Prefect Cloud).
    #[arg(long, env = "PREFECT_API_KEY", hide_env_values = true)]
    pub prefect_api_key: Option<String>,
    /// `user:password` of a self-hosted server with basic auth.
    #[arg(long, env = "PREFECT_API_AUTH_STRING", hide_env_values = true)]
    pub prefect_api_auth_string: Option<String>,
}

impl PrefectApiArgs {
    fn auth(&self) -> PrefectAuth {
        PrefectAuth::from_values(
            self.prefect_api_key.clone(),
            self.prefect_api_auth_string.clone(),
        )
    }

    /// A client of the API.
    pub fn client(&self) -> anyhow::Result<PrefectClient> {
        let url = self
            .prefect_api_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--prefect-api-url (or PREFECT_API_URL) is required"))?;
        PrefectClient::new(&url, self.auth()).map_err(anyhow::Error::msg)
    }
}

/// `pushpool controller --prefect-api-url URL [--pool NAME]…`.
#[derive(clap::Args, Debug, Clone)]
pub struct PrefectArgs {
    #[command(flatten)]
    pub api: PrefectApiArgs,
    /// Prefect work pool to serve (repeat); default: every pool whose type has a provider here.
    #[arg(long = "pool", requires = "prefect_api_url")]
    pub pools: Vec<String>,
    /// `PREFECT_API_URL` as jobs should see it, when it differs from --prefect-api-url.
    #[arg(
        long,
        env = "PUSHPOOL_PREFECT_JOB_API_URL",
        requires = "prefect_api_url"
    )]
    pub prefect_job_api_url: Option<String>,
    /// Seconds after which a run left PENDING by a controller with no fresh heartbeat is adopted
    /// (also the heartbeat interval × 3).
    #[arg(long, env = "PUSHPOOL_PREFECT_ORPHAN_AFTER_SECONDS", value_parser = clap::value_parser!(u64).range(3..=3600), requires = "prefect_api_url")]
    pub prefect_orphan_after_seconds: Option<u64>,
}

impl PrefectArgs {
    /// The options of a Prefect-mode controller.
    pub fn options(
        &self,
        id: Option<String>,
        home: Option<PathBuf>,
        process_pools: ProcessPools,
        allowed_endpoints: Vec<String>,
        process_sandbox: ProcessSandbox,
        status_deadline: Option<Duration>,
    ) -> anyhow::Result<PrefectServeOptions> {
        let url =
            self.api.prefect_api_url.clone().ok_or_else(|| {
                anyhow::anyhow!("--prefect-api-url (or PREFECT_API_URL) is required")
            })?;
        let mut settings = PrefectSettings::new(url, self.api.auth());
        settings.pools = self.pools.clone();
        settings.job_api_url = self.prefect_job_api_url.clone();
        if let Some(secs) = self.prefect_orphan_after_seconds {
            settings.orphan_after = Duration::from_secs(secs);
        }
        Ok(PrefectServeOptions {
            settings,
            controller_id: id,
            home,
            process_pools,
            process_sandbox,
            allowed_endpoints,
            status_deadline,
        })
    }
}

/// `pushpool prefect …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum PrefectCommand {
    /// Work pools on the Prefect server.
    Pool {
        #[command(subcommand)]
        command: PrefectPoolCommand,
    },
}

/// `pushpool prefect pool …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum PrefectPoolCommand {
    /// Creates a work pool on the Prefect server with pushpool's default base job template of
    /// its type (or --template).
    Create {
        /// Pool name.
        name: String,
        /// `aws-lambda:push`, `cloud-run-v2:push` or `process`.
        #[arg(long = "type")]
        pool_type: String,
        /// Base job template file (JSON) instead of the default.
        #[arg(long)]
        template: Option<PathBuf>,
        #[command(flatten)]
        api: PrefectApiArgs,
    },
    /// Shows the job configuration a run of a deployment would get, without running anything
    /// (block and variable references are left unresolved; they may hold secrets).
    Preview {
        /// Deployment id or FLOW_NAME/DEPLOYMENT_NAME.
        deployment: String,
        /// Run-level job variable (repeat).
        #[arg(long = "var", value_name = "KEY=JSON")]
        vars: Vec<String>,
        #[command(flatten)]
        api: PrefectApiArgs,
    },
}

/// Runs a `pushpool prefect` command.
pub async fn execute(command: PrefectCommand) -> anyhow::Result<()> {
    let PrefectCommand::Pool { command } = command;
    match command {
        PrefectPoolCommand::Create {
            name,
            pool_type,
            template,
            api,
        } => {
            let template = match &template {
                Some(path) => {
                    Some(read_json_file("--template", path).map_err(|e| anyhow::anyhow!("{e}"))?)
                }
                None => None,
            };
            let client = api.client()?;
            let pool = pools::create_pool(&client, &name, &pool_type, template)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&pool)?);
        }
        PrefectPoolCommand::Preview {
            deployment,
            vars,
            api,
        } => {
            let vars = parse_assignments("--var", &vars).map_err(|e| anyhow::anyhow!("{e}"))?;
            let client = api.client()?;
            let job = pools::preview(&client, &deployment, &vars)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
    }
    Ok(())
}
