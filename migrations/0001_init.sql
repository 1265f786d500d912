-- pushpool schema v1. One file serves SQLite and PostgreSQL: ids are TEXT (UUIDs), times are BIGINT
-- microseconds since the Unix epoch (UTC), flags are BIGINT 0/1, JSON documents are TEXT.
CREATE TABLE workspaces (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created BIGINT NOT NULL
);

CREATE TABLE work_pools (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  name TEXT NOT NULL,
  type TEXT NOT NULL,
  description TEXT,
  base_job_template TEXT NOT NULL,
  concurrency_limit BIGINT,
  paused BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  UNIQUE (workspace_id, name)
);

CREATE TABLE work_queues (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  pool_id TEXT NOT NULL REFERENCES work_pools(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  priority BIGINT NOT NULL DEFAULT 1,
  concurrency_limit BIGINT,
  paused BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  UNIQUE (pool_id, name)
);

CREATE TABLE deployments (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  name TEXT NOT NULL,
  pool_id TEXT NOT NULL REFERENCES work_pools(id),
  queue_id TEXT NOT NULL REFERENCES work_queues(id),
  job_variables TEXT NOT NULL,
  parameters TEXT NOT NULL,
  concurrency_limit BIGINT,
  paused BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  UNIQUE (workspace_id, name)
);

CREATE TABLE flow_runs (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL,
  deployment_id TEXT NOT NULL,
  deployment_name TEXT NOT NULL,
  pool_id TEXT NOT NULL,
  pool_name TEXT NOT NULL,
  queue_id TEXT NOT NULL,
  queue_name TEXT NOT NULL,
  parameters TEXT NOT NULL,
  job_variables TEXT NOT NULL,
  scheduled_time BIGINT NOT NULL,
  state_type TEXT NOT NULL,
  state_name TEXT NOT NULL,
  state_message TEXT,
  state_timestamp BIGINT NOT NULL,
  attempt BIGINT NOT NULL DEFAULT 1,
  infrastructure_id TEXT,
  idempotency_key TEXT,
  lease_owner TEXT,
  lease_expires BIGINT,
  last_heartbeat BIGINT,
  version BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  UNIQUE (workspace_id, idempotency_key)
);
CREATE INDEX flow_runs_due ON flow_runs (state_type, pool_id, scheduled_time);
CREATE INDEX flow_runs_active ON flow_runs (pool_id, state_type, queue_id, deployment_id);
CREATE INDEX flow_runs_workspace ON flow_runs (workspace_id, id);
CREATE INDEX flow_runs_lease ON flow_runs (lease_owner, lease_expires);

CREATE TABLE state_history (
  id TEXT PRIMARY KEY,
  run_id TEXT NOT NULL,
  transition_id TEXT NOT NULL,
  state_type TEXT NOT NULL,
  state_name TEXT NOT NULL,
  message TEXT,
  timestamp BIGINT NOT NULL,
  UNIQUE (run_id, transition_id)
);

CREATE TABLE events (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL,
  occurred BIGINT NOT NULL,
  event TEXT NOT NULL,
  resource_id TEXT NOT NULL,
  payload TEXT NOT NULL
);
CREATE INDEX events_workspace ON events (workspace_id, id);

CREATE TABLE run_logs (
  id TEXT PRIMARY KEY,
  run_id TEXT NOT NULL,
  timestamp BIGINT NOT NULL,
  stream TEXT NOT NULL,
  line TEXT NOT NULL
);
CREATE INDEX run_logs_run ON run_logs (run_id, id);

CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  name TEXT NOT NULL,
  prefix TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL,
  role TEXT NOT NULL,
  created BIGINT NOT NULL,
  expires BIGINT,
  revoked BIGINT,
  admin BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE controllers (
  id TEXT PRIMARY KEY,
  hostname TEXT NOT NULL,
  started BIGINT NOT NULL,
  last_seen BIGINT NOT NULL
);
