-- Per-pool submission rate limit (submissions per second per controller); NULL = provider default.
ALTER TABLE work_pools ADD COLUMN submit_rate DOUBLE PRECISION
