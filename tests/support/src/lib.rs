//! The shared harness of pushpool's end-to-end test suites (`tests/api`, `tests/store`,
//! `tests/providers`, `tests/secrets.rs`): fresh SQLite and PostgreSQL stores, the service on a
//! free loopback port, controllers that can be killed like crashed processes, and fakes of the
//! AWS Lambda and Cloud Run APIs. Dev-only: never published.

pub mod app;
pub mod aws;
pub mod aws_lambda_fake;
pub mod cloud_run_fake;
pub mod db;
pub mod env;
pub mod server;

pub use app::{infra, spawn_app, state, App, Controllerd};
pub use db::{
    connect, open_store, postgres_base_url, postgres_db, sqlite_db, test_secret_key, TestDb,
};
pub use server::{
    bootstrap_fresh, call_json, http, log_warnings, serve_fresh, serve_fresh_with, Served, Server,
};
