//! Principals (users and service accounts), workspace memberships, custom roles, API keys and the
//! audit log.
//!
//! A user is instance-wide and may be a member of several workspaces; a service account belongs
//! to one workspace and is a member of it only. Every API key belongs to one principal and acts in
//! one workspace. Secrets are never stored: a key is kept as its SHA-256.

mod audit;
mod keys;
mod members;
mod principals;
mod roles;

pub use audit::{AuditEntry, AuditFilter, NewAuditEntry};
pub use keys::{KeyWithPrincipal, NewApiKey, StoredApiKey};
pub use members::{Member, ServiceAccount};
pub use principals::{Principal, PrincipalKind, WorkspaceOwner};
pub use roles::CustomRole;
