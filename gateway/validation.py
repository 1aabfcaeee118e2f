"""Request-body validation: the shared marshmallow fields, and ``load`` (a 400 naming fields).

Domain services validate the bodies they are given (the admin API and the ``admin`` console
command share them); the HTTP layer validates the run bodies it reads.
"""

from __future__ import annotations

import math
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from gateway.errors import BadRequest
from store.jsonb import jsonb_problem


class StrictNumber(fields.Field):  # type: ignore[type-arg]
    """A JSON number, never a string or a boolean, finite."""

    default_error_messages = {"invalid": "Not a valid number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if not math.isfinite(value):
            raise self.make_error("invalid")
        return float(value)


class JsonObject(fields.Dict):
    """A JSON object (a ``dict``); anything else is refused with a clear message."""

    default_error_messages = {"invalid": "Must be a JSON object."}


class StorableBody(Schema):
    """A body PostgreSQL must be able to store as given (no ``\u0000`` in any string)."""

    @validates_schema(pass_original=True)
    def _storable(self, data: dict[str, Any], original_data: Any, **_: Any) -> None:
        if (problem := jsonb_problem(original_data)) is not None:
            raise ValidationError(f"The body cannot be stored: it {problem}.")


NAME = fields.String(required=True, validate=validate.Length(min=1, max=200))


def load(schema: Schema, data: Any, *, partial: bool = False) -> dict[str, Any]:
    """Validate ``data`` against ``schema``; a failure is a 400 that lists each bad field.

    ``partial``: any of the schema's own fields may be left out; a nested value given (a
    block) must still be whole.
    """
    try:
        # Named fields, not True: marshmallow would pass True on to nested schemas too.
        result: dict[str, Any] = schema.load(
            data, partial=tuple(schema.fields) if partial else False
        )
    except ValidationError as exc:
        raise BadRequest("Invalid request body", extra={"details": exc.messages}) from None
    return result
