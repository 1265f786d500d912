-- Concurrency-limit counts look up active runs per queue and per deployment.
CREATE INDEX flow_runs_active_queue ON flow_runs (queue_id, state_type);
CREATE INDEX flow_runs_active_deployment ON flow_runs (deployment_id, state_type)
