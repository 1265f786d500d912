//! The outbound-target guard (SSRF): a workspace's webhook, Slack URL or SMTP server must not
//! reach the instance's internal network. Every target is resolved and each resolved address
//! checked: loopback, private (RFC 1918, IPv6 unique local), link-local (cloud metadata at
//! 169.254.169.254), shared (100.64/10), unspecified, broadcast and multicast addresses are
//! refused unless the instance allows private targets (`--allow-private-targets`).
//!
//! The HTTP client resolves names through [`GuardedResolver`], so the address connected to is
//! the address checked (no window for a DNS answer that changes between check and connect), and
//! it follows no redirects.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a target is refused or cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The URL is not an http(s) URL with a host.
    #[error("{0}")]
    BadUrl(String),
    /// The host does not resolve.
    #[error("cannot resolve `{host}`: {error}")]
    Unresolvable {
        /// The host.
        host: String,
        /// The resolver's error.
        error: String,
    },
    /// The host resolves to an address of the instance's internal network.
    #[error(
        "refused: `{host}` resolves to {ip} ({class}); outbound targets on private, loopback or \
         link-local addresses are refused unless the instance allows them (--allow-private-targets)"
    )]
    Private {
        /// The host as given.
        host: String,
        /// The address it resolved to.
        ip: IpAddr,
        /// What kind of address it is.
        class: &'static str,
    },
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn private_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared address space")
            } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_class(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("private")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// Which outbound targets the instance allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Also private, loopback and link-local addresses (tests, trusted single-tenant setups).
    pub allow_private: bool,
}

impl TargetPolicy {
    /// Checks one resolved address of `host`.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), TargetError> {
        match private_class(ip) {
            Some(class) if !self.allow_private => Err(TargetError::Private {
                host: host.to_string(),
                ip,
                class,
            }),
            _ => Ok(()),
        }
    }

    /// Resolves `host` (a name or an IP literal) and checks every address it resolves to: one
    /// internal address refuses the host.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| TargetError::Unresolvable {
                    host: host.to_string(),
                    error: e.to_string(),
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(TargetError::Unresolvable {
                host: host.to_string(),
                error: "no addresses".into(),
            });
        }
        for a in &addrs {
            self.check_ip(host, a.ip())?;
        }
        Ok(addrs)
    }

    /// Checks that `url` is an http(s) URL with a host, and resolves and checks its host.
    pub async fn check_url(&self, url: &str) -> Result<reqwest::Url, TargetError> {
        let parsed = parse_http_url(url)?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        self.resolve(&host, port).await?;
        Ok(parsed)
    }

    /// An HTTP client that resolves through this policy, follows no redirects, never uses a
    /// proxy and gives up after `timeout`.
    pub fn client(&self, timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: *self }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("pushpool/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds")
    }
}

/// Parses `url` as an http(s) URL with a host, without credentials.
pub fn parse_http_url(url: &str) -> Result<reqwest::Url, TargetError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| TargetError::BadUrl(format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::BadUrl(
            "must be an http:// or https:// URL".into(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(TargetError::BadUrl("the URL has no host".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::BadUrl(
            "credentials in the URL are not accepted; use headers".into(),
        ));
    }
    Ok(parsed)
}

/// The HTTP client's resolver: every name is resolved and checked by the policy.
struct GuardedResolver {
    policy: TargetPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let addrs = policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_classified() {
        for (ip, class) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared address space")),
            ("0.0.0.0", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fd00::1", Some("private")),
            ("fe80::1", Some("link-local")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(private_class(ip.parse().unwrap()), class, "{ip}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_naming_the_address() {
        let policy = TargetPolicy::default();
        let err = policy.resolve("localhost", 80).await.unwrap_err();
        match err {
            TargetError::Private { ip, class, .. } => {
                assert!(ip.is_loopback(), "{ip}");
                assert_eq!(class, "loopback");
            }
            other => panic!("{other}"),
        }
        let open = TargetPolicy {
            allow_private: true,
        };
        assert!(open.resolve("127.0.0.1", 80).await.is_ok());
        assert!(matches!(
            parse_http_url("ftp://x"),
            Err(TargetError::BadUrl(_))
        ));
        assert!(parse_http_url("http://u:p@example.com/").is_err());
    }
}
