"""An agent's settable fields are declared once (store.models) and every other list follows."""

from __future__ import annotations

import dataclasses

from gateway.admin.bodies import AgentBody
from gateway.http.openapi import build_document
from store.models import AGENT_SETTABLE_FIELDS, Agent


def test_every_settable_field_is_a_column_of_the_agent() -> None:
    columns = [column.name for column in dataclasses.fields(Agent)]
    assert set(AGENT_SETTABLE_FIELDS) <= set(columns)


def test_the_admin_body_accepts_exactly_the_settable_fields() -> None:
    assert sorted(AgentBody().fields) == sorted(AGENT_SETTABLE_FIELDS)


def test_the_openapi_document_lists_the_settable_fields_in_their_order() -> None:
    schemas = build_document()["components"]["schemas"]
    assert tuple(schemas["AgentBody"]["properties"]) == AGENT_SETTABLE_FIELDS
    assert tuple(schemas["AgentPatch"]["properties"]) == AGENT_SETTABLE_FIELDS
