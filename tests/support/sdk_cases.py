"""The case table both SDKs follow (``sdk/cases.json``), played with the Python SDK."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agent_gateway_sdk as sdk
from tests.support.flaky_front import FlakyFront

ROOT = Path(__file__).resolve().parents[2]
TABLE: dict[str, Any] = json.loads((ROOT / "sdk" / "cases.json").read_text())
CASES: list[dict[str, Any]] = TABLE["cases"]
MISSING_AGENT_ID = 2_147_483_000


@dataclass
class Stage:
    """Where a case runs: the gateways' URLs, the keys, and how to make its agent."""

    base_url: str
    strict_base_url: str
    brisk_base_url: str
    runtime_url: str
    ingest_key: str
    stranger_key: str
    # Before the main gateway: plays a case's ``faults`` and ``holdLimitMs``.
    front: FlakyFront
    front_base_url: str
    # The credential a case's ``connectionId: own`` names, once made.
    credential_id: str = ""
    # What the last checked call took, in seconds.
    took_s: float = field(default=0.0)

    def base_for(self, case: dict[str, Any]) -> str:
        """The URL of the case's ``gateway``."""
        return {
            "main": self.base_url,
            "strict": self.strict_base_url,
            "brisk": self.brisk_base_url,
            "front": self.front_base_url,
        }[case.get("gateway", "main")]


def agent_body(preset: str, runtime_url: str) -> dict[str, Any]:
    """The admin API body of the table's agent preset ``preset``."""
    fields = dict(TABLE["agents"][preset])
    webhook = fields.pop("webhook")
    url = (
        "http://127.0.0.1:9/webhook/none"
        if webhook == "unreachable"
        else f"{runtime_url}/webhook/{webhook}"
    )
    return {"name": f"SDK case {preset}", "runtime": {"kind": "n8n", "webhook_url": url}, **fields}


def snake(name: str) -> str:
    """The Python SDK's name of a contract option (``timeoutMs`` -> ``timeout_ms``)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


_PYTHON_FIELDS = {"timedOut": "timed_out"}


def result_fields(result: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    """The fields of an SDK result that a case's ``ok`` names, in the contract's names."""
    return {name: getattr(result, _PYTHON_FIELDS.get(name, snake(name))) for name in wanted}


_CALLS = {
    "triggerRun": sdk.trigger_run,
    "triggerRunAndWait": sdk.trigger_run_and_wait,
    "registerRun": sdk.register_run,
    "ingestRun": sdk.ingest_run,
}


_ON_A_RUN = ("getRun", "cancelRun")


async def call_once(
    case: dict[str, Any],
    stage: Stage,
    agent: dict[str, Any],
    run: int = 0,
    *,
    checked: bool = False,
) -> tuple[Any, sdk.GatewayError | None]:
    """Make the case's call once (on its ``run``-th fresh run, for a case on a registered
    run): its result, or the GatewayError it raised. The ``checked`` call meets the case's
    ``faults`` (and ``holdLimitMs``) and is timed."""
    base = stage.base_for(case)
    key = {"tenant": stage.ingest_key, "wrong": "igk_wrong", "stranger": stage.stranger_key}[
        case.get("key", "tenant")
    ]
    agent_id = MISSING_AGENT_ID if case.get("agentId") == "missing" else agent["id"]
    args = {snake(k): v for k, v in case.get("args", {}).items()}
    if args.get("connection_id") == "own":
        args["connection_id"] = stage.credential_id
    if checked:
        stage.front.set_plan(case["call"], case.get("faults"), case.get("holdLimitMs"))
    started = time.monotonic()
    try:
        if case["call"].startswith("agentClient.") or case["call"] in _ON_A_RUN:
            return await _client_call(case, stage, base, key, agent, args, run), None
        common = {"base_url": base, "ingest_api_key": key, "agent_id": agent_id}
        if case["call"] == "triggerRunAndDownload":
            download = await sdk.trigger_run_and_download(**common, **args)
            await download.close()
            return download, None
        return await _CALLS[case["call"]](**common, **args), None
    except sdk.GatewayError as exc:
        return None, exc
    finally:
        stage.took_s = time.monotonic() - started


async def until_ended(base: str, key: str, agent_id: int, run_id: int) -> None:
    """Poll the run until ``GET`` shows it ended (bounded)."""
    for _ in range(200):
        run = await sdk.get_run(base_url=base, ingest_api_key=key, agent_id=agent_id, run_id=run_id)
        if run.status in {"completed", "failed", "cancelled"}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never ended")


async def _client_call(
    case: dict[str, Any],
    stage: Stage,
    base: str,
    key: str,
    agent: dict[str, Any],
    args: dict[str, Any],
    run: int,
) -> Any:
    # The run, its reports and the polls go to the main gateway with the tenant's key; the
    # case's call to the case's gateway with the case's key.
    main, tenant = stage.base_url, stage.ingest_key
    external_run_id = f"{case['name']} #{run}" if run else case["name"]
    registered = await sdk.register_run(
        base_url=main, ingest_api_key=tenant, agent_id=agent["id"], external_run_id=external_run_id
    )
    api_key = "agk_wrong" if case.get("apiKey") == "wrong" else agent["api_key"]
    own_run = {"agent_id": agent["id"], "run_id": registered.run_id}
    async with sdk.create_agent_client(
        base_url=main,
        api_key=api_key,
        run_id=registered.run_id,
        credentials_token=registered.credentials_token,
    ) as reporter:
        for step in case.get("before", []):
            assert step == "complete", step
            await reporter.complete({"done": True})
            await until_ended(main, tenant, agent["id"], registered.run_id)
        # Read-your-writes: each report answered 2xx, then the call at once (no polling).
        for report in case.get("reports", []):
            options = {snake(k): v for k, v in report.get("args", {}).items()}
            await _client_method(reporter, report["call"], options)
        if case["call"] == "getRun":
            return await sdk.get_run(base_url=base, ingest_api_key=key, **own_run, **args)
        if case["call"] == "cancelRun":
            return await sdk.cancel_run(base_url=base, ingest_api_key=key, **own_run, **args)
    async with sdk.create_agent_client(
        base_url=base,
        api_key=api_key,
        run_id=registered.run_id,
        credentials_token=registered.credentials_token,
    ) as client:
        return await _client_method(client, case["call"].split(".", 1)[1], args)


async def _client_method(client: sdk.AgentClient, method: str, args: dict[str, Any]) -> Any:
    """Call the agent client's ``method`` with the options ``args`` (in the SDK's names)."""
    if method == "started":
        return await client.started()
    if method == "output":
        return await client.output(args["output"], outputs=args.get("outputs"))
    if method == "waiting":
        return await client.waiting(token_id=args["token_id"], description=args.get("description"))
    if method == "complete":
        return await client.complete(args["output"], outputs=args.get("outputs"))
    if method == "fail":
        return await client.fail(args["message"])
    if method == "resolveCredential":
        return await client.resolve_credential(args["connection_id"])
    raise AssertionError(f"unknown agent client call {method}")
