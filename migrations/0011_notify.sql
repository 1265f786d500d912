-- Notifications (issue 14, part 3; docs/notifications.md).
-- A channel is where notifications of a workspace go: `kind` webhook, slack or email; `config`
-- its JSON settings with the secret ones (HMAC secret, Slack URL, SMTP password) sealed
-- (store/crypto.rs); optional subject/body templates.
CREATE TABLE notification_channels (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  config TEXT NOT NULL,
  subject_template TEXT,
  body_template TEXT,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL
);
CREATE UNIQUE INDEX notification_channels_name ON notification_channels (workspace_id, name);
-- The durable delivery outbox: one row per message to send. `status` pending → delivered or
-- failed; a worker claims a due row by setting `locked_by`/`locked_until` (a lease), so one
-- controller delivers it however many run; an expired lease is claimed again. `request` is the
-- rendered message (JSON; a webhook action's headers sealed); `deadline` (micros) is when
-- retrying stops and the delivery is recorded failed.
CREATE TABLE notification_deliveries (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL,
  channel_id TEXT,
  kind TEXT NOT NULL,
  request TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  next_attempt BIGINT NOT NULL,
  deadline BIGINT NOT NULL,
  locked_by TEXT,
  locked_until BIGINT,
  last_error TEXT,
  created BIGINT NOT NULL,
  finished BIGINT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt);
CREATE INDEX notification_deliveries_workspace ON notification_deliveries (workspace_id, id);
-- Inbound webhooks: `POST /hooks/{slug}` turns a JSON body into an event of the workspace. The
-- slug is a random secret shown once; only its SHA-256 is kept. `secret` (sealed, optional)
-- makes the hook also require an HMAC-SHA256 signature of the body.
CREATE TABLE inbound_hooks (
  id TEXT PRIMARY KEY,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  name TEXT NOT NULL,
  slug_hash TEXT NOT NULL,
  slug_prefix TEXT NOT NULL,
  secret TEXT,
  template TEXT NOT NULL,
  created BIGINT NOT NULL
);
CREATE UNIQUE INDEX inbound_hooks_name ON inbound_hooks (workspace_id, name);
CREATE UNIQUE INDEX inbound_hooks_slug ON inbound_hooks (slug_hash)
