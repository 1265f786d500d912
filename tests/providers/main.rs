//! The controller and the providers end to end: the controller driven tick by tick with the null
//! provider on SQLite and PostgreSQL (`controller`), `aws-lambda:push` pools against moto and a
//! fault-injecting fake (`aws_lambda`), `cloud-run-v2:push` pools against a fake Cloud Run Admin
//! API (`cloud_run`), the worked example provider through the whole service (`example`), and the execution
//! boundary of `process` jobs (`sandbox`), and `process` outcomes across a kill -9 of `pushpool up`
//! (`restart`), and the job's own logs and error summaries per provider (`provider_logs`).

mod aws_lambda;
mod cloud_run;
mod controller;
mod events;
mod example;
mod provider_logs;
mod restart;
mod sandbox;
