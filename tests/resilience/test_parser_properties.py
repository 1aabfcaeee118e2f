"""Property tests of what parses caller and runtime input: whatever arrives, each parser gives
a valid value or a clean refusal, never an exception of another kind or an unsafe value."""

from __future__ import annotations

import base64
import datetime as dt
import re
import urllib.parse
import uuid
from email.message import Message
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.execute.bodies import load_controls
from gateway.execute.input_format import InputField, InputProblems, coerce_input
from gateway.execute.service import Selection, resolve_selected_outputs
from gateway.http.parsing import request_bodies
from gateway.http.streaming.attachments import utf8_disposition
from gateway.runs import filenames
from gateway.runs.lookups import RunLookups
from gateway.runs.outputs import MAX_OUTPUTS, header_outputs, json_outputs, lift_outputs
from gateway.settings import Settings
from gateway.validation import load
from store.models import Agent
from tests.support.tokens import SECRET_KEY

PROPERTY = settings(max_examples=150, deadline=None, database=None)


def _refusal(kind: type[Exception], parse: Any, *args: Any) -> Any:
    """What ``parse(*args)`` returns, or the ``kind`` exception it raised (any other
    exception fails the test)."""
    try:
        return parse(*args)
    except kind as exc:
        return exc


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


# -- X-Outputs and outputs lifting --------------------------------------------------------


@PROPERTY
@given(st.text(max_size=40))
@example("١٢")  # Arabic-Indic digits: isdigit() says yes, int() agrees; not ASCII
@example("+5")
@example("0x10")
@example(" 7 ")
@example(str(2**63))
def test_x_outputs_is_a_non_negative_ascii_integer_or_nothing(value: str) -> None:
    outputs = header_outputs(value)
    if outputs is None:
        return
    assert 0 <= outputs <= MAX_OUTPUTS
    assert value.strip().isascii()
    assert value.strip().isdigit()
    assert int(value.strip()) == outputs


@PROPERTY
@given(st.integers(min_value=-(2**64), max_value=2**64), st.sampled_from(["", " ", "\t"]))
def test_x_outputs_reads_every_count_a_bigint_can_hold(number: int, pad: str) -> None:
    expected = number if 0 <= number <= MAX_OUTPUTS else None
    assert header_outputs(f"{pad}{number}{pad}") == expected


@PROPERTY
@given(json_values)
def test_outputs_are_lifted_only_from_a_top_level_non_negative_integer(output: Any) -> None:
    snapshot = repr(output)
    lifted = lift_outputs(output)
    assert repr(output) == snapshot  # never stripped from output_data
    if lifted is None:
        return
    assert isinstance(output, dict)
    value = output["outputs"]
    assert type(value) is int
    assert 0 <= value <= MAX_OUTPUTS
    assert lifted == value


@PROPERTY
@given(json_values)
def test_a_reported_outputs_value_is_kept_only_when_a_valid_count(value: Any) -> None:
    kept = json_outputs(value)
    valid = type(value) is int and 0 <= value <= MAX_OUTPUTS
    assert kept == (value if valid else None)


# -- selectedOutputs ----------------------------------------------------------------------


def _agent(blocks: list[dict[str, str]] | None = None, timeout_ms: int = 120_000) -> Agent:
    now = dt.datetime.now(dt.UTC)
    return Agent(
        id=1,
        org_id=uuid.uuid4(),
        name="Agent",
        managed_by="platform",
        status="active",
        allow_external_triggers=True,
        output_kind="stream",
        runtime={"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"},
        default_input={},
        input_format=None,
        running_timeout_ms=timeout_ms,
        created_at=now,
        updated_at=now,
        api_key_salt=b"salt",
        blocks=blocks or [],
    )


BLOCKS = [
    {"id": "n-1", "name": "Agent 1"},
    {"id": "n-2", "name": "Writer Bot"},
    {"id": "n-3", "name": "summary"},
]


def _select(agent: Agent, raw: Any) -> Selection:
    """``selectedOutputs`` as execute reads it: checked by the body's schema, then resolved."""
    return resolve_selected_outputs(
        agent, load_controls({"selectedOutputs": raw})["selectedOutputs"]
    )


@PROPERTY
@given(json_values | st.lists(st.text(max_size=20), max_size=5))
def test_any_selected_outputs_value_is_resolved_or_refused_with_a_400(raw: Any) -> None:
    refusal = _refusal(BadRequest, _select, _agent(BLOCKS), raw)
    if isinstance(refusal, BadRequest):
        assert refusal.status == 400
        assert refusal.message
        return
    selection = refusal
    known = {b["id"] for b in BLOCKS}
    assert selection.ids is None or selection.ids <= known


@st.composite
def _spelled(draw: st.DrawFn, name: str) -> str:
    """A block name as a caller may write it: any case, spaces anywhere."""
    letters = [c.upper() if draw(st.booleans()) else c.lower() for c in name if c != " "]
    spaced = "".join(c + (" " if draw(st.booleans()) else "") for c in letters)
    return spaced.strip()


@PROPERTY
@given(st.data())
def test_blocks_are_selected_by_name_whatever_the_case_and_spaces(data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3))
    entries = [data.draw(_spelled(block["name"])) + ".content" for block in chosen]

    selection = resolve_selected_outputs(_agent(BLOCKS), entries)

    assert selection.ids == {block["id"] for block in chosen}


# -- data URLs ----------------------------------------------------------------------------

FILES = [InputField("documents", "files")]


def _coerce(item: dict[str, Any]) -> Any:
    return coerce_input(FILES, {"documents": [item]}, max_file_bytes=1024 * 1024)


@PROPERTY
@given(
    st.binary(max_size=3000),
    st.sampled_from(["application/pdf", "text/plain;charset=utf-8", "image/png", ""]),
    st.sampled_from([0, 4, 76]),
)
def test_a_base64_data_url_decodes_to_the_bytes_it_encodes(
    payload: bytes, media: str, wrap: int
) -> None:
    encoded = base64.b64encode(payload).decode()
    if wrap:  # line-wrapped, as `base64` prints it
        encoded = "\n".join(encoded[i : i + wrap] for i in range(0, len(encoded), wrap))
    coerced = _coerce({"type": "file", "data": f"data:{media};base64,{encoded}", "name": "f"})

    (upload,) = coerced.uploads
    assert upload.size == len(payload)
    assert b"".join(upload.decoded_chunks()) == payload


@PROPERTY
@given(st.binary(max_size=500))
def test_a_percent_encoded_data_url_decodes_to_its_bytes(payload: bytes) -> None:
    data = "data:application/octet-stream," + urllib.parse.quote_from_bytes(payload)
    (upload,) = _coerce({"type": "file", "data": data}).uploads
    assert upload.size == len(payload)
    assert b"".join(upload.decoded_chunks()) == payload


@PROPERTY
@given(
    st.text(max_size=60)
    | st.builds(lambda tail: "data:" + tail, st.text(max_size=60))
    | st.builds(
        lambda media, body: f"data:{media};base64,{body}",
        st.text(max_size=20),
        st.text(alphabet="ABCDabcd0123+/=\n \t%", max_size=40),
    )
)
@example("data:;base64,====")
@example("data:;base64,A===")
@example("data:text/plain;base64,AB=A")
@example("data:,%")
@example("data:,%zz")
def test_any_data_url_is_decoded_exactly_or_refused_with_a_reason(data: str) -> None:
    coerced = _refusal(InputProblems, _coerce, {"type": "file", "data": data, "name": "x"})
    if isinstance(coerced, InputProblems):
        assert coerced.problems["documents"]
        return
    for upload in coerced.uploads:
        decoded = b"".join(upload.decoded_chunks())
        assert upload.size == len(decoded)


# -- timeoutMs ----------------------------------------------------------------------------


@PROPERTY
@given(json_values, st.integers(min_value=1, max_value=86_400_000))
@example(1e-300, 60_000)
@example(2**70, 60_000)
@example(0.5, 60_000)
def test_any_timeout_ms_is_refused_or_capped_by_the_agent_and_the_ceiling(
    timeout_ms: Any, running_timeout_ms: int
) -> None:
    settings = Settings(hard_ceiling_ms=600_000, default_wait_ms=60_000, secret_key=SECRET_KEY)
    runs = RunLookups(settings=settings, pool=None, adapters={})  # type: ignore[arg-type]
    body = _refusal(BadRequest, load, request_bodies.TriggerBody(), {"timeoutMs": timeout_ms})
    if isinstance(body, BadRequest):
        assert "timeoutMs" in body.extra["details"]
        return
    window = runs.wait_window_ms(_agent(timeout_ms=running_timeout_ms), body["timeoutMs"])
    assert isinstance(window, int)
    cap = min(running_timeout_ms, settings.hard_ceiling_ms)
    assert 1 <= window <= cap
    asked = settings.default_wait_ms if body["timeoutMs"] is None else body["timeoutMs"]
    assert window == max(1, int(min(asked, cap)))


# -- Content-Disposition ------------------------------------------------------------------

_SAFE_DISPOSITION = re.compile(r'attachment; filename="([A-Za-z0-9_][A-Za-z0-9._-]*)"')


@PROPERTY
@given(st.text(max_size=80), st.integers(min_value=1, max_value=2**63 - 1), st.text(max_size=60))
@example("../../etc/passwd", 1, "text/csv")
@example('Report "Q3"\r\nSet-Cookie: x=1', 7, "application/pdf")
@example("", 3, "")
@example("...", 3, "application/x-unknown")
def test_a_synthesized_content_disposition_is_always_a_safe_quoted_name(
    agent_name: str, run_id: int, content_type: str
) -> None:
    filename = filenames.derive_filename(agent_name, run_id, content_type)
    header = filenames.synthesized_disposition(filename)

    match = _SAFE_DISPOSITION.fullmatch(header)
    assert match, header
    assert f"-run-{run_id}" in match.group(1)
    # What a client reads back is exactly the name, with no folder in it.
    assert filenames.filename_from_disposition(header) == match.group(1)


@PROPERTY
@given(st.text(max_size=80))
@example("..")
@example("a/../../b")
@example("C:\\Windows\\system.ini")
def test_a_sanitised_file_name_has_no_path_quote_or_control_character(name: str) -> None:
    safe = filenames.safe_filename(name)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", safe), safe


@PROPERTY
@given(st.text(max_size=60))
@example('evil".pdf\r\nX-Injected: 1')
@example("../../secret.txt")
def test_a_stored_files_disposition_quotes_an_ascii_fallback_and_keeps_the_name(
    name: str,
) -> None:
    header = utf8_disposition(name)
    assert "\r" not in header
    assert "\n" not in header
    fallback = re.fullmatch(r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'(.*)', header)
    assert fallback, header
    assert all(32 <= ord(c) < 127 for c in fallback.group(1))
    message = Message()
    message["content-disposition"] = header
    if "\x00" not in name and not _has_surrogate(name):
        assert urllib.parse.unquote(fallback.group(2)) == name


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.mark.parametrize("value", ["attachment", 'attachment; filename=""', "inline; x=y"])
def test_a_disposition_without_a_name_is_answered_with_a_derived_one(value: str) -> None:
    assert filenames.filename_from_disposition(value) is None
