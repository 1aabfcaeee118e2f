-- Issue 31: a run remembers the W3C trace context it was started in, so that its callbacks
-- (later requests, often without a traceparent of their own) are recorded in the same trace
-- (docs/operations.md, "Tracing"). Expand only: nullable, the previous release neither reads
-- nor writes it, and its INSERTs leave it NULL (a run that is simply not tied to a trace).
ALTER TABLE runs ADD COLUMN trace_parent text;
