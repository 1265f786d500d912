//! The providers compiled into this binary: the one place that lists them, one line each.
//!
//! A provider crate behind a cargo feature is registered with [`register!`] when the feature is
//! on. The API, the controller, `bench` and [`crate::redact`] (through [`secret_fields`]) all
//! start from [`default_registry`].
//!
//! The `null` provider (no real work: for benchmarks, chaos runs and tests) is registered only
//! on opt-in: `PUSHPOOL_ENABLE_NULL_PROVIDER=1` in the environment (see [`NULL_PROVIDER_ENV`]),
//! or [`registry_with_null`] from the bench and test code paths. In production it would let a
//! workspace hold controller capacity with runs that cost it nothing.

use std::sync::{Arc, OnceLock};

use pushpool_provider::Registry;

/// Registers `$provider` when the cargo feature `$feature` is on (written `feature => provider`,
/// which also keeps rustfmt from spreading a registration over several lines).
macro_rules! register {
    ($registry:ident, $feature:literal => $provider:expr) => {
        #[cfg(feature = $feature)]
        $registry.register(Arc::new($provider));
    };
}

/// The environment variable that registers the `null` provider when set to `1`.
pub const NULL_PROVIDER_ENV: &str = "PUSHPOOL_ENABLE_NULL_PROVIDER";

/// Every provider compiled into this binary; the `null` provider (tuned by the environment,
/// [`pushpool_null::NullProvider::from_env`]) only when [`NULL_PROVIDER_ENV`] is `1` (always in
/// this crate's unit tests).
pub fn default_registry() -> Registry {
    let opted_in = null_provider_opt_in(std::env::var(NULL_PROVIDER_ENV).ok().as_deref());
    registry_for(opted_in || cfg!(test))
}

/// [`default_registry`] plus the `null` provider, whatever the environment: for benchmarks and
/// tests.
pub fn registry_with_null() -> Registry {
    registry_for(true)
}

/// Whether the value of [`NULL_PROVIDER_ENV`] opts in: exactly `1`.
fn null_provider_opt_in(value: Option<&str>) -> bool {
    value == Some("1")
}

fn registry_for(include_null: bool) -> Registry {
    let mut registry = Registry::new();
    register!(registry, "process" => pushpool_process::ProcessProvider::new());
    register!(registry, "aws-lambda" => pushpool_aws_lambda::AwsLambdaProvider::new());
    register!(registry, "gcp-cloud-run" => pushpool_gcp_cloud_run::CloudRunProvider::new());
    register!(registry, "example" => pushpool_example::ExampleProvider::new());
    if include_null {
        registry.register(Arc::new(pushpool_null::NullProvider::from_env()));
    }
    registry
}

/// The secret fields the compiled-in providers declare (see
/// [`pushpool_provider::Provider::secret_fields`]), sorted.
pub fn secret_fields() -> &'static [&'static str] {
    static FIELDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    FIELDS.get_or_init(|| default_registry().secret_fields())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    /// The file under `templates/` that CONTRACT.md promises for a pool type.
    fn contract_file(pool_type: &str) -> String {
        format!("{}.json", pool_type.trim_end_matches(":push"))
    }

    #[test]
    fn built_in_default_templates_are_the_files_in_templates() {
        let registry = default_registry();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![];
        for entry in std::fs::read_dir(root.join("templates")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let file_template: Value = serde_json::from_str(&text).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let provider = registry
                .pool_types()
                .into_iter()
                .find(|t| contract_file(t) == name)
                .and_then(|t| registry.get(t))
                .unwrap_or_else(|| panic!("templates/{name} belongs to no registered provider"));
            assert_eq!(
                provider.default_base_job_template(),
                file_template,
                "templates/{name} differs from the `{}` provider's default template",
                provider.pool_type()
            );
            files.push(name);
        }
        files.sort();
        assert_eq!(
            files,
            [
                "aws-lambda.json",
                "cloud-run-v2.json",
                "null.json",
                "process.json"
            ]
        );
    }

    #[test]
    fn every_registered_provider_conforms_to_the_template_contract() {
        let registry = default_registry();
        for pool_type in registry.pool_types() {
            let provider = registry.get(pool_type).unwrap();
            pushpool_provider::conformance::check_template(provider.as_ref()).unwrap();
        }
    }

    #[test]
    fn secret_fields_come_from_the_providers() {
        assert!(secret_fields().contains(&"service_account_info"));
        assert!(secret_fields().contains(&"external_id"));
    }

    /// Regression (issue 19 item 7): the test-only `null` provider was registered in production.
    #[test]
    fn the_null_provider_is_opt_in() {
        assert!(registry_for(false).get(pushpool_null::POOL_TYPE).is_none());
        assert!(registry_for(true).get(pushpool_null::POOL_TYPE).is_some());
        assert!(!null_provider_opt_in(None));
        assert!(!null_provider_opt_in(Some("0")));
        assert!(!null_provider_opt_in(Some("")));
        assert!(null_provider_opt_in(Some("1")));
    }
}
