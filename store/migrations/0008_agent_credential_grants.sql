-- Issue 28: an agent resolves only the credentials granted to it. The grant list is an agent
-- setting (`credential_ids`), so it travels with the agent row that every replica already
-- caches (store/lookup_cache.py) and is invalidated with it (migration 0005's trigger).
-- Expand only: the previous release neither reads nor writes the column, and its INSERTs get
-- the default. No backfill: an existing agent resolves nothing until an operator grants it
-- credentials (docs/upgrading.md shows the one statement that grants what it resolved before).
ALTER TABLE agents ADD COLUMN credential_ids uuid[] NOT NULL DEFAULT '{}';
