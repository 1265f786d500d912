//! Cloud identity across the execution boundary: what a workspace's jobs may use of the
//! controller's own standing (its ambient AWS and Google credentials, files on its disk, calls to
//! endpoints the template names). Each is an instance-level power, held by a workspace only when
//! the instance administrator grants it ([`WorkspaceGrant`]) or, for endpoints, when the instance
//! configuration allows the URL (`--allowed-endpoint`). [`check`] is the one rule, applied when a
//! pool or deployment is created or changed and again before every submission.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use pushpool_provider::{Cloud, Need};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A power the instance administrator grants a workspace.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum WorkspaceGrant {
    /// Jobs may run with the controller's own AWS credentials (no role of the pool's own).
    #[serde(rename = "ambient-aws")]
    AmbientAws,
    /// Jobs may run with the controller's Application Default Credentials for Google Cloud.
    #[serde(rename = "ambient-gcp")]
    AmbientGcp,
    /// Jobs may name credential files or profiles on the controller's disk.
    #[serde(rename = "host-credential-files")]
    HostCredentialFiles,
    /// Jobs may send their provider calls to any `endpoint_url`.
    #[serde(rename = "custom-endpoints")]
    CustomEndpoints,
}

impl WorkspaceGrant {
    /// Every grant, in a stable order.
    pub const ALL: [WorkspaceGrant; 4] = [
        WorkspaceGrant::AmbientAws,
        WorkspaceGrant::AmbientGcp,
        WorkspaceGrant::HostCredentialFiles,
        WorkspaceGrant::CustomEndpoints,
    ];

    /// The grant's name (`ambient-aws`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceGrant::AmbientAws => "ambient-aws",
            WorkspaceGrant::AmbientGcp => "ambient-gcp",
            WorkspaceGrant::HostCredentialFiles => "host-credential-files",
            WorkspaceGrant::CustomEndpoints => "custom-endpoints",
        }
    }

    /// What it allows, for listings.
    pub fn description(self) -> &'static str {
        match self {
            WorkspaceGrant::AmbientAws => "run Lambda jobs with the controller's own AWS identity",
            WorkspaceGrant::AmbientGcp => {
                "run Cloud Run jobs with the controller's Application Default Credentials"
            }
            WorkspaceGrant::HostCredentialFiles => {
                "name credential files and AWS profiles on the controller's disk"
            }
            WorkspaceGrant::CustomEndpoints => {
                "send provider calls to any endpoint_url (beyond --allowed-endpoint)"
            }
        }
    }
}

impl fmt::Display for WorkspaceGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkspaceGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkspaceGrant::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "must be one of {}",
                    WorkspaceGrant::ALL.map(|g| g.as_str()).join(", ")
                )
            })
    }
}

/// The grants a workspace holds.
pub type Grants = BTreeSet<WorkspaceGrant>;

/// The instance's endpoint allowance: URL prefixes any workspace may use as `endpoint_url`
/// (`--allowed-endpoint`, e.g. `http://127.0.0.1` for emulators).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedEndpoints(Vec<String>);

impl AllowedEndpoints {
    /// From the configured prefixes (blank ones ignored, trailing `/` dropped).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(prefixes: I) -> Self {
        AllowedEndpoints(
            prefixes
                .into_iter()
                .map(|p| p.as_ref().trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    /// True when `url` starts with an allowed prefix on a boundary: `http://127.0.0.1` allows
    /// `http://127.0.0.1:5000/x` but not `http://127.0.0.1.evil.example` nor
    /// `http://127.0.0.1@evil.example`.
    pub fn allows(&self, url: &str) -> bool {
        let url = url.trim().to_ascii_lowercase();
        self.0
            .iter()
            .any(|prefix| match url.strip_prefix(prefix.as_str()) {
                Some(rest) => {
                    rest.is_empty() || rest.starts_with(['/', '?', '#']) || {
                        // A port may follow a prefix that has none.
                        let after_host = !prefix
                            .split_once("://")
                            .is_some_and(|(_, h)| h.contains(['/', ':']));
                        after_host
                            && rest.starts_with(':')
                            && rest[1..].split(['/', '?', '#']).next().is_some_and(|p| {
                                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                            })
                    }
                }
                None => false,
            })
    }

    /// The prefixes, for messages.
    pub fn prefixes(&self) -> &[String] {
        &self.0
    }
}

/// Why a job configuration may not run in a workspace: the field and the rule, with how to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    /// The job-configuration field concerned.
    pub field: String,
    /// What is refused and how to fix it.
    pub message: String,
}

/// Checks what a job configuration relies on ([`Need`]s, from the provider) against the
/// workspace's grants and the instance's endpoint allowance.
pub fn check(
    needs: &[Need],
    workspace: &str,
    grants: &Grants,
    endpoints: &AllowedEndpoints,
) -> Result<(), Refusal> {
    let ask = |grant: WorkspaceGrant| {
        format!("or ask the instance administrator to grant it: `pushpool workspace grant {workspace} {grant}`")
    };
    for need in needs {
        match need {
            Need::AmbientIdentity {
                cloud,
                field,
                how_to_fix,
            } => {
                let (grant, what) = match cloud {
                    Cloud::Aws => (WorkspaceGrant::AmbientAws, "AWS"),
                    Cloud::Gcp => (WorkspaceGrant::AmbientGcp, "Google Cloud"),
                };
                if !grants.contains(&grant) {
                    return Err(Refusal {
                        field: field.clone(),
                        message: format!(
                            "names no credentials of the pool's own, so the job would run with the controller's own {what} identity, which workspace `{workspace}` is not granted (`{grant}`); {how_to_fix}, {}",
                            ask(grant)
                        ),
                    });
                }
            }
            Need::HostFile { field } => {
                let grant = WorkspaceGrant::HostCredentialFiles;
                if !grants.contains(&grant) {
                    return Err(Refusal {
                        field: field.clone(),
                        message: format!(
                            "names credentials on the controller's disk, which workspace `{workspace}` is not granted (`{grant}`); give the pool credentials of its own instead, {}",
                            ask(grant)
                        ),
                    });
                }
            }
            Need::Endpoint { field, url } => {
                let grant = WorkspaceGrant::CustomEndpoints;
                if !grants.contains(&grant) && !endpoints.allows(url) {
                    let allowed = if endpoints.prefixes().is_empty() {
                        "none is allowed on this instance".to_string()
                    } else {
                        format!("allowed: {}", endpoints.prefixes().join(", "))
                    };
                    return Err(Refusal {
                        field: field.clone(),
                        message: format!(
                            "is a custom endpoint ({allowed}), which workspace `{workspace}` is not granted (`{grant}`): the provider's calls and credentials go there; leave it unset for the provider's own API, {} or to add it to --allowed-endpoint",
                            ask(grant)
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_prefixes_match_on_a_boundary() {
        let allowed = AllowedEndpoints::new(["http://127.0.0.1", "https://run.example.com/v2/"]);
        for ok in [
            "http://127.0.0.1",
            "http://127.0.0.1:5000",
            "http://127.0.0.1:5000/x",
            "HTTP://127.0.0.1/",
            "https://run.example.com/v2",
            "https://run.example.com/v2/jobs",
        ] {
            assert!(allowed.allows(ok), "{ok}");
        }
        for refused in [
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1@evil.example",
            "http://127.0.0.1:5000@evil.example",
            "http://127.0.0.10",
            "https://127.0.0.1",
            "https://run.example.com/v22",
            "https://run.example.com",
        ] {
            assert!(!allowed.allows(refused), "{refused}");
        }
        assert!(!AllowedEndpoints::default().allows("http://127.0.0.1"));
    }

    #[test]
    fn each_need_takes_its_grant() {
        let ambient = Need::AmbientIdentity {
            cloud: Cloud::Aws,
            field: "credentials".into(),
            how_to_fix: "give a role",
        };
        let file = Need::HostFile {
            field: "credentials.service_account_file".into(),
        };
        let endpoint = Need::Endpoint {
            field: "endpoint_url".into(),
            url: "http://127.0.0.1:9".into(),
        };
        let none = Grants::new();
        let e = check(
            std::slice::from_ref(&ambient),
            "team",
            &none,
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.field, "credentials");
        assert!(e.message.contains("ambient-aws"), "{}", e.message);
        assert!(e.message.contains("give a role"), "{}", e.message);
        let aws = Grants::from([WorkspaceGrant::AmbientAws]);
        assert!(check(&[ambient], "team", &aws, &Default::default()).is_ok());
        assert_eq!(
            check(
                std::slice::from_ref(&file),
                "team",
                &aws,
                &Default::default()
            )
            .unwrap_err()
            .field,
            "credentials.service_account_file"
        );
        let files = Grants::from([WorkspaceGrant::HostCredentialFiles]);
        assert!(check(&[file], "team", &files, &Default::default()).is_ok());
        assert!(check(
            std::slice::from_ref(&endpoint),
            "team",
            &none,
            &Default::default()
        )
        .is_err());
        let local = AllowedEndpoints::new(["http://127.0.0.1"]);
        assert!(check(std::slice::from_ref(&endpoint), "team", &none, &local).is_ok());
        let custom = Grants::from([WorkspaceGrant::CustomEndpoints]);
        assert!(check(&[endpoint], "team", &custom, &Default::default()).is_ok());
    }

    #[test]
    fn grant_names_round_trip() {
        for g in WorkspaceGrant::ALL {
            assert_eq!(g.as_str().parse::<WorkspaceGrant>(), Ok(g));
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
        assert!("root".parse::<WorkspaceGrant>().is_err());
    }
}
