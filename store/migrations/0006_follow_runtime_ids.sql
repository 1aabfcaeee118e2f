-- Runs followed through a runtime's real-time feed (Trigger.dev) are found by the runtime's own
-- run id, for the runs still followed only: a feed's snapshot names every run it carries.
CREATE INDEX runs_followed_runtime_id_idx ON runs (runtime_run_id) WHERE follow_at IS NOT NULL;
