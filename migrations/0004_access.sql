-- Principals (users and service accounts), workspace memberships with roles, custom roles, API keys
-- owned by principals (with rotation), and the audit log.
CREATE TABLE principals (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  workspace_id TEXT,
  admin BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  deleted BIGINT
);
CREATE UNIQUE INDEX principals_user_name ON principals (name) WHERE kind = 'user';
CREATE UNIQUE INDEX principals_service_account_name ON principals (workspace_id, name) WHERE kind = 'service_account' AND deleted IS NULL;

CREATE TABLE memberships (
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  principal_id TEXT NOT NULL REFERENCES principals(id),
  role TEXT NOT NULL,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  PRIMARY KEY (workspace_id, principal_id)
);

CREATE TABLE roles (
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  name TEXT NOT NULL,
  description TEXT,
  scopes TEXT NOT NULL,
  created BIGINT NOT NULL,
  PRIMARY KEY (workspace_id, name)
);

-- A key's `role` is now a cap on its principal's role; '*' means no cap.
ALTER TABLE api_keys ADD COLUMN principal_id TEXT;
ALTER TABLE api_keys ADD COLUMN rotated_to TEXT;

-- Keys made before principals existed (the bootstrap owner key) each become a user of their own.
INSERT INTO principals (id, kind, name, workspace_id, admin, created)
  SELECT id, 'user', name || '-' || prefix, NULL, admin, created FROM api_keys;
INSERT INTO memberships (workspace_id, principal_id, role, created, updated)
  SELECT workspace_id, id, role, created, created FROM api_keys;
UPDATE api_keys SET principal_id = id, role = '*';
CREATE INDEX api_keys_principal ON api_keys (principal_id);

CREATE TABLE audit_log (
  id TEXT PRIMARY KEY,
  workspace_id TEXT,
  occurred BIGINT NOT NULL,
  actor_kind TEXT NOT NULL,
  actor_id TEXT,
  actor_name TEXT NOT NULL,
  key_id TEXT,
  action TEXT NOT NULL,
  target TEXT,
  outcome TEXT NOT NULL,
  status BIGINT NOT NULL,
  source TEXT,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  detail TEXT
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id);
