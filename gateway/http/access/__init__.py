"""Who may call: one authentication helper per credential, the key guard's step, and the per-agent
token buckets a handler takes from."""
