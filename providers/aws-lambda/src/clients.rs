//! AWS SDK clients per credentials/region/endpoint combination, built once and cached.
//!
//! Every client sends through an HTTP client whose sockets have **TCP keepalive** on
//! ([`TCP_KEEPALIVE`]): a synchronous `Invoke` holds one idle connection for up to 15 minutes
//! while the function runs, and NAT gateways and load balancers drop connections idle for about
//! 350 s without telling either side, so without keepalive probes the answer of a long function
//! is lost and a successful run would end CRASHED. Lambda's own guidance for long synchronous
//! invocations is the same.
//!
//! A function given as a full ARN is invoked in the ARN's region, whatever `region` says.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::pool::{Client as PoolClient, ConnectionPool};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider as TlsProvider};
use tokio::sync::Mutex;

/// Idle time after which the kernel starts TCP keepalive probes on an SDK connection; well under
/// the ~350 s idle timeout of NAT gateways and load balancers.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

use crate::config::{CredentialsConfig, LambdaJobConfig};

/// What distinguishes two sets of clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    region: Option<String>,
    /// The region of a function ARN, when it differs from `region`.
    lambda_region: Option<String>,
    endpoint_url: Option<String>,
    credentials: CredentialsConfig,
    max_attempts: u32,
}

/// The clients a job needs, sharing one SDK configuration.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Lambda.
    pub lambda: aws_sdk_lambda::Client,
    /// SQS (results queue).
    pub sqs: aws_sdk_sqs::Client,
    /// STS (to name the account in error messages).
    pub sts: aws_sdk_sts::Client,
    /// CloudWatch Logs (the function's own logs; docs/error-summaries.md).
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// The region the configuration resolved to, if any.
    pub region: Option<String>,
    /// The region Lambda is called in: a full function ARN's, else [`Clients::region`].
    pub lambda_region: Option<String>,
    /// The endpoint override, if any.
    pub endpoint_url: Option<String>,
    account: std::sync::Arc<Mutex<Option<String>>>,
}

impl Clients {
    /// Names the target of a call for error messages: function, qualifier, region, account and
    /// endpoint. The account comes from an ARN function name, else from STS
    /// `GetCallerIdentity` (asked once, bounded to 3 s); it is "unknown" when neither works.
    pub async fn describe_target(&self, job: &LambdaJobConfig) -> String {
        let account = match account_from_arn(&job.function_name) {
            Some(a) => a,
            None => self.account().await,
        };
        let qualifier = job
            .qualifier
            .as_deref()
            .map(|q| format!(" (qualifier `{q}`)"))
            .unwrap_or_default();
        format!(
            "Lambda function `{}`{qualifier} in region {}, account {account}, endpoint {}",
            job.function_name,
            self.lambda_region
                .as_deref()
                .or(self.region.as_deref())
                .unwrap_or("(none configured)"),
            self.endpoint_url
                .as_deref()
                .unwrap_or("(the default AWS endpoint)"),
        )
    }

    async fn account(&self) -> String {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return a.clone();
        }
        let asked = tokio::time::timeout(
            Duration::from_secs(3),
            self.sts.get_caller_identity().send(),
        )
        .await;
        let account = match asked {
            Ok(Ok(out)) => out.account().map(str::to_string),
            _ => None,
        };
        match account {
            Some(a) => {
                *cached = Some(a.clone());
                a
            }
            None => "(unknown: STS GetCallerIdentity did not answer)".to_string(),
        }
    }
}

/// The account id in a full or partial function ARN.
pub fn account_from_arn(function: &str) -> Option<String> {
    let parts: Vec<&str> = function.split(':').collect();
    let candidate = if function.starts_with("arn:") {
        parts.get(4).copied()
    } else if parts.len() >= 3 && parts[1] == "function" {
        parts.first().copied()
    } else {
        None
    }?;
    (candidate.len() == 12 && candidate.chars().all(|c| c.is_ascii_digit()))
        .then(|| candidate.to_string())
}

/// The region of a full function ARN (`arn:aws:lambda:<region>:<account>:function:<name>`).
pub fn region_from_arn(function: &str) -> Option<String> {
    let parts: Vec<&str> = function.split(':').collect();
    (function.starts_with("arn:") && parts.len() >= 7 && parts[2] == "lambda")
        .then(|| parts[3])
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// An SDK HTTP client with [`TCP_KEEPALIVE`] on its sockets (rustls with aws-lc, like the SDK's
/// default client; plain `http://` endpoints such as emulators work too).
pub fn keepalive_http_client() -> Option<aws_sdk_lambda::config::SharedHttpClient> {
    let client = ConnectionPool::builder()
        .tcp_keepalive(TCP_KEEPALIVE)
        .tls_provider(TlsProvider::Rustls(CryptoMode::AwsLc))
        .build_https()
        .map_err(|e| format!("{e:?}"))
        .and_then(|pool| PoolClient::new(&pool).map_err(|e| format!("{e:?}")));
    match client {
        Ok(client) => Some(aws_sdk_lambda::config::SharedHttpClient::new(client)),
        Err(error) => {
            tracing::warn!(%error, "could not build the keepalive HTTP client; using the SDK's default");
            None
        }
    }
}

/// A cache of [`Clients`].
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, Clients>>,
}

impl ClientCache {
    /// The clients for a job's region, endpoint, credentials and retry settings.
    pub async fn get(&self, job: &LambdaJobConfig) -> Clients {
        let lambda_region =
            region_from_arn(&job.function_name).filter(|r| Some(r) != job.region.as_ref());
        let key = ClientKey {
            region: job.region.clone(),
            lambda_region,
            endpoint_url: job.endpoint_url.clone(),
            credentials: job.credentials.clone(),
            max_attempts: job.max_attempts,
        };
        let mut map = self.clients.lock().await;
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        let sdk = load(&key).await;
        let lambda = match &key.lambda_region {
            Some(r) => aws_sdk_lambda::Client::from_conf(
                aws_sdk_lambda::config::Builder::from(&sdk)
                    .region(Region::new(r.clone()))
                    .build(),
            ),
            None => aws_sdk_lambda::Client::new(&sdk),
        };
        let region = sdk.region().map(|r| r.to_string());
        let clients = Clients {
            lambda,
            lambda_region: key.lambda_region.clone().or(region.clone()),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(&sdk),
            region,
            endpoint_url: key.endpoint_url.clone(),
            account: Default::default(),
        };
        map.insert(key, clients.clone());
        clients
    }
}

async fn load(key: &ClientKey) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(key.max_attempts));
    if let Some(http) = keepalive_http_client() {
        loader = loader.http_client(http);
    }
    if let Some(region) = &key.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &key.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(profile) = &key.credentials.profile_name {
        loader = loader.profile_name(profile.clone());
    }
    let base = loader.load().await;
    let Some(role) = &key.credentials.role_arn else {
        return base;
    };
    let mut assume = aws_config::sts::AssumeRoleProvider::builder(role.clone())
        .session_name(
            key.credentials
                .role_session_name
                .clone()
                .unwrap_or_else(|| "pushpool".to_string()),
        )
        .configure(&base);
    if let Some(external_id) = &key.credentials.external_id {
        assume = assume.external_id(external_id.clone());
    }
    let provider = assume.build().await;
    base.into_builder()
        .credentials_provider(aws_sdk_lambda::config::SharedCredentialsProvider::new(
            provider,
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_read_from_full_arns_only() {
        assert_eq!(
            region_from_arn("arn:aws:lambda:eu-west-1:123456789012:function:f:prod").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_from_arn("123456789012:function:f"), None);
        assert_eq!(region_from_arn("my-function"), None);
    }

    #[test]
    fn accounts_are_read_from_arns() {
        assert_eq!(
            account_from_arn("arn:aws:lambda:us-east-1:123456789012:function:f:prod").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            account_from_arn("123456789012:function:f").as_deref(),
            Some("123456789012")
        );
        assert_eq!(account_from_arn("my-function"), None);
    }
}
