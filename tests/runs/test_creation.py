"""Creating runs once per Idempotency-Key: the outcome is a value the caller matches."""

from __future__ import annotations

import uuid

import pytest

from gateway.errors import Unprocessable
from gateway.http.app_keys import RUN_CREATION, RUN_LOOKUPS
from gateway.runs.creation import Created, Creation, IdempotentReplay
from store.enums import TriggerKind
from store.models import Agent
from tests.support.tenants import Tenant


async def _agent(tenant: Tenant) -> Agent:
    created = await tenant.create_agent(output_kind="json")
    return await tenant.client.app[RUN_LOOKUPS].agent_for(uuid.UUID(tenant.org_id), created["id"])


async def test_a_key_creates_one_run_and_names_it_to_every_later_request(tenant: Tenant) -> None:
    creation = tenant.client.app[RUN_CREATION]
    agent = await _agent(tenant)
    key = ("order-7", b"the request")

    async def create() -> Creation:
        return await creation.create_once(
            agent,
            input_data={"n": 1},
            user_id=None,
            window_ms=1000,
            trigger_kind=TriggerKind.TRIGGER,
            idempotency=key,
        )

    first = await create()
    again = await create()

    assert isinstance(first, Created)
    assert isinstance(again, IdempotentReplay)
    assert again.run.id == first.run.id
    assert await creation.replay(agent, key) == again.run


async def test_a_key_sent_with_another_request_is_refused_naming_its_run(tenant: Tenant) -> None:
    creation = tenant.client.app[RUN_CREATION]
    agent = await _agent(tenant)
    created = await creation.create_once(
        agent,
        input_data={},
        user_id=None,
        window_ms=1000,
        trigger_kind=TriggerKind.TRIGGER,
        idempotency=("order-8", b"one request"),
    )
    assert isinstance(created, Created)

    with pytest.raises(Unprocessable) as refused:
        await creation.replay(agent, ("order-8", b"another request"))

    assert refused.value.extra == {"runId": created.run.id}
    assert await creation.replay(agent, None) is None
