"""The metadata store: schema, SQL, run transitions, the event buffer and the consumer process."""
