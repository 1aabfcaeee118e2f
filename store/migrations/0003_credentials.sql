-- Credentials an organisation's runs may resolve (seed 001 resolveCredential). The data is
-- sealed with AES-256-GCM under a key derived from SECRET_KEY; the row's id and organisation
-- are the associated data, so a sealed value copied onto another row does not open.
CREATE TABLE credentials (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name         text NOT NULL,
    type         text NOT NULL,
    sealed_data  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credentials_org_idx ON credentials (org_id);
