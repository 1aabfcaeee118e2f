-- Workflow execute (seed 004).
-- The blocks of an agent's workflow that stream output (n8n nodes): [{"id": ..., "name": ...}].
-- selectedOutputs name them as "<block name>.content".
ALTER TABLE agents ADD COLUMN blocks jsonb NOT NULL DEFAULT '[]'::jsonb;

-- Input files of a run that the gateway stored in the blob store (uploads; URL references are
-- never fetched and have no row). blob_key is stable: the same run and position give the same key.
CREATE TABLE run_files (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    field       text NOT NULL,
    position    integer NOT NULL CHECK (position >= 0),
    name        text NOT NULL,
    mime_type   text NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    sha256      text NOT NULL,
    blob_key    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_files_run_idx ON run_files (run_id, id);
