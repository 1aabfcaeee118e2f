#!/usr/bin/env bash
# Run the whole test suite (it starts its own PostgreSQL and Redis unless
# DATABASE_URL and REDIS_URL are set), then the cluster pass: the run-event, rate-limit, wait
# and execute tests again against a three-primary Redis Cluster the session starts
# (TEST_REDIS=cluster). Given pytest arguments, one pass with them, as before; with
# TEST_CLUSTER_PASS=1 the cluster pass follows it (with the same arguments), with
# TEST_CLUSTER_PASS=0 it never runs. TEST_REDIS=cluster runs the one pass on a cluster.
source "$(dirname "$0")/bootstrap.sh"
# The multi-replica tests need a real load balancer: as root on Debian, nginx is installed once
# from the system's packages; otherwise those tests say how to get it (and fail under CI=true).
if ! command -v nginx > /dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
    echo "scripts/test.sh: installing Debian's nginx for the load-balancer tests (apt-get)" >&2
    { apt-get install -y -q nginx || { apt-get update -q && apt-get install -y -q nginx; }; } \
        > /dev/null 2>&1 || echo "scripts/test.sh: nginx could not be installed" >&2
fi
# What the cluster pass runs: what reaches Redis on the run-event, wait, execute and rate-limit
# paths (the store with the event buffer and its consumer, callbacks, register and ingest,
# trigger, trigger-and-wait, reads right after each 2xx, execute, the limiter and the key
# guard). Left out: downloads, result delivery, the Trigger.dev feeds and execute's own tests
# (its Redis is the frame log: the resume tests), which meet Redis only through the same
# recorder; so the whole command stays under 10 minutes on 2 cores (on a fresh clone with two
# workers: the suite about 5 min, these tests about 40 s on the cluster).
cluster_tests=(
    tests/store
    tests/runs/test_callbacks.py
    tests/runs/test_external_runs.py
    tests/runs/test_trigger.py
    tests/runs/test_trigger_and_wait.py
    tests/runs/test_read_your_writes.py
    tests/execute/test_execute_resume.py
    tests/security/test_ratelimit.py
    tests/security/test_key_guard.py
    tests/resilience/test_rate_limiter_truth.py
)
if [ "${TEST_REDIS:-}" = cluster ]; then
    cluster_pass=0
elif [ $# -eq 0 ]; then
    cluster_pass="${TEST_CLUSTER_PASS:-1}"
else
    cluster_pass="${TEST_CLUSTER_PASS:-0}"
fi
# Test files are spread over workers (pytest-xdist, one file per worker at a time), each with
# its own PostgreSQL and Redis: TEST_WORKERS of them, by default one per core up to 4. Given
# DATABASE_URL or REDIS_URL the workers would share one database, so the default is one then.
if [ -n "${DATABASE_URL:-}${REDIS_URL:-}" ]; then
    default_workers=1
else
    default_workers=$(nproc 2> /dev/null || echo 1)
    [ "$default_workers" -le 4 ] || default_workers=4
fi
workers="${TEST_WORKERS:-$default_workers}"
if [ "$workers" -gt 1 ]; then
    set -- -n "$workers" --dist loadfile "$@"
fi
if [ "$cluster_pass" != 1 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
echo "scripts/test.sh: the cluster pass (TEST_REDIS=cluster): ${cluster_tests[*]}" >&2
# Its own cluster, whatever REDIS_URL names.
cluster_status=0
env -u REDIS_URL -u REDIS_CLUSTER TEST_REDIS=cluster \
    .venv/bin/python -m pytest "$@" "${cluster_tests[@]}" || cluster_status=$?
if [ "$status" -eq 0 ]; then
    status=$cluster_status
fi
exit "$status"
