-- Automations (issue 14, docs/automations.md): a trigger and actions per workspace, the engine's
-- durable state (event cursor, per-group trigger state), firings (one per occurrence) and the
-- queue of their actions.

CREATE TABLE automations (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL,
  name TEXT NOT NULL,
  description TEXT NOT NULL,
  enabled BIGINT NOT NULL,
  trigger_spec TEXT NOT NULL,
  actions TEXT NOT NULL,
  created_by TEXT,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  UNIQUE (workspace_id, name)
);

-- One row per consumer: how far through the event log (`events.seq`, migration 0009) it is.
-- Evaluating holds its row locked. It starts at the newest event: automations react to what
-- happens from now on.
CREATE TABLE automation_cursor (
  name TEXT PRIMARY KEY,
  seq BIGINT NOT NULL,
  updated BIGINT NOT NULL
);
INSERT INTO automation_cursor (name, seq, updated)
  SELECT 'engine', COALESCE(MAX(seq), 0), 0 FROM events;

-- The state of one group (`for_each` value) of one automation; `due` is when time alone
-- changes it (a proactive window's end, a reactive window's expiry).
CREATE TABLE automation_groups (
  automation_id TEXT NOT NULL,
  group_key TEXT NOT NULL,
  state TEXT NOT NULL,
  due BIGINT,
  PRIMARY KEY (automation_id, group_key)
);
CREATE INDEX automation_groups_due ON automation_groups (due);

-- Each occurrence of a trigger's condition fires once: the unique key enforces it.
CREATE TABLE automation_firings (
  id TEXT PRIMARY KEY,
  automation_id TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  occurrence TEXT NOT NULL,
  group_key TEXT NOT NULL,
  event_id TEXT,
  count BIGINT NOT NULL,
  context TEXT NOT NULL,
  fired BIGINT NOT NULL,
  UNIQUE (automation_id, occurrence)
);
CREATE INDEX automation_firings_automation ON automation_firings (automation_id, fired);

-- The actions of firings, done by whichever controller claims them (lease), each recorded
-- with its outcome.
CREATE TABLE automation_actions (
  id TEXT PRIMARY KEY,
  firing_id TEXT NOT NULL,
  automation_id TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  position BIGINT NOT NULL,
  action TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts BIGINT NOT NULL,
  not_before BIGINT NOT NULL,
  lease_owner TEXT,
  lease_until BIGINT,
  result TEXT,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL
);
CREATE INDEX automation_actions_pending ON automation_actions (status, not_before);
CREATE INDEX automation_actions_firing ON automation_actions (firing_id, position);
