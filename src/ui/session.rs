//! Sign-in, sign-out, the session cookie and CSRF tokens.
//!
//! - The session cookie `pushpool_session` holds the API key itself (the issue's "kept in a
//!   cookie"): `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends
//!   it), `Path=/ui`, and `Secure` when the request came over HTTPS (`X-Forwarded-Proto: https`
//!   from a TLS proxy). Every page checks the key again, so a revoked key signs out at once.
//! - Every form carries a CSRF token: an HMAC of the key's hash with a server secret kept in the
//!   store, so it changes with the key and cannot be made without the secret. A POST without the
//!   right token is refused (403) before anything runs; so is one whose `Origin` is another
//!   site. The sign-in form, before there is a key, uses a random token also set as a cookie.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::layout::{esc, page_bare};
use super::Ui;
use crate::access::Scope;
use crate::api::table::Method;
use crate::api::{Access, Caller};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "pushpool_session";
/// The sign-in form's CSRF cookie.
const SIGNIN_COOKIE: &str = "pushpool_signin";
/// The store setting holding the CSRF secret.
const CSRF_SECRET_SETTING: &str = "ui_csrf_secret";

/// A dashboard error page: status and message.
#[derive(Debug)]
pub struct UiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl UiError {
    /// An error page.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        UiError {
            status,
            message: message.into(),
        }
    }
    /// 403 with a message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        UiError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        let api = crate::api::ApiError::from(e);
        UiError::new(api.status, api.message)
    }
}

impl From<crate::api::ApiError> for UiError {
    fn from(e: crate::api::ApiError) -> Self {
        UiError::new(e.status, e.message)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = format!(
            "<h1>{} {}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/ui\">Back to the dashboard</a></p>",
            self.status.as_u16(),
            esc(self.status.canonical_reason().unwrap_or("")),
            esc(&self.message)
        );
        (self.status, page_bare("Error", &body)).into_response()
    }
}

/// A page's result.
pub type UiResult<T = Response> = Result<T, UiError>;

/// A signed-in visitor: the API key, who it is in its workspace, and the CSRF token of its forms.
#[derive(Debug, Clone)]
pub struct Session {
    /// The API key (from the cookie).
    pub key: String,
    /// The key's caller in its workspace.
    pub caller: Caller,
    /// The workspace's name.
    pub workspace: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// The peer address, for the audit records of requests made for this session.
    pub peer: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
}

impl Session {
    /// True when the key's scopes include `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.caller.has(scope)
    }
    /// True when the API would let this key call `method path` (a route-table path template),
    /// judged by the route's declared scope: buttons for anything else are not drawn.
    pub fn can(&self, method: Method, path: &str) -> bool {
        match crate::api::routes::find(method, path).map(|r| r.access) {
            Some(Access::Workspace(scope)) => self.has(scope),
            _ => false,
        }
    }
    /// The principal's name and role, for the header.
    pub fn who(&self) -> String {
        let name = self
            .caller
            .key()
            .map(|k| k.principal.name.clone())
            .unwrap_or_default();
        format!("{name} ({})", self.caller.role.as_deref().unwrap_or("none"))
    }
    /// The hidden CSRF field of a form.
    pub fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(&self.csrf)
        )
    }
    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> UiResult<()> {
        let given = form.get("csrf").map(String::as_str).unwrap_or_default();
        if crate::auth::hashes_match(given, &self.csrf) {
            Ok(())
        } else {
            Err(UiError::forbidden(
                "the form's CSRF token is missing or wrong; reload the page and try again",
            ))
        }
    }
}

/// Reads the cookies of a request.
pub fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The secret CSRF tokens are derived from.
async fn secret(ui: &Ui) -> UiResult<Vec<u8>> {
    let value = ui
        .secret
        .get_or_try_init(|| async {
            ui.app
                .store
                .setting_or_init(CSRF_SECRET_SETTING, crate::auth::RunTokens::new_secret)
                .await
                .map(String::into_bytes)
        })
        .await?;
    Ok(value.clone())
}

fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"0").expect("hmac"));
    for p in parts {
        mac.update(p);
        mac.update(b"\0");
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CSRF token of a key's session.
async fn csrf_token(ui: &Ui, key: &str) -> UiResult<String> {
    let secret = secret(ui).await?;
    Ok(hmac_hex(
        &secret,
        &[b"csrf", crate::auth::hash_key(key).as_bytes()],
    ))
}

/// True when the request came over HTTPS (through a TLS-terminating proxy).
fn is_https(headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let standard = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded || standard
}

/// A `Set-Cookie` value with the dashboard's attributes.
pub fn cookie(headers: &HeaderMap, name: &str, value: &str, max_age: Option<i64>) -> String {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if is_https(headers) {
        c.push_str("; Secure");
    }
    c
}

/// Refuses a POST whose `Origin` names another site (SameSite already keeps the cookie from
/// cross-site requests; this is the second lock).
pub fn check_origin(headers: &HeaderMap) -> UiResult<()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split("://").nth(1).unwrap_or_default();
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(UiError::forbidden(format!(
            "a form of another site (`{}`) may not act here",
            crate::access::shorten(origin, 100)
        )))
    }
}

/// Where a visitor without a valid session is sent.
fn to_signin(parts: &Parts) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/ui");
    let target = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    Redirect::to(&format!("/ui/signin?{target}")).into_response()
}

impl FromRequestParts<Ui> for Session {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        let Some(key) = cookies(&parts.headers).remove(SESSION_COOKIE) else {
            return Err(to_signin(parts));
        };
        let caller = match crate::api::guard::key_caller(&ui.app, &key).await {
            Ok(c) => c,
            Err(e) if e.status == StatusCode::UNAUTHORIZED => return Err(to_signin(parts)),
            Err(e) => return Err(UiError::from(e).into_response()),
        };
        let csrf = csrf_token(ui, &key).await.map_err(|e| e.into_response())?;
        let workspace = caller
            .workspace
            .as_ref()
            .map(|w| w.name.clone())
            .unwrap_or_default();
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .cloned();
        Ok(Session {
            key,
            caller,
            workspace,
            csrf,
            peer,
        })
    }
}

/// Reads an `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// A path on this site to go to after sign-in (anything else goes to the dashboard).
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/ui".into(),
    }
}

/// `GET /ui/signin`: the form, with a fresh sign-in CSRF token.
pub async fn signin_page(
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let token = crate::auth::RunTokens::new_secret();
    let next = safe_next(q.get("next"));
    signin_form(&headers, &token, &next, None, StatusCode::OK)
}

fn signin_form(
    headers: &HeaderMap,
    token: &str,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Sign in to pushpool</h1>{error}
<form method="post" action="/ui/signin" class="signin">
<input type="hidden" name="csrf" value="{token}">
<input type="hidden" name="next" value="{next}">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus placeholder="pp_…">
<button type="submit">Sign in</button>
</form>
<p class="muted">The key is kept in an HttpOnly cookie of this site until you sign out. <code>pushpool up</code> wrote the first owner key to <code>$PUSHPOOL_HOME/owner.key</code>.</p>"#,
        token = esc(token),
        next = esc(next),
    );
    (
        status,
        [(
            header::SET_COOKIE,
            cookie(headers, SIGNIN_COOKIE, token, Some(600)),
        )],
        page_bare("Sign in", &body),
    )
        .into_response()
}

/// `POST /ui/signin`: checks the key like the API would and sets the session cookie.
pub async fn signin(State(ui): State<Ui>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(e) = check_origin(&headers) {
        return e.into_response();
    }
    let f = form(&body);
    let expected = cookies(&headers).remove(SIGNIN_COOKIE).unwrap_or_default();
    let given = f.get("csrf").cloned().unwrap_or_default();
    let next = safe_next(f.get("next"));
    if expected.is_empty() || !crate::auth::hashes_match(&given, &expected) {
        return UiError::forbidden(
            "the sign-in form's CSRF token is missing or wrong; reload the page and try again",
        )
        .into_response();
    }
    let key = f
        .get("key")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let fresh = crate::auth::RunTokens::new_secret();
    match crate::api::guard::key_caller(&ui.app, &key).await {
        Ok(_) => {
            let mut response = Redirect::to(&next).into_response();
            let h = response.headers_mut();
            if let Ok(v) = cookie(&headers, SESSION_COOKIE, &key, None).parse() {
                h.append(header::SET_COOKIE, v);
            }
            if let Ok(v) = cookie(&headers, SIGNIN_COOKIE, "", Some(0)).parse() {
                h.append(header::SET_COOKIE, v);
            }
            response
        }
        Err(e) => signin_form(
            &headers,
            &fresh,
            &next,
            Some(&format!("Sign-in refused: {}", e.message)),
            e.status,
        ),
    }
}

/// `POST /ui/signout`: clears the session cookie (CSRF-checked, so no other site signs you out).
pub async fn signout(session: Session, headers: HeaderMap, body: axum::body::Bytes) -> UiResult {
    check_origin(&headers)?;
    session.check_csrf(&form(&body))?;
    let mut response = Redirect::to("/ui/signin").into_response();
    if let Ok(v) = cookie(&headers, SESSION_COOKIE, "", Some(0)).parse() {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// Checks a form POST of a session: same-site origin and the session's CSRF token; the form.
pub fn checked_form(
    session: &Session,
    headers: &HeaderMap,
    body: &[u8],
) -> UiResult<HashMap<String, String>> {
    check_origin(headers)?;
    let f = form(body);
    session.check_csrf(&f)?;
    Ok(f)
}
