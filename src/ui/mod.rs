//! The web dashboard at `/ui` (issue 15): server-rendered HTML, one stylesheet and one small
//! script, all embedded in the binary (no CDN, no front-end build).
//!
//! Every page acts with the signed-in API key: reads and changes go through the API's own router
//! ([`client::Api`]), so the guard authenticates, authorizes and audits them exactly as it does
//! a request from the CLI, and a page can never do more than its key may. Buttons a key's scopes
//! would have refused are not drawn ([`session::Session::can`] reads the route table). A few
//! aggregates the API has no route for (the dashboard's chart and pool load, a run's live view)
//! are read from the store after the same scope check.
//!
//! Sign-in keeps the API key in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` behind HTTPS);
//! every form carries a CSRF token bound to that key ([`session`]). See docs/ui.md.

mod admin;
pub(crate) mod client;
mod dashboard;
mod deployments;
pub mod docs;
mod layout;
mod pools;
mod runs;
pub(crate) mod session;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::AppState;

/// Shared state of the dashboard's handlers.
#[derive(Clone)]
pub(crate) struct Ui {
    /// The API's shared state (store, registry).
    pub app: AppState,
    /// The API router, called in-process with the session's key.
    pub api: Router,
    /// The secret CSRF tokens are derived from (loaded from the store on first use).
    pub secret: Arc<tokio::sync::OnceCell<Vec<u8>>>,
}

/// The embedded stylesheet.
pub const CSS: &str = include_str!("assets/ui.css");
/// The embedded script.
pub const JS: &str = include_str!("assets/ui.js");

/// The dashboard's routes (`/`, `/ui/…`), answering with the API router `api` for data.
pub fn router(app: AppState, api: Router) -> Router {
    let ui = Ui {
        app,
        api,
        secret: Arc::new(tokio::sync::OnceCell::new()),
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(dashboard::page_handler))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/assets/ui.css", get(css))
        .route("/ui/assets/ui.js", get(js))
        .route(
            "/ui/signin",
            get(session::signin_page).post(session::signin),
        )
        .route("/ui/signout", post(session::signout))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::detail))
        .route("/ui/runs/{id}/live", get(runs::live))
        .route("/ui/runs/{id}/cancel", post(runs::cancel))
        .route("/ui/runs/{id}/rerun", post(runs::rerun))
        .route("/ui/deployments", get(deployments::list))
        .route("/ui/deployments/{name}", get(deployments::detail))
        .route("/ui/deployments/{name}/run", post(deployments::run_now))
        .route("/ui/pools", get(pools::list))
        .route("/ui/pools/{name}", get(pools::detail))
        .route("/ui/pools/{name}/pause", post(pools::pause))
        .route("/ui/pools/{name}/resume", post(pools::resume))
        .route("/ui/events", get(admin::events))
        .route("/ui/automations", get(admin::automations))
        .route("/ui/audit", get(admin::audit))
        .route("/ui/keys", get(admin::keys))
        .route("/ui/keys/{id}/revoke", post(admin::revoke_key))
        .route("/ui/members", get(admin::members))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ui)
}

/// Headers on every dashboard answer: nothing but this origin may be loaded or framed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(layout::CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}
