//! The route table's entry type: one [`Route`] says everything about one operation of the API —
//! method and path, who may call it, what is audited, the handler, the request body and query
//! types, and every answer it can give. The router, the guard, the OpenAPI document and the
//! authorization test matrix are all read from the table in [`super::routes`].
//!
//! Entries are `const`, written as a chain of `const fn` setters:
//!
//! ```ignore
//! Route::post(ws!("/work_pools"), handler!(create_pool))
//!     .summary("Create a work pool")
//!     .access(Access::Workspace(Scope::PoolsWrite))
//!     .audit("work_pool.create", Always)
//!     .body::<CreatePool>()
//!     .created::<WorkPool>()
//!     .errors(&[409]),
//! ```

use axum::routing::{MethodFilter, MethodRouter};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::guard::{Access, AuditPolicy};
use super::AppState;

/// An HTTP method the API serves (HEAD is answered wherever GET is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// GET (and HEAD).
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Method {
    /// Every method a route may have.
    pub const ALL: [Method; 5] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ];

    /// Lowercase, as OpenAPI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Patch => "patch",
            Method::Delete => "delete",
        }
    }

    /// Uppercase, as HTTP writes it.
    pub fn as_upper(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// The method of a request; HEAD counts as GET (axum answers it with the GET handler).
    pub fn of(method: &axum::http::Method) -> Option<Method> {
        match *method {
            axum::http::Method::GET | axum::http::Method::HEAD => Some(Method::Get),
            axum::http::Method::POST => Some(Method::Post),
            axum::http::Method::PUT => Some(Method::Put),
            axum::http::Method::PATCH => Some(Method::Patch),
            axum::http::Method::DELETE => Some(Method::Delete),
            _ => None,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Patch => MethodFilter::PATCH,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// Writes the schema of a type into a generator, returning a `$ref` to it (or the schema itself
/// for inline types).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// Builds the axum method router of a handler for a method; made by [`handler!`].
pub type HandlerFn = fn(MethodFilter) -> MethodRouter<AppState>;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// The request body a route reads.
#[derive(Debug, Clone, Copy)]
pub enum RequestBody {
    /// None.
    None,
    /// A JSON document of this schema.
    Json(SchemaFn),
    /// A JSON document of this schema, or no body at all (then every field takes its default).
    OptionalJson(SchemaFn),
}

/// What a success answer carries.
#[derive(Debug, Clone, Copy)]
pub enum Content {
    /// No body.
    Empty,
    /// A JSON document of this schema.
    Json(SchemaFn),
    /// Text of this media type.
    Text(&'static str),
}

/// One success answer of a route.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// When it is given.
    pub description: &'static str,
    /// Its body.
    pub content: Content,
}

/// One operation of the API. See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path template, axum (and OpenAPI) syntax.
    pub path: &'static str,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// Who may call it (default: an instance administrator, so a forgotten rule fails closed).
    pub access: Access,
    /// A further scope the handler asks for when the request does something more (the scope,
    /// and when), e.g. `runs:override` for a run with `job_variables`; documented in the
    /// OpenAPI document, enforced by the handler ([`super::Caller::require`]).
    pub conditional_scope: Option<(crate::access::Scope, &'static str)>,
    /// Audit action name, `<object>.<verb>`.
    pub action: &'static str,
    /// What is audited.
    pub audit: AuditPolicy,
    /// The handler.
    pub handler: HandlerFn,
    /// The request body.
    pub body: RequestBody,
    /// The query string's parameters, as one struct.
    pub query: Option<SchemaFn>,
    /// Success answers (at most two: e.g. 201 for a new run, 200 for a repeated idempotency key).
    pub replies: [Option<Reply>; 2],
    /// 4xx statuses the handler itself may answer beyond those the route's shape implies (see
    /// [`Route::error_statuses`]).
    pub errors: &'static [u16],
}

impl Route {
    const fn new(method: Method, path: &'static str, handler: HandlerFn) -> Route {
        Route {
            method,
            path,
            summary: "",
            access: Access::Admin,
            conditional_scope: None,
            action: "",
            audit: AuditPolicy::Always,
            handler,
            body: RequestBody::None,
            query: None,
            replies: [None, None],
            errors: &[],
        }
    }
    /// A GET route.
    pub const fn get(path: &'static str, handler: HandlerFn) -> Route {
        Route::new(Method::Get, path, handler)
    }
    /// A POST route.
    pub const fn post(path: &'static str, handler: HandlerFn) -> Route {
        Route::new(Method::Post, path, handler)
    }
    /// A PUT route.
    pub const fn put(path: &'static str, handler: HandlerFn) -> Route {
        Route::new(Method::Put, path, handler)
    }
    /// A PATCH route.
    pub const fn patch(path: &'static str, handler: HandlerFn) -> Route {
        Route::new(Method::Patch, path, handler)
    }
    /// A DELETE route.
    pub const fn delete(path: &'static str, handler: HandlerFn) -> Route {
        Route::new(Method::Delete, path, handler)
    }
    /// Sets the summary.
    pub const fn summary(mut self, summary: &'static str) -> Route {
        self.summary = summary;
        self
    }
    /// Sets who may call it.
    pub const fn access(mut self, access: Access) -> Route {
        self.access = access;
        self
    }
    /// Documents a further scope the handler requires `when` the request asks for more.
    pub const fn conditional_scope(
        mut self,
        scope: crate::access::Scope,
        when: &'static str,
    ) -> Route {
        self.conditional_scope = Some((scope, when));
        self
    }
    /// Sets the audit action and policy.
    pub const fn audit(mut self, action: &'static str, policy: AuditPolicy) -> Route {
        self.action = action;
        self.audit = policy;
        self
    }
    /// The route reads a JSON body of type `T`.
    pub const fn body<T: JsonSchema>(mut self) -> Route {
        self.body = RequestBody::Json(schema_of::<T>);
        self
    }
    /// The route reads an optional JSON body of type `T`.
    pub const fn optional_body<T: JsonSchema>(mut self) -> Route {
        self.body = RequestBody::OptionalJson(schema_of::<T>);
        self
    }
    /// The route reads query parameters, the fields of `T`.
    pub const fn query<T: JsonSchema>(mut self) -> Route {
        self.query = Some(schema_of::<T>);
        self
    }
    /// Adds a success answer.
    pub const fn reply(mut self, reply: Reply) -> Route {
        if self.replies[0].is_none() {
            self.replies[0] = Some(reply);
        } else {
            self.replies[1] = Some(reply);
        }
        self
    }
    /// Answers 200 with a `T`.
    pub const fn ok<T: JsonSchema>(self) -> Route {
        self.reply(Reply::json::<T>(200, "OK"))
    }
    /// Answers 201 with the created `T`.
    pub const fn created<T: JsonSchema>(self) -> Route {
        self.reply(Reply::json::<T>(201, "Created"))
    }
    /// Answers 204 without a body.
    pub const fn no_content(self) -> Route {
        self.reply(Reply {
            status: 204,
            description: "Done",
            content: Content::Empty,
        })
    }
    /// Answers 200 with text of a media type.
    pub const fn text(self, media_type: &'static str) -> Route {
        self.reply(Reply {
            status: 200,
            description: "OK",
            content: Content::Text(media_type),
        })
    }
    /// Handler-specific 4xx statuses (e.g. 409 for a name taken).
    pub const fn errors(mut self, statuses: &'static [u16]) -> Route {
        self.errors = statuses;
        self
    }

    /// The axum method router of this route.
    pub fn method_router(&self) -> MethodRouter<AppState> {
        (self.handler)(self.method.filter())
    }

    /// The names of the path's parameters, in order (`{ws}`, `{name}`, …).
    pub fn path_params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }

    /// Every error status the route can answer, in order: those its shape implies (any URL →
    /// 400, for a `%00` the guard refuses; credentials → 401/403; a path parameter or a
    /// workspace → 404; a body → 400/413/422; a query → 422; the store behind it → 503) and its
    /// own [`Route::errors`].
    pub fn error_statuses(&self) -> Vec<u16> {
        let mut out = self.errors.to_vec();
        out.push(400);
        if self.access != Access::Public {
            out.extend([401, 403, 503]);
        }
        if self.path_params().next().is_some() {
            out.push(404);
        }
        if !matches!(self.body, RequestBody::None) {
            out.extend([400, 413, 422]);
        }
        if self.query.is_some() {
            out.push(422);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Reply {
    /// A JSON answer of type `T`.
    pub const fn json<T: JsonSchema>(status: u16, description: &'static str) -> Reply {
        Reply {
            status,
            description,
            content: Content::Json(schema_of::<T>),
        }
    }
}

/// `|method| axum::routing::on(method, handler)`: the [`HandlerFn`] of a handler function.
macro_rules! handler {
    ($h:path) => {
        |method: ::axum::routing::MethodFilter| ::axum::routing::on(method, $h)
    };
}
pub(crate) use handler;

/// A path under `/api/workspaces/{ws}`.
macro_rules! ws {
    ($p:literal) => {
        concat!("/api/workspaces/{ws}", $p)
    };
}
pub(crate) use ws;
