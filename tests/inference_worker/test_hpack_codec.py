"""HPACK decoding (RFC 7541): the RFC's own examples, the caches, refusals, what a hostile block costs."""

from __future__ import annotations

import sys
import tracemalloc
from types import FrameType
from typing import Any

import pytest

from inference_worker import hpack_codec
from inference_worker.hpack_codec import (
    Decoder,
    HpackError,
    HpackLimit,
    TooLarge,
    _encode_integer,
    huffman_decode,
    literal,
)
from tests.support.h2_client import count_huffman_decodes


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


# -- limits: what a hostile peer's blocks may cost ---------------------------------------------


def _huffman(data: bytes) -> bytes:
    """``data`` Huffman-coded, the code rebuilt from RFC 7541's code lengths."""
    codes = {symbol: bits for bits, symbol in hpack_codec._huffman_codes().items()}
    bits = "".join(codes[byte] for byte in data)
    bits += "1" * (-len(bits) % 8)  # padding: the start of EOS
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def _string(data: bytes, *, huffman: bool = False) -> bytes:
    raw = _huffman(data) if huffman else data
    return _encode_integer(len(raw), 0x7F, 0x80 if huffman else 0) + raw


def _indexed(name: bytes, value: bytes) -> bytes:
    """A literal field with incremental indexing (it enters the dynamic table)."""
    return b"\x40" + _string(name) + _string(value)


LONGEST = bytes([10])  # "\n": a 30-bit code, the longest a symbol has


def test_every_symbol_decodes_and_padding_past_seven_bits_is_refused() -> None:
    every = bytes(range(256))
    assert huffman_decode(_huffman(every)) == every
    assert huffman_decode(_huffman(every[::-1] * 3)) == every[::-1] * 3
    with pytest.raises(HpackError, match="ends inside a code"):
        huffman_decode(_huffman(b"a") + b"\xff")  # eight bits of padding


def test_huffman_decoding_takes_a_few_steps_a_byte_whatever_the_codes() -> None:
    """The audit's 30-bit codes cost 0.2 s per 250 KiB (a dictionary lookup per candidate length:
    over 100 bytecode instructions a byte); a table step a byte is 17. Counted, not timed."""
    counted = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal counted
        if frame.f_code is not huffman_decode.__code__:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            counted += 1
        return tracer

    for text in (LONGEST * 1000, b"grpc-python/1.60.0 grpc-c/37.0.0 (linux; chttp2)" * 20):
        raw = _huffman(text)
        counted = 0
        sys.settrace(tracer)
        try:
            assert huffman_decode(raw) == text
        finally:
            sys.settrace(None)
        assert counted < 24 * len(raw), (counted, len(raw))


def test_a_block_past_the_list_limit_is_refused_and_the_table_stays_in_step() -> None:
    decoder = Decoder(max_list_size=1024)
    block = _indexed(b"x-first", b"1") + literal(b"x-big", b"a" * 2000) + _indexed(b"x-after", b"2" * 100)
    with pytest.raises(TooLarge):  # refused, but both entries enter the table
        decoder.decode(block)
    assert decoder.decode(b"\xbe\xbf") == ((b"x-after", b"2" * 100), (b"x-first", b"1"))
    huge = _indexed(b"x-huge", b"h" * 5000)  # larger than the table: it empties the table
    with pytest.raises(TooLarge):
        decoder.decode(literal(b"x-big", b"a" * 2000) + huge)
    assert decoder.size == 0
    with pytest.raises(HpackError, match="no header table entry 62"):
        decoder.decode(b"\xbe")


def test_a_huffman_coded_entry_past_the_limit_is_decoded_only_if_the_table_can_hold_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = count_huffman_decodes(monkeypatch)
    decoder = Decoder(max_list_size=1024)
    kept = b"\x40" + _string(b"x-kept") + _string(b"k" * 50, huffman=True)
    dropped = b"\x00" + _string(b"x-skipped") + _string(LONGEST * 500, huffman=True)
    too_big = b"\x40" + _string(b"x-too-big") + _string(LONGEST * 5000, huffman=True)
    with pytest.raises(TooLarge):
        decoder.decode(literal(b"x-big", b"a" * 2000) + kept + dropped)
    assert decoded == [len(_huffman(b"k" * 50))]  # only what the table keeps
    assert decoder.decode(b"\xbe") == ((b"x-kept", b"k" * 50),)
    with pytest.raises(TooLarge):
        decoder.decode(literal(b"x-big", b"a" * 2000) + too_big)
    assert len(decoded) == 1
    assert decoder.size == 0


def test_a_block_longer_than_a_block_within_the_limit_is_refused_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hpack_codec, "huffman_decode", lambda raw: pytest.fail("decoded a string"))
    decoder = Decoder(max_list_size=4096)
    value = _huffman(LONGEST * 4400)  # 16.5 KB on the wire, 4.4 KB decoded: no legitimate encoder's
    assert len(value) > decoder.max_block
    with pytest.raises(TooLarge):
        decoder.decode(b"\x00" + _string(b"x-pad") + _encode_integer(len(value), 0x7F, 0x80) + value)


def test_a_reference_bomb_costs_at_most_about_the_limit_and_ends_the_connection() -> None:
    """One 4 KB entry, then a block of one-byte references to it: ~250k fields of 4 KB for 250 KiB."""
    decoder = Decoder(max_list_size=64 * 1024)
    decoder.decode(_indexed(b"x-big", b"v" * 4000))
    looked_up = 0
    real = decoder._field

    def field(index: int) -> tuple[bytes, bytes]:
        nonlocal looked_up
        looked_up += 1
        return real(index)

    decoder._field = field  # type: ignore[method-assign]
    with pytest.raises(HpackLimit, match="fields past the limit"):
        decoder.decode(b"\xbe" * 60_000)
    assert looked_up <= 17 + decoder.max_fields + 1  # the limit's worth, then the fields read past it


def test_a_block_within_the_limit_decodes_whole_and_more_than_two_size_updates_are_refused() -> None:
    decoder = Decoder(max_list_size=64 * 1024)
    fields = tuple((b"x-%d" % i, b"v" * 100) for i in range(400))  # 54 KB as counted
    assert decoder.decode(b"".join(literal(name, value) for name, value in fields)) == fields
    with pytest.raises(HpackError, match="must start the block"):
        decoder.decode(b"\x20\x20\x20\x82")


def test_a_connection_s_caches_hold_small_entries_only() -> None:
    """The audit's 512 distinct refused 250 KiB blocks held ~296 MiB per connection."""
    decoder = Decoder(max_list_size=64 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            assert decoder.decode(literal(b"x-pad", b"%06d" % i + b"a" * 60_000)) is not None
            with pytest.raises(TooLarge):
                decoder.decode(literal(b"x-pad", b"%06d" % i + b"a" * 100_000))
            huffman = b"\x00" + _string(b"x-h") + _string(b"%06d" % i + b"abc" * 500, huffman=True)
            assert decoder.decode(huffman) is not None
        for i in range(300):  # small blocks are cached, a bounded number of them
            block = (
                literal(b"x-id", b"%06d" % i) + b"\x00" + _string(b"x-t", huffman=True) + _string(b"%dm" % i)
            )
            decoder.decode(block)
            assert decoder.decode(block) is decoder.decode(block)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, held
