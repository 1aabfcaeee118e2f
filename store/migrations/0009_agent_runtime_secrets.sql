-- Issue 28: an agent's runtime secrets (a Trigger.dev `secret_key`, n8n auth `headers`) are
-- sealed at rest, each field apart ({"secret_key": "<base64 of the sealed value>", ...}),
-- bound to the agent's id and the field's name (gateway/security/runtime_secrets.py).
-- Expand only: the previous release neither reads nor writes the column, and its INSERTs get
-- the default. No backfill here: the new code reads the plaintext field in `runtime` when the
-- sealed one is absent, seals it on the agent's next write, and `agent-gateway admin reseal`
-- seals every remaining one (docs/upgrading.md).
ALTER TABLE agents ADD COLUMN runtime_secrets jsonb NOT NULL DEFAULT '{}';
