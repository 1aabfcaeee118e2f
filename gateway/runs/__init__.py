"""Agent runs, one service per use case: lookups and eligibility, creation, triggers and waits,
downloads, recording, following, callbacks, external runs and outputs."""
