-- Retries and tags (issue 13, items 5 and 6; docs/retries.md).
-- A deployment's retry policy (JSON: retries, retry_delay_seconds, retry_jitter_factor, retry_on)
-- and tags (JSON array), NULL for none. Each run gets a copy at creation (with its own overrides).
ALTER TABLE deployments ADD COLUMN retry_policy TEXT;
ALTER TABLE deployments ADD COLUMN tags TEXT;
ALTER TABLE flow_runs ADD COLUMN retry_policy TEXT;
ALTER TABLE flow_runs ADD COLUMN tags TEXT;
-- One row per (run, tag), for the run list's `tag` filter.
CREATE TABLE flow_run_tags (
  run_id TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  tag TEXT NOT NULL,
  PRIMARY KEY (run_id, tag)
);
CREATE INDEX flow_run_tags_tag ON flow_run_tags (workspace_id, tag, run_id);
-- The run list's `since` / `until` filters (on the scheduled time).
CREATE INDEX flow_runs_workspace_scheduled ON flow_runs (workspace_id, scheduled_time);
