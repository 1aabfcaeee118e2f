#!/usr/bin/env bash
# Run the whole test suite (it starts its own PostgreSQL and Redis unless
# DATABASE_URL and REDIS_URL are set).
source "$(dirname "$0")/bootstrap.sh"
# The multi-replica tests need a real load balancer: as root on Debian, nginx is installed once
# from the system's packages; otherwise those tests say how to get it (and fail under CI=true).
if ! command -v nginx > /dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
    echo "scripts/test.sh: installing Debian's nginx for the load-balancer tests (apt-get)" >&2
    { apt-get install -y -q nginx || { apt-get update -q && apt-get install -y -q nginx; }; } \
        > /dev/null 2>&1 || echo "scripts/test.sh: nginx could not be installed" >&2
fi
exec .venv/bin/python -m pytest "$@"
