-- Every process caches the organisation behind an ingest key and the agent rows it has read
-- (store/lookup_cache.py). A change to either table is announced on the channel 'auth_cache'
-- so that every replica drops the entry at once, whichever process made the change (the admin
-- API, the console, or SQL by hand). Payloads: 'agents:<id>', 'ingest_keys:<hex key hash>', and
-- '*' after a TRUNCATE. INSERT is not announced: only rows that exist are ever cached, so a new
-- row can make no entry stale. NOTIFY is sent at commit, so no replica re-reads the old row.
CREATE FUNCTION notify_auth_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('auth_cache', '*');
    ELSIF TG_TABLE_NAME = 'agents' THEN
        PERFORM pg_notify('auth_cache', 'agents:' || OLD.id);
    ELSE
        PERFORM pg_notify('auth_cache', 'ingest_keys:' || encode(OLD.key_hash, 'hex'));
        IF TG_OP = 'UPDATE' AND NEW.key_hash IS DISTINCT FROM OLD.key_hash THEN
            PERFORM pg_notify('auth_cache', 'ingest_keys:' || encode(NEW.key_hash, 'hex'));
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_notify_auth_cache
    AFTER UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION notify_auth_cache();
CREATE TRIGGER agents_truncate_notify_auth_cache
    AFTER TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION notify_auth_cache();
CREATE TRIGGER ingest_keys_notify_auth_cache
    AFTER UPDATE OR DELETE ON ingest_keys
    FOR EACH ROW EXECUTE FUNCTION notify_auth_cache();
CREATE TRIGGER ingest_keys_truncate_notify_auth_cache
    AFTER TRUNCATE ON ingest_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_auth_cache();
