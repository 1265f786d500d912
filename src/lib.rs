//! pushpool: runs workflow runs on serverless infrastructure through push work pools.
//!
//! The library holds the domain model ([`model`]), the run state machine ([`state`]), the job
//! template engine ([`template`], part of [`job`], which builds a run's job) and the durable store
//! ([`store`]); the service (controller, API, CLI) is built on them.

pub mod access;
pub mod api;
pub mod auth;
pub mod controller;
pub mod events;
pub mod execution;
pub mod handover;
pub mod identity;
pub mod job;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod redact;
pub mod registry;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod store;
pub mod ui;
/// The template engine, at its old path (it lives in [`job::template`]).
pub use job::template;
