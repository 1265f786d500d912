-- Deployment schedules (issue 13): several per deployment. `kind` is cron, interval or rrule and
-- `spec` its text; `timezone` an IANA name; `anchor` (micros) where intervals count from and the
-- default RRULE DTSTART; `last_slot` (micros) the latest slot the scheduler has created runs up
-- to (NULL: none yet); `version` grows with every change, so a scheduler that read an older
-- version never writes runs for it.
CREATE TABLE schedules (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  spec TEXT NOT NULL,
  timezone TEXT NOT NULL,
  anchor BIGINT NOT NULL,
  active BIGINT NOT NULL DEFAULT 1,
  parameters TEXT NOT NULL,
  job_variables TEXT NOT NULL,
  max_active_runs BIGINT,
  catchup TEXT NOT NULL DEFAULT 'none',
  last_slot BIGINT,
  version BIGINT NOT NULL DEFAULT 1,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL
);
CREATE INDEX schedules_deployment ON schedules (deployment_id);
CREATE INDEX schedules_active ON schedules (active, id);
-- A scheduled run remembers its schedule and slot; one run per (schedule, slot instant), whoever
-- creates it (schedulers racing, a restart, a backfill). NULLs (runs made by hand) never clash.
ALTER TABLE flow_runs ADD COLUMN schedule_id TEXT;
ALTER TABLE flow_runs ADD COLUMN slot_time BIGINT;
CREATE UNIQUE INDEX flow_runs_schedule_slot ON flow_runs (schedule_id, slot_time)
