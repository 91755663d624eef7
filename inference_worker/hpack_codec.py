"""HPACK (RFC 7541) for the HTTP/2 server core: a decoder with a fast path, and literal encoding.

Clients send the same header block on every call of a connection once their
fields sit in the dynamic table (indexed fields, and literals they chose not to
index, such as nghttp2's ``:path``), so a block that leaves the table as it was
is decoded once and cached, keyed by its bytes and the table's generation
(bumped by every change of the table). Huffman-coded
strings are decoded through a table of the canonical code's bit strings, and
cached too (``grpc-timeout`` values repeat). The encoder side is what a server
needs: literal fields without indexing and without Huffman coding, so the
peer's table never changes because of us.
"""

from __future__ import annotations

from collections import deque

DEFAULT_TABLE_SIZE = 4096
_CACHE_ENTRIES = 512

_STATIC_TEXT = (
    ":authority :method :method :path :path :scheme :scheme :status :status :status :status :status "
    ":status :status accept-charset accept-encoding accept-language accept-ranges accept "
    "access-control-allow-origin age allow authorization cache-control content-disposition "
    "content-encoding content-language content-length content-location content-range content-type "
    "cookie date etag expect expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified link location max-forwards proxy-authenticate "
    "proxy-authorization range referer refresh retry-after server set-cookie "
    "strict-transport-security transfer-encoding user-agent vary via www-authenticate"
)
_STATIC_NAMES = _STATIC_TEXT.split()
_STATIC_VALUES = {
    2: "GET", 3: "POST", 4: "/", 5: "/index.html", 6: "http", 7: "https", 8: "200", 9: "204",
    10: "206", 11: "304", 12: "400", 13: "404", 14: "500", 16: "gzip, deflate",
}  # fmt: skip
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), _STATIC_VALUES.get(index, "").encode())
    for index, name in enumerate(_STATIC_NAMES, start=1)
)

# The code length of each symbol (0-255, then EOS) of RFC 7541 Appendix B; the code is canonical
# (codes of one length are consecutive, in symbol order), so the lengths rebuild it.
_HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b0806"
    "06060505050606060606060607080f060c0a0d06070707070707070707070707070707070707070707070807080d"
    "130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c14161414161616171617"
    "171717171817181816171817171717151617161717181615141616171715171616181516171715151615171617"
    "1714161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b1b1418141516"
    "1515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e"
)


def _huffman_codes() -> dict[str, int]:
    codes: dict[str, int] = {}
    code, previous = -1, 0
    for symbol in sorted(range(257), key=lambda s: (_HUFFMAN_LENGTHS[s], s)):
        length = _HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        codes[format(code, f"0{length}b")] = symbol
    return codes


_CODES = _huffman_codes()
_LENGTHS = sorted(set(_HUFFMAN_LENGTHS))
_EOS = 256


class HpackError(ValueError):
    """The block is not valid HPACK: a connection error (COMPRESSION_ERROR)."""


def huffman_decode(data: bytes) -> bytes:
    bits = bin(int.from_bytes(data, "big") | (1 << (8 * len(data))))[3:]
    out = bytearray()
    position, end, codes = 0, len(bits), _CODES
    while position < end:
        rest = end - position
        if rest < 8 and bits.count("0", position) == 0:
            break  # padding: the most significant bits of EOS, shorter than a byte
        symbol, length = -1, 0
        for length in _LENGTHS:
            if length > rest:
                raise HpackError("a Huffman-coded string ends inside a code")
            symbol = codes.get(bits[position : position + length], -1)
            if symbol >= 0:
                break
        if symbol == _EOS:
            raise HpackError("a Huffman-coded string contains EOS")
        out.append(symbol)
        position += length
    return bytes(out)


class Decoder:
    """One connection's decoding state: the dynamic table and the caches."""

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.limit = max_table_size
        """What we allow the peer to use (SETTINGS_HEADER_TABLE_SIZE)."""
        self.max_size = max_table_size
        self.size = 0
        self.table: deque[tuple[bytes, bytes]] = deque()
        self.generation = 0
        self._blocks: dict[bytes, tuple[int, tuple[tuple[bytes, bytes], ...]]] = {}
        self._strings: dict[bytes, bytes] = {}

    def decode(self, block: bytes) -> tuple[tuple[bytes, bytes], ...]:
        """The header fields of ``block`` in order; raises ``HpackError``."""
        cached = self._blocks.get(block)
        if cached is not None and cached[0] == self.generation:
            return cached[1]
        fields: list[tuple[bytes, bytes]] = []
        unchanged = True
        position, end = 0, len(block)
        while position < end:
            first = block[position]
            if first & 0x80:  # indexed field
                index, position = self._integer(block, position, 0x7F)
                fields.append(self._field(index))
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                if fields:
                    raise HpackError("a table size update must start the block")
                unchanged = False
                size, position = self._integer(block, position, 0x1F)
                if size > self.limit:
                    raise HpackError(f"table size {size} exceeds the {self.limit} allowed")
                self.max_size = size
                self._evict(0)
                continue
            incremental = bool(first & 0x40)
            index, position = self._integer(block, position, 0x3F if incremental else 0x0F)
            if index:
                name = self._field(index)[0]
            else:
                name, position = self._string(block, position)
            value, position = self._string(block, position)
            fields.append((name, value))
            if incremental:
                unchanged = False
                self._insert(name, value)
        result = tuple(fields)
        if unchanged:
            if len(self._blocks) >= _CACHE_ENTRIES:
                self._blocks.clear()
            self._blocks[block] = (self.generation, result)
        return result

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise HpackError(f"no header table entry {index}")

    def _insert(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        self._evict(size)
        if size <= self.max_size:  # an entry larger than the table empties it and is not added
            self.table.appendleft((name, value))
            self.size += size
        self.generation += 1

    def _evict(self, room: int) -> None:
        while self.table and self.size + room > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32
        self.generation += 1

    @staticmethod
    def _integer(block: bytes, position: int, mask: int) -> tuple[int, int]:
        value = block[position] & mask
        position += 1
        if value < mask:
            return value, position
        shift = 0
        while True:
            if position >= len(block) or shift > 28:
                raise HpackError("a truncated or oversized integer")
            byte = block[position]
            position += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, position

    def _string(self, block: bytes, position: int) -> tuple[bytes, int]:
        if position >= len(block):
            raise HpackError("a field ends before its string")
        huffman = block[position] & 0x80
        length, position = self._integer(block, position, 0x7F)
        end = position + length
        if end > len(block):
            raise HpackError("a string runs past the end of the block")
        raw = block[position:end]
        if not huffman:
            return raw, end
        decoded = self._strings.get(raw)
        if decoded is None:
            decoded = huffman_decode(raw)
            if len(self._strings) >= _CACHE_ENTRIES:
                self._strings.clear()
            self._strings[raw] = decoded
        return decoded, end


def _encode_integer(value: int, mask: int, first: int) -> bytes:
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, with a literal name, no Huffman coding."""
    return b"\x00" + _encode_integer(len(name), 0x7F, 0) + name + _encode_integer(len(value), 0x7F, 0) + value
