#!/usr/bin/env bash
# The monitoring kit (deploy/monitoring/): `promtool check rules` on the alerting rules, then
# `promtool test rules` on their unit tests (each alert fires on synthetic series and stays
# quiet otherwise). promtool comes with Debian's `prometheus` package: as root with apt-get it
# is installed once (no daemon is started: only the binary is used). Under CI=true a promtool
# it cannot get fails the check; elsewhere that is a skip that says why.
set -uo pipefail
cd "$(dirname "$0")/.."

in_ci() { case "${CI:-}" in 1 | true | TRUE | True | yes) return 0 ;; *) return 1 ;; esac; }
say() { echo "check-monitoring: $*" >&2; }
cannot() {
    if in_ci; then
        say "FAILED: $*"
        exit 1
    fi
    say "skipped: $*"
    exit 0
}

if ! command -v promtool > /dev/null; then
    [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null \
        || cannot "promtool is missing; installing it needs root and apt-get (Debian's prometheus)"
    say "installing Debian's prometheus for promtool (apt-get)"
    { apt-get install -y -q prometheus || { apt-get update -q && apt-get install -y -q prometheus; }; } \
        > /dev/null 2>&1 || cannot "apt-get could not install prometheus"
    command -v promtool > /dev/null || cannot "promtool still missing after apt-get"
fi

status=0
promtool check rules deploy/monitoring/rules.yaml || status=1
# promtool resolves rule_files relative to the test file.
promtool test rules deploy/monitoring/rules.test.yaml || status=1
exit "$status"
