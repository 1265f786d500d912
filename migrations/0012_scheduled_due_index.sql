-- Issue 17: the claim and the late-run sweep read only the runs that are due. Both look for
-- SCHEDULED runs with `scheduled_time <= now` of the pools a controller serves, through a join
-- with work_pools on the pool's type; `flow_runs_due (state_type, pool_id, scheduled_time)`
-- bounds the time only when the pool comes first, which neither planner chose: SQLite read every
-- SCHEDULED run (those scheduled days ahead included), PostgreSQL every SCHEDULED run of the
-- deployment. This index holds SCHEDULED runs only (a run leaves it when claimed), in time order,
-- so both read the due ones and stop: the same cost with 100,000 runs scheduled ahead and a
-- million finished ones as on an empty store (tests/store/plans.rs checks the plans).
CREATE INDEX flow_runs_scheduled ON flow_runs (state_type, scheduled_time)
  WHERE state_type = 'SCHEDULED';
