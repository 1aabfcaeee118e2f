"""The chunked-framing parser the spliced forwarder reads chunk headers with."""

from __future__ import annotations

import pytest

from gateway.http.streaming.chunked import ChunkFraming, MalformedChunk, Phase


def test_raw_bytes_fed_in_any_pieces_give_the_payload_size_and_where_the_framing_stands() -> None:
    raw = b"5\r\nhello\r\n1a;ext=1\r\n" + b"x" * 26 + b"\r\n3\r\nab"
    for cut in range(1, len(raw)):
        framing = ChunkFraming()
        payload = framing.payload_in(raw[:cut]) + framing.payload_in(raw[cut:])
        assert payload == 5 + 26 + 2
        assert framing.phase is Phase.DATA
        assert framing.remaining == 1


def test_the_last_chunk_and_its_trailers_end_the_body() -> None:
    framing = ChunkFraming()
    assert framing.payload_in(b"2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n") == 2
    assert framing.phase is Phase.DONE


@pytest.mark.parametrize(
    "raw",
    [b"zz\r\n", b"5\nhello", b"2\r\nokay\r\n", b"\r\n", b"1" * 17 + b"\r\n", b"5" * 9000],
    ids=["not hex", "bare LF", "payload too long", "empty size", "size too long", "endless"],
)
def test_broken_framing_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedChunk):
        ChunkFraming().payload_in(raw)
