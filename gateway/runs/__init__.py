"""Agent runs: eligibility, triggers, waits, following, callbacks, external runs and outputs."""
