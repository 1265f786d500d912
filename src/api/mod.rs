//! The REST API (axum). Paths, bodies and error shapes follow `CONTRACT.md`.
//!
//! Every route is declared once, as a [`Route`] entry in the table of its resource's file under
//! [`routes`]; the router, the [`guard`] (authentication, authorization, audit), the OpenAPI
//! document ([`openapi`]) and the authorization test matrix are all built from those entries.

mod error;
mod extractors;
pub mod guard;
pub mod openapi;
pub mod routes;
pub mod table;
mod validate;
mod views;

pub use error::{ApiError, ApiResult, ErrorBody};
pub use extractors::{Body, Json, OptionalBody, Query};
pub use guard::{Access, AuditNote, AuditPolicy, Caller};
pub use table::{Method, Route};

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::response::Response;
use axum::Router;
use pushpool_provider::Registry;

use crate::auth::RunTokens;
use crate::metrics::Metrics;
use crate::store::Store;

/// Largest accepted request body (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest base job template, job variables or parameters document, serialized (422 beyond).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest free-text field (descriptions, state messages).
pub const MAX_TEXT_CHARS: usize = 4000;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Providers (for default templates and job validation).
    pub registry: Registry,
    /// Run-token checker.
    pub tokens: RunTokens,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// URL jobs use to reach the API (`PUSHPOOL_API_URL` of jobs claimed through the API).
    pub api_url: String,
    /// Which workspaces may have `process` pools (`--process-pools`).
    pub process_gate: crate::execution::ProcessGate,
    /// Endpoint URL prefixes every workspace's pools may use (`--allowed-endpoint`).
    pub allowed_endpoints: crate::identity::AllowedEndpoints,
    /// Which outbound targets notification channels may have (`--allow-private-targets`).
    pub target_policy: crate::notify::TargetPolicy,
}

async fn not_found(req: Request) -> Response {
    guard::answer_unread(req.into_body(), ApiError::no_route()).await
}

/// The API router: exactly the routes of the table, each behind the [`guard::guard`]; and the
/// web dashboard at `/ui` ([`crate::ui`]), which calls the API router in-process.
pub fn router(state: AppState) -> Router {
    let api = api_router(state.clone());
    crate::ui::router(state, api.clone()).merge(api)
}

/// The API routes alone (what the dashboard calls).
fn api_router(state: AppState) -> Router {
    let mut router = Router::new();
    for r in routes::all() {
        // Routes of one path merge into one method router; the guard answers 405 for the rest.
        router = router.route(r.path, r.method_router());
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .with_state(state)
}
