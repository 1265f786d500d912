//! AWS SDK clients per credentials/region/endpoint combination, built once and cached.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use tokio::sync::Mutex;

use crate::config::{CredentialsConfig, LambdaJobConfig};

/// What distinguishes two sets of clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    region: Option<String>,
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
            self.region.as_deref().unwrap_or("(none configured)"),
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

/// A cache of [`Clients`].
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, Clients>>,
}

impl ClientCache {
    /// The clients for a job's region, endpoint, credentials and retry settings.
    pub async fn get(&self, job: &LambdaJobConfig) -> Clients {
        let key = ClientKey {
            region: job.region.clone(),
            endpoint_url: job.endpoint_url.clone(),
            credentials: job.credentials.clone(),
            max_attempts: job.max_attempts,
        };
        let mut map = self.clients.lock().await;
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        let sdk = load(&key).await;
        let clients = Clients {
            lambda: aws_sdk_lambda::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(&sdk),
            region: sdk.region().map(|r| r.to_string()),
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
