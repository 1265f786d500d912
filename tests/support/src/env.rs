//! The process environment of the provider suites: nothing leaves loopback.

use std::sync::Once;

/// Loopback is reached directly, never through a proxy.
pub fn bypass_proxies() {
    for (k, v) in [
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("no_proxy", "127.0.0.1,localhost"),
    ] {
        std::env::set_var(k, v);
    }
}

/// The AWS SDK sees only these static credentials: no IMDS, no shared config files, no
/// proxies for loopback.
pub fn static_aws_credentials(access_key_id: &str, secret_access_key: &str) {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", access_key_id),
        ("AWS_SECRET_ACCESS_KEY", secret_access_key),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/pushpool-test-aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/pushpool-test-aws-credentials",
        ),
    ] {
        std::env::set_var(k, v);
    }
    bypass_proxies();
}

/// Once per process: [`static_aws_credentials`] `testing`/`testing`, and no session token,
/// profile, endpoint override, web identity or container credentials from the machine.
pub fn aws_test_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        static_aws_credentials("testing", "testing");
        for k in [
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_LAMBDA",
            "AWS_ENDPOINT_URL_SQS",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ] {
            std::env::remove_var(k);
        }
    });
}

/// Once per process: [`bypass_proxies`], and no `HTTP(S)_PROXY` variables at all.
pub fn loopback_only() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        bypass_proxies();
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            std::env::remove_var(k);
        }
    });
}
