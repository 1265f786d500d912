//! The process environment of the provider suites: nothing leaves loopback.

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
