"""HPACK decoding (RFC 7541): the RFC's own examples, the caches, and refusals."""

from __future__ import annotations

import pytest

from inference_worker.hpack_codec import Decoder, HpackError, huffman_decode, literal


def test_the_rfc_s_huffman_coded_requests_decode_in_order_with_the_dynamic_table() -> None:
    """RFC 7541 C.4: three requests on one connection, the table filling as they go."""
    decoder = Decoder()
    first = decoder.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
    assert first == (
        (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
    )  # fmt: skip
    second = decoder.decode(bytes.fromhex("828684be5886a8eb10649cbf"))
    assert second[-1] == (b"cache-control", b"no-cache")
    assert second[3] == (b":authority", b"www.example.com")  # from the dynamic table
    third = decoder.decode(bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"))
    assert third == (
        (b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
        (b":authority", b"www.example.com"), (b"custom-key", b"custom-value"),
    )  # fmt: skip
    assert decoder.size == 164  # the RFC's table size after the third request


def test_a_repeated_block_is_served_from_the_cache_until_the_table_changes() -> None:
    decoder = Decoder()
    decoder.decode(literal(b"x", b"1").replace(b"\x00", b"\x40", 1))  # incremental indexing: entry 62
    block = b"\x83\xbe"  # :method POST, then entry 62
    assert decoder.decode(block) is decoder.decode(block)
    assert decoder.decode(block)[1] == (b"x", b"1")
    decoder.decode(literal(b"y", b"2").replace(b"\x00", b"\x40", 1))  # entry 62 is now y: 2
    assert decoder.decode(block)[1] == (b"y", b"2")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\xff\x7f", "no header table entry"),
        (b"\x00\x05abc", "runs past the end"),
        (b"\x82\x3f\xe1\x1f", "table size update must start"),
        (b"\x3f\xe1\x3f", "exceeds the 4096 allowed"),
        (b"\x00\x81\xff", "ends inside a code"),
        (b"\x80", "no header table entry"),
    ],
)
def test_malformed_blocks_are_refused_with_a_reason(block: bytes, message: str) -> None:
    with pytest.raises(HpackError, match=message):
        Decoder().decode(block)


def test_huffman_strings_decode_and_eos_inside_is_refused() -> None:
    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"
    with pytest.raises(HpackError, match="EOS"):
        huffman_decode(b"\xff\xff\xff\xff")
