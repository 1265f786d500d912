//! The route table, one file per resource. Each file holds its handlers, its request and
//! response types, and a `ROUTES` slice with one [`Route`] entry per operation; [`TABLE`] lists
//! those slices. Adding a route: write the handler and add its entry to its resource's `ROUTES`.

pub mod access;
pub mod api_keys;
pub mod audit;
pub mod claims;
pub mod deployments;
pub mod events;
pub mod grants;
pub mod hooks;
pub mod jobs;
pub mod notify;
pub mod pools;
pub mod queues;
pub mod run_filters;
pub mod runs;
pub mod schedules;
pub mod system;

use super::table::{Method, Route};

/// Every route of the API, by resource.
pub const TABLE: &[&[Route]] = &[
    system::ROUTES,
    access::ROUTES,
    grants::ROUTES,
    audit::ROUTES,
    pools::ROUTES,
    queues::ROUTES,
    claims::ROUTES,
    deployments::ROUTES,
    runs::ROUTES,
    schedules::ROUTES,
    api_keys::ROUTES,
    jobs::ROUTES,
    events::ROUTES,
    notify::ROUTES,
    hooks::ROUTES,
];

/// Every route of the API.
pub fn all() -> impl Iterator<Item = &'static Route> {
    TABLE.iter().flat_map(|group| group.iter())
}

/// The route of a method and a path template.
pub fn find(method: Method, path: &str) -> Option<&'static Route> {
    all().find(|r| r.method == method && r.path == path)
}

/// The methods served at a path template, in [`Method::ALL`] order.
pub fn methods_at(path: &str) -> Vec<Method> {
    Method::ALL
        .into_iter()
        .filter(|m| find(*m, path).is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::guard::{Access, AuditPolicy};

    #[test]
    fn every_route_is_listed_once_and_says_what_it_is() {
        let mut seen = std::collections::HashSet::new();
        for r in all() {
            let what = format!("{} {}", r.method.as_str(), r.path);
            assert!(seen.insert((r.method, r.path)), "duplicate {what}");
            assert!(r.action.contains('.'), "{what}: action {}", r.action);
            assert!(!r.summary.is_empty(), "{what}: no summary");
            assert!(r.replies[0].is_some(), "{what}: no success answer");
            if r.path.starts_with("/api/workspaces/{ws}") {
                assert!(matches!(r.access, Access::Workspace(_)), "{what}");
            }
            // Only reads may go unaudited on success (claim is WhenChanged; preview, which
            // runs the template's schema on the caller's values, is audited: issue 19 item 6).
            assert!(
                r.method == Method::Get
                    || r.access == Access::RunToken
                    || r.audit != AuditPolicy::DeniedOnly,
                "{what}"
            );
        }
    }
}
