"""Who may call: keys, authentication, brute-force guard, rate limits, signed URLs, credentials."""
