//! The API end to end, on SQLite and PostgreSQL: a user's lifecycle over HTTP with a controller
//! (`service`), the authorization matrix (`authz`), the audit log (`audit`) and random bodies
//! thrown at every endpoint (`fuzz`), random sequences of security calls (`escalation_model`), the OpenAPI document (`openapi`: complete for every route,
//! 405 for unserved methods; `openapi_valid`: the real binary's document is valid OpenAPI 3.1).

mod audit;
mod authz;
mod authz_events;
mod escalation;
mod escalation_model;
mod events;
mod fuzz;
mod hardening;
mod identity;
mod notify;
mod openapi;
mod openapi_valid;
mod overrides;
mod ranges;
mod retries;
mod schedules;
mod service;
