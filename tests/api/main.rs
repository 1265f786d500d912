//! The API end to end, on SQLite and PostgreSQL: a user's lifecycle over HTTP with a controller
//! (`service`), the authorization matrix (`authz`), the audit log (`audit`) and random bodies
//! thrown at every endpoint (`fuzz`).

mod audit;
mod authz;
mod fuzz;
mod service;
