"""What an operator reads with ``agent-gateway``: its version, and organisations, keys and
agents shown as the admin API shows them (docs/operations.md, "The console")."""

from __future__ import annotations

import json
import os
import uuid
from importlib.metadata import version

from tests.support.backends import Backends
from tests.support.console import admin, admin_env, run_console

N8N = {
    "kind": "n8n",
    "webhook_url": "https://n8n.internal/webhook/report",
    "headers": {"X-Auth": "s3cret"},
}


def test_the_console_says_which_version_is_installed() -> None:
    done = run_console("--version", env=dict(os.environ))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == version("agent-gateway")


def test_an_operator_finds_the_key_to_revoke_by_listing_the_organisations_keys(
    backends: Backends,
) -> None:
    org = admin(backends, "create-org", "Key Listing Co")
    kept = admin(backends, "create-key", org["id"])
    leaked = admin(backends, "create-key", org["id"])

    listed = admin(backends, "list-keys", org["id"])
    assert [key["id"] for key in listed] == [kept["id"], leaked["id"]]
    # Which key leaked is told by its first characters; the key itself is never shown again.
    (found,) = [key for key in listed if leaked["key"].startswith(key["prefix"])]
    assert set(found) == {"id", "prefix", "created_at", "revoked", "revoked_at"}
    assert (found["revoked"], found["revoked_at"]) == (False, None)
    assert leaked["key"] not in json.dumps(listed)

    assert admin(backends, "revoke-key", org["id"], found["id"]) == {
        "id": found["id"],
        "revoked": True,
    }

    after = {key["id"]: key for key in admin(backends, "list-keys", org["id"])}
    assert after[leaked["id"]]["revoked"] is True
    assert after[leaked["id"]]["revoked_at"] is not None
    assert after[kept["id"]]["revoked"] is False


def test_organisations_and_their_agents_are_listed_as_the_admin_api_shows_them(
    backends: Backends,
) -> None:
    org = admin(backends, "create-org", "Agent Listing Co")
    other = admin(backends, "create-org", "Someone Else")
    first = admin(backends, "create-agent", org["id"], json.dumps({"name": "A", "runtime": N8N}))
    second = admin(backends, "create-agent", org["id"], json.dumps({"name": "B", "runtime": N8N}))
    admin(backends, "create-agent", other["id"], json.dumps({"name": "C", "runtime": N8N}))
    paused = admin(backends, "update-agent", str(second["id"]), '{"status": "paused"}')

    orgs = {listed["id"]: listed for listed in admin(backends, "list-orgs")}
    assert orgs[org["id"]]["name"] == "Agent Listing Co"
    assert orgs[other["id"]]["name"] == "Someone Else"

    # The same view the create and update answers use, without the key shown at creation.
    first_view = {k: v for k, v in first.items() if k != "api_key"}
    assert admin(backends, "list-agents", org["id"]) == [first_view, paused]
    assert admin(backends, "get-agent", str(second["id"])) == paused
    assert paused["runtime"]["headers"] == "***"


def test_an_organisation_or_agent_that_does_not_exist_is_an_error_on_stderr(
    backends: Backends,
) -> None:
    for args in (
        ("list-keys", str(uuid.uuid4())),
        ("list-agents", str(uuid.uuid4())),
        ("get-agent", "987654321"),
    ):
        done = run_console("admin", *args, env=admin_env(backends))
        assert done.returncode == 1, args
        assert done.stdout == ""
        assert "error" in json.loads(done.stderr), args
