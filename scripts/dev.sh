#!/usr/bin/env bash
# Run the gateway with its embedded default: PostgreSQL, Redis, demo runtime, consumer.
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/agent-gateway dev "$@"
