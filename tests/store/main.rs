//! The store suites, each test on SQLite and on PostgreSQL: pools, deployments, runs, claims and
//! leases (`runs`); principals, memberships, roles, API keys and the audit log (`access`); the
//! API and a controller through a PostgreSQL outage (`outage`).

mod access;
mod automations;
mod events;
mod outage;
mod plans;
mod retries;
mod runs;
mod schedules;
