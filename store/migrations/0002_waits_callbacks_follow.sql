-- What a run in 'waiting' waits for (the runtime's token and its description).
ALTER TABLE runs ADD COLUMN waiting_for jsonb;

-- Runs whose runtime runs them on its own (Trigger.dev) are followed by polling. follow_at is
-- when the next poll is due (NULL: not followed); a replica that claims a run pushes it ahead
-- by a lease, so a replica that dies mid-poll only delays the run, never loses it.
ALTER TABLE runs ADD COLUMN follow_at timestamptz;
ALTER TABLE runs ADD COLUMN follow_attempts integer NOT NULL DEFAULT 0;
CREATE INDEX runs_follow_idx ON runs (follow_at) WHERE follow_at IS NOT NULL;

-- Idempotency-Key on POST .../runs/trigger: a repeated key within 24 h returns the same run.
CREATE TABLE idempotency_keys (
    agent_id      bigint NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    run_id        bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, key)
);
