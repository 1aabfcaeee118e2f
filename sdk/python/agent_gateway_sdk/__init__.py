"""The Python client of the gateway's agent API (the agent SDK's exports, Pythonic names).

>>> from agent_gateway_sdk import trigger_run_and_wait
>>> result = await trigger_run_and_wait(base_url=..., ingest_api_key=..., agent_id=42)
"""

from agent_gateway_sdk.agent import (
    UNSET,
    AgentClient,
    Download,
    cancel_run,
    create_agent_client,
    get_run,
    ingest_run,
    register_run,
    trigger_run,
    trigger_run_and_download,
    trigger_run_and_wait,
)
from agent_gateway_sdk.errors import GatewayError, RateLimited
from agent_gateway_sdk.models import (
    CallbackAccepted,
    CancelledRun,
    Credential,
    IngestedRun,
    RegisteredRun,
    Run,
    TimedOut,
    TriggeredRun,
)

__all__ = [
    "UNSET",
    "AgentClient",
    "CallbackAccepted",
    "CancelledRun",
    "Credential",
    "Download",
    "GatewayError",
    "IngestedRun",
    "RateLimited",
    "RegisteredRun",
    "Run",
    "TimedOut",
    "TriggeredRun",
    "cancel_run",
    "create_agent_client",
    "get_run",
    "ingest_run",
    "register_run",
    "trigger_run",
    "trigger_run_and_download",
    "trigger_run_and_wait",
]
