#!/usr/bin/env bash
# Run the whole test suite (it starts its own PostgreSQL and Redis unless
# DATABASE_URL and REDIS_URL are set).
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/python -m pytest "$@"
