"""The store's JSON reader gives what ``json.loads`` gives, integers past 64 bits included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from store import jsonb

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
@example({"order": 12345678901234567890})  # one past 2**63: orjson alone reads a float
@example([-(2**64), 2**64, 2**63 - 1])
@example({"id": "1234567890123456789012"})  # a digit run inside a string
@example("٠١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩")  # non-ASCII digits are string content, not a number
def test_a_stored_value_reads_back_as_json_reads_it(value: Any) -> None:
    text = json.dumps(value)
    assert jsonb.loads(text) == json.loads(text)
    assert jsonb.loads(text.encode()) == json.loads(text)
    assert type(jsonb.loads(text)) is type(json.loads(text))


@pytest.mark.parametrize("text", ['{"n": 18446744073709551616}', "[1, 99999999999999999999.5e3]"])
def test_long_numbers_keep_their_exact_value_and_type(text: str) -> None:
    read = jsonb.loads(text.encode())
    assert read == json.loads(text)
    assert repr(read) == repr(json.loads(text))


def test_what_json_refuses_is_refused_with_its_error() -> None:
    for text in ("{", "[1,]", '{"a" 1}'):
        with pytest.raises(json.JSONDecodeError):
            jsonb.loads(text.encode())
