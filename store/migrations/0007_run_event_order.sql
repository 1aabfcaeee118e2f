-- The time of the last event a run's row took. Events recorded straight into PostgreSQL are in
-- the order their statements committed; an event held in the Redis buffer while PostgreSQL was
-- away is applied later and must not undo a newer one (store/transitions.py).
ALTER TABLE runs ADD COLUMN event_at timestamptz;

-- The newest lease on each partition of the event buffer (per key prefix, EVENTS_STREAM). A
-- consumer takes a token when it takes a partition and applies that partition's events only while
-- its token is the newest, so one that was paused past its lease cannot apply after the next owner.
CREATE TABLE event_partition_leases (
    stream     text NOT NULL,
    partition  integer NOT NULL,
    token      bigint NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition)
);
