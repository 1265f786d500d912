-- Issue 16: why a FAILED or CRASHED run failed (docs/error-summaries.md). One row per run, for
-- its latest failed attempt; kept out of flow_runs so the hot run queries do not read it.
CREATE TABLE run_error_summaries (
  run_id TEXT PRIMARY KEY,
  attempt BIGINT NOT NULL,
  summary TEXT NOT NULL,
  updated BIGINT NOT NULL
);
