"""apispec's marshmallow plugin, taught this project's conventions.

- ``StrictNumber`` is a JSON number.
- A field's ``metadata["json_schema"]`` is copied into its property as it stands: what JSON
  Schema says that marshmallow cannot (``const``, an object's known keys).
- A schema's ``Meta.json_schema`` is merged into its component the same way: a rule a
  ``validates_schema`` method checks in Python (one field required when another has a
  value), said again for readers of the document.
- A schema that refuses unknown fields is ``additionalProperties: false`` even when it has a
  ``Meta.description`` (apispec drops the flag then).
- A nested schema not registered under a name of its own is written inline.
- A constant's ``default`` (its own value) is left out.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_instance
from marshmallow import EXCLUDE, INCLUDE, Schema, fields

from gateway.validation import StrictNumber


def _json_schema_metadata(self: Any, field: fields.Field[Any], **_: Any) -> dict[str, Any]:
    extra: dict[str, Any] = field.metadata.get("json_schema", {})
    return dict(extra)


def _inline(schema: type[Schema]) -> str:
    """No name (apispec reads a falsy name so): a nested schema that was not registered is
    written in place."""
    return ""


class BodySchemas(MarshmallowPlugin):
    """The marshmallow plugin with the conventions above."""

    def __init__(self) -> None:
        super().__init__(schema_name_resolver=_inline)

    def init_spec(self, spec: APISpec) -> None:
        """Register the project's field types and metadata with the converter."""
        super().init_spec(spec)
        assert self.converter is not None
        self.converter.map_to_openapi_type(  # type: ignore[no-untyped-call]
            StrictNumber, "number", None
        )
        self.converter.add_attribute_function(  # type: ignore[no-untyped-call]
            _json_schema_metadata
        )

    # MarshmallowPlugin widens BasePlugin's signature (its schema keyword): kept as it is.
    def schema_helper(  # type: ignore[override]
        self, name: Any, _: Any, schema: Any = None, **kwargs: Any
    ) -> Any:
        """The component of a marshmallow schema, with ``Meta.json_schema`` merged in."""
        result: dict[str, Any] | None = super().schema_helper(  # type: ignore[no-untyped-call]
            name, _, schema=schema, **kwargs
        )
        if schema is None or result is None:
            return result
        instance = resolve_schema_instance(schema)
        if instance.unknown != EXCLUDE:
            result["additionalProperties"] = instance.unknown == INCLUDE
        result.update(getattr(instance.Meta, "json_schema", {}))
        drop_const_defaults(result)
        return result


def drop_const_defaults(node: Any) -> None:
    """A constant's ``default`` (marshmallow's ``Constant`` loads its value) says nothing
    ``const`` does not: left out."""
    if isinstance(node, dict):
        if "const" in node and node.get("default", object()) == node["const"]:
            del node["default"]
        for value in node.values():
            drop_const_defaults(value)
    elif isinstance(node, list):
        for value in node:
            drop_const_defaults(value)
