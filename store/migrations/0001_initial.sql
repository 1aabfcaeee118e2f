-- Organisations, their people and their keys.
CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL DEFAULT 'member',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);

-- Ingest keys are stored as SHA-256 of the key; the key itself is shown once.
CREATE TABLE ingest_keys (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id                   uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name                     text NOT NULL,
    managed_by               text NOT NULL DEFAULT 'platform'
                             CHECK (managed_by IN ('platform', 'standalone')),
    status                   text NOT NULL DEFAULT 'active'
                             CHECK (status IN ('active', 'paused', 'archived')),
    allow_external_triggers  boolean NOT NULL DEFAULT true,
    output_kind              text NOT NULL DEFAULT 'json'
                             CHECK (output_kind IN ('json', 'file_download', 'stream')),
    runtime                  jsonb NOT NULL,
    default_input            jsonb NOT NULL DEFAULT '{}'::jsonb,
    input_format             jsonb,
    running_timeout_ms       integer NOT NULL DEFAULT 300000 CHECK (running_timeout_ms > 0),
    -- The agent API key is HMAC(SECRET_KEY, salt): re-derivable for trigger payloads,
    -- looked up by its SHA-256.
    api_key_salt             bytea NOT NULL,
    api_key_hash             bytea NOT NULL UNIQUE,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_org_idx ON agents (org_id);

CREATE TABLE runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id         bigint NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    org_id           uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'waiting',
                                       'completed', 'failed', 'cancelled')),
    input            jsonb NOT NULL DEFAULT '{}'::jsonb,
    output_data      jsonb,
    outputs          bigint CHECK (outputs >= 0),
    error            text,
    duration_ms      bigint,
    started_at       timestamptz,
    completed_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    created_by       uuid REFERENCES users (id) ON DELETE SET NULL,
    external_run_id  text,
    runtime_run_id   text,
    deadline         timestamptz,
    trigger_kind     text NOT NULL DEFAULT 'trigger'
);
CREATE INDEX runs_agent_idx ON runs (agent_id, created_at DESC);
CREATE UNIQUE INDEX runs_external_idx ON runs (agent_id, external_run_id)
    WHERE external_run_id IS NOT NULL;
-- The reaper looks for in-flight runs whose deadline has passed.
CREATE INDEX runs_inflight_deadline_idx ON runs (deadline)
    WHERE status IN ('queued', 'running', 'waiting');

-- One row per lifecycle event applied: the consumer's idempotency record.
CREATE TABLE applied_events (
    event_id    uuid PRIMARY KEY,
    run_id      bigint NOT NULL,
    type        text NOT NULL,
    changed     boolean NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX applied_events_run_idx ON applied_events (run_id);
