-- Which job variables a run may override (JSON array of variable names); NULL = any variable of
-- the pool's schema, [] = none (issue 19 item 5).
ALTER TABLE work_pools ADD COLUMN overridable_variables TEXT
