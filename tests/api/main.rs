//! The API end to end, on SQLite and PostgreSQL: a user's lifecycle over HTTP with a controller
//! (`service`), the authorization matrix (`authz`), the audit log (`audit`) and random bodies
//! thrown at every endpoint (`fuzz`), the OpenAPI document (`openapi`: complete for every route,
//! 405 for unserved methods; `openapi_valid`: the real binary's document is valid OpenAPI 3.1).

mod audit;
mod authz;
mod escalation;
mod fuzz;
mod hardening;
mod identity;
mod openapi;
mod openapi_valid;
mod ranges;
mod service;
