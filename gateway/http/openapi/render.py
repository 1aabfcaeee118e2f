"""A self-contained HTML reference page rendered from the OpenAPI document.

No scripts and nothing fetched from elsewhere: the page works on a network without internet
access and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from gateway.http.openapi.components import Json

_METHODS = ("get", "put", "post", "patch", "delete")
_CODE = re.compile(r"`([^`]+)`")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}
.op{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.m{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.patch{color:#a60}.put{color:#a60}.delete{color:#c00}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
td,th{border:1px solid #e3e3e3;padding:.25rem .5rem;text-align:left;vertical-align:top}
code,pre{background:#f5f5f5;border-radius:3px;padding:0 .2rem;font-size:90%}
pre{padding:.5rem;overflow-x:auto}
"""


def _text(value: str) -> str:
    """Escaped text with `code` spans."""
    return _CODE.sub(r"<code>\1</code>", html.escape(value)).replace("\n", "<br>")


def _ref_name(schema: Any) -> str | None:
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    return None


def _schema(schema: Any) -> str:
    """A schema as a link (for a named one) or as compact JSON."""
    name = _ref_name(schema)
    if name is not None:
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    return f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre>"


def _resolve(document: Json, item: Json) -> Json:
    """A parameter or header with its ``$ref`` followed (one level)."""
    ref = item.get("$ref")
    if not isinstance(ref, str):
        return item
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _operation(document: Json, path: str, method: str, op: Json, shared: list[Json]) -> str:
    parts = [
        f'<div class="op" id="{html.escape(op.get("operationId", ""))}">',
        f'<p><span class="m {method}">{method}</span> <code>{html.escape(path)}</code> '
        f"<strong>{_text(op.get('summary', ''))}</strong></p>",
    ]
    if op.get("description"):
        parts.append(f"<p>{_text(op['description'])}</p>")
    if op.get("security"):
        schemes = ", ".join(name for req in op["security"] for name in req)
        parts.append(f"<p>Auth: <code>{html.escape(schemes)}</code></p>")
    elif op.get("security") == []:
        parts.append("<p>Auth: none (public).</p>")
    params = [_resolve(document, p) for p in [*shared, *op.get("parameters", [])]]
    if params:
        rows = "".join(
            f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td>"
            f"<td>{_text(p.get('description', ''))}</td></tr>"
            for p in params
        )
        parts.append(
            f"<table><tr><th>parameter</th><th>in</th><th>required</th><th></th></tr>{rows}</table>"
        )
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            required = "required" if body.get("required") else "optional"
            parts.append(
                f"<p>Body ({required}, <code>{html.escape(media)}</code>): "
                f"{_schema(content.get('schema', {}))}</p>"
            )
    response_rows = []
    for status, response in op.get("responses", {}).items():
        schemas = [
            f"<code>{html.escape(media)}</code> {_schema(c.get('schema', {}))}"
            for media, c in response.get("content", {}).items()
        ]
        response_rows.append(
            f"<tr><td><strong>{html.escape(status)}</strong></td>"
            f"<td>{_text(response.get('description', ''))}</td><td>{'<br>'.join(schemas)}</td></tr>"
        )
    parts.append(
        "<table><tr><th>status</th><th>when</th><th>body</th></tr>"
        + "".join(response_rows)
        + "</table>"
    )
    parts.append("</div>")
    return "".join(parts)


def render_html(document: Json) -> str:
    """The reference page for ``document``."""
    info = document["info"]
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{html.escape(info['title'])} API reference</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(info['title'])} <small>{html.escape(info['version'])}</small></h1>",
        f"<p>{_text(info.get('description', ''))}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>',
    ]
    for tag in document.get("tags", []):
        out.append(f"<h2>{html.escape(tag['name'])}</h2><p>{_text(tag['description'])}</p>")
        for path, item in document["paths"].items():
            for method in _METHODS:
                op = item.get(method)
                if op is not None and tag["name"] in op.get("tags", []):
                    out.append(_operation(document, path, method, op, item.get("parameters", [])))
    out.append("<h2>Schemas</h2>")
    for name, schema in document["components"]["schemas"].items():
        out.append(
            f'<h3 id="schema-{html.escape(name)}">{html.escape(name)}</h3>'
            f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre>"
        )
    out.append("</body></html>")
    return "".join(out)
