-- Job download packages (seed 003).
-- A run's stored files are its inputs (uploads) or its outputs: the package puts the first under
-- inputs/ and the second under outputs/.
ALTER TABLE run_files ADD COLUMN kind text NOT NULL DEFAULT 'input'
    CHECK (kind IN ('input', 'output'));

-- One package per run, created by the first PUT .../download: its id stays the same however
-- often the package is asked for again. Its ZIP is never stored: it is streamed on each fetch.
CREATE TABLE packages (
    id                 uuid PRIMARY KEY,
    run_id             bigint NOT NULL UNIQUE REFERENCES runs (id) ON DELETE CASCADE,
    org_id             uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_requested_at  timestamptz NOT NULL DEFAULT now()
);
