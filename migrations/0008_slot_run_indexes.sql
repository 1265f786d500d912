-- Runs waiting for their time (SCHEDULED) take no entry in the indexes only active or leased runs
-- need: the scheduler fills its window with hundreds of thousands of such runs (issue 13's bench:
-- 600,000 for 10,000 minutely schedules), and each index entry is a B-tree insert. Every query
-- that uses these indexes carries the same condition (`state_type IN ('PENDING', 'RUNNING',
-- 'CANCELLING')`, `lease_owner = …`), so both SQLite and PostgreSQL still plan with them.
DROP INDEX flow_runs_active;
CREATE INDEX flow_runs_active ON flow_runs (pool_id, state_type, queue_id, deployment_id)
  WHERE state_type IN ('PENDING', 'RUNNING', 'CANCELLING');
DROP INDEX flow_runs_active_queue;
CREATE INDEX flow_runs_active_queue ON flow_runs (queue_id, state_type)
  WHERE state_type IN ('PENDING', 'RUNNING', 'CANCELLING');
DROP INDEX flow_runs_lease;
CREATE INDEX flow_runs_lease ON flow_runs (lease_owner, lease_expires)
  WHERE lease_owner IS NOT NULL;
