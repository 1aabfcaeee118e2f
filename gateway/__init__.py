"""The agent-run streaming gateway: the HTTP edge in front of workflow runtimes."""
