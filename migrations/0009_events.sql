-- Events (issue 14, item 1; docs/events.md). The events table is rebuilt with:
-- * `seq`, a monotonic integer cursor assigned by the database (SQLite AUTOINCREMENT, so a number
--   is never reused even after the pruner empties the table; PostgreSQL an identity column);
-- * `recorded`, when the row was written (microseconds, the writer's clock): the pruner's key and
--   the settle rule's clock (consumers of `seq` skip a gap only once the row after it is older than
--   the settle lag; docs/events.md);
-- * Prefect-like names and resources: `event` such as `pushpool.flow-run.Failed`, `resource_id`
--   such as `pushpool.flow-run.<uuid>`, `resource_labels` (JSON object of strings) and `related`
--   (JSON array of {id, role, labels}).
-- Rows written before this migration are copied in their order and renamed: `kind.action` becomes
-- `pushpool.<kind with dashes>.<action with dashes>`, `flow_run.state.<type>` becomes
-- `pushpool.flow-run.<Type>`, and the resource id gets the `pushpool.<kind>.` prefix.
-- `{{seq_primary_key}}` is replaced per backend by the migration runner (src/store/mod.rs).
CREATE TABLE events_v9 (
  seq {{seq_primary_key}},
  id TEXT NOT NULL UNIQUE,
  workspace_id TEXT NOT NULL,
  occurred BIGINT NOT NULL,
  recorded BIGINT NOT NULL,
  event TEXT NOT NULL,
  resource_id TEXT NOT NULL,
  resource_labels TEXT NOT NULL,
  related TEXT NOT NULL,
  payload TEXT NOT NULL
);
INSERT INTO events_v9
  (id, workspace_id, occurred, recorded, event, resource_id, resource_labels, related, payload)
SELECT id, workspace_id, occurred, occurred,
  CASE
    WHEN event = 'flow_run.state.scheduled' THEN 'pushpool.flow-run.Scheduled'
    WHEN event = 'flow_run.state.pending' THEN 'pushpool.flow-run.Pending'
    WHEN event = 'flow_run.state.running' THEN 'pushpool.flow-run.Running'
    WHEN event = 'flow_run.state.completed' THEN 'pushpool.flow-run.Completed'
    WHEN event = 'flow_run.state.failed' THEN 'pushpool.flow-run.Failed'
    WHEN event = 'flow_run.state.crashed' THEN 'pushpool.flow-run.Crashed'
    WHEN event = 'flow_run.state.cancelling' THEN 'pushpool.flow-run.Cancelling'
    WHEN event = 'flow_run.state.cancelled' THEN 'pushpool.flow-run.Cancelled'
    WHEN event = 'flow_run.state.paused' THEN 'pushpool.flow-run.Paused'
    ELSE 'pushpool.' || REPLACE(event, '_', '-')
  END,
  CASE
    WHEN event LIKE 'workspace.%' THEN 'pushpool.workspace.' || resource_id
    WHEN event LIKE 'work_pool.%' THEN 'pushpool.work-pool.' || resource_id
    WHEN event LIKE 'work_queue.%' THEN 'pushpool.work-queue.' || resource_id
    WHEN event LIKE 'deployment.%' THEN 'pushpool.deployment.' || resource_id
    WHEN event LIKE 'flow_run.%' THEN 'pushpool.flow-run.' || resource_id
    WHEN event LIKE 'api_key.%' THEN 'pushpool.api-key.' || resource_id
    WHEN event LIKE 'service_account.%' THEN 'pushpool.service-account.' || resource_id
    WHEN event LIKE 'member.%' THEN 'pushpool.member.' || resource_id
    WHEN event LIKE 'role.%' THEN 'pushpool.role.' || resource_id
    WHEN event LIKE 'schedule.%' THEN 'pushpool.schedule.' || resource_id
    ELSE resource_id
  END,
  '{}', '[]', payload
FROM events ORDER BY id;
DROP TABLE events;
ALTER TABLE events_v9 RENAME TO events;
-- The per-workspace list and stream (newest first / after a cursor).
CREATE INDEX events_workspace_seq ON events (workspace_id, seq);
-- The resource filter.
CREATE INDEX events_workspace_resource ON events (workspace_id, resource_id, seq);
-- The pruner.
CREATE INDEX events_recorded ON events (recorded);
