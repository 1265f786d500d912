//! Events (issue 14; docs/events.md): Prefect-like names and resources, the filters the API and
//! the stream share, the live stream's polling, and the retention pruner.
//!
//! Writers in the store still name events the short way (`work_pool.created`,
//! `flow_run.state.failed`); [`canonical`] turns those into the documented names
//! (`pushpool.work-pool.created`, `pushpool.flow-run.Failed`) as they are written, so the names
//! are spelled in one place.

pub mod controller;
pub mod names;
pub mod pruner;

pub use names::{canonical, event_kind, flow_run_labels, flow_run_related, resource_id};
