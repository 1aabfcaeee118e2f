"""The metadata store: schema, SQL, the run-event publisher and the consumer process."""
