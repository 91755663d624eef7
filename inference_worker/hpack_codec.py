"""HPACK (RFC 7541) for the HTTP/2 server core: a decoder with a fast path and limits, and literal encoding.

Clients send the same header block on every call of a connection once their
fields sit in the dynamic table (indexed fields, and literals they chose not to
index, such as nghttp2's ``:path``), so a small block that leaves the table as it
was is decoded once and cached, keyed by its bytes and the table's generation
(bumped by every change of the table). Huffman-coded strings are decoded a byte
at a time by a state machine (``_NEXT``, ``_EMIT``), and short ones cached too
(``grpc-timeout`` values repeat). The caches hold small entries only, a bounded
number of them: a connection's caches stay under 1 MiB whatever its peer sends.

A block is refused (``decode`` raises ``TooLarge``: the stream's header list is too large) once
its fields pass ``max_list_size`` (names, values and 32 bytes a field, as
SETTINGS_MAX_HEADER_LIST_SIZE counts them), or when it is longer than a block within the
limit can be (``max_block``); decoding stops there, and the rest of the block is only read
for its changes to the dynamic table (a string is decoded only if the table can hold it), so
later blocks of the connection still decode. A refused block of more fields than a block
within the limit can hold raises ``HpackLimit`` (the connection ends: ENHANCE_YOUR_CALM).
The encoder side is what a server needs: literal fields without indexing and without
Huffman coding, so the peer's table never changes because of us.
"""

from __future__ import annotations

from collections import deque

DEFAULT_TABLE_SIZE = 4096
DEFAULT_LIST_SIZE = 64 * 1024
FIELD_OVERHEAD = 32
"""What each field adds to a header list's size besides its name and value (RFC 9113 6.5.2)."""
BLOCK_SLACK = 16
"""A block's encoded size beyond its header list's size that a block within the limit can need.
A field's encoding (its first byte, and its name's and value's lengths: 1 + 4 + 4 bytes at most,
fewer with an indexed name) is shorter than the 32 bytes it counts for, an indexed field is 1-3
bytes for at least 32, and encoders (nghttp2, Go, hpack) Huffman-code a string only when that
is shorter (grpc-core always codes base64 ``-bin`` values: shorter too, but for bytes whose base64
is mostly ``+``): a block is at most its list's size, plus its table size updates (at most two,
RFC 7541 4.2, 6 bytes each at most)."""
FIELD_SLACK = 16
"""Representations a refused block may hold past ``max_list_size // FIELD_OVERHEAD``."""
_CACHED_BLOCK = 1024
"""Blocks up to this long whose fields count at most ``_CACHED_LIST`` are cached, 64 at most."""
_CACHED_LIST = 4096
_BLOCK_ENTRIES = 64
_CACHED_STRING = 128
"""Huffman-coded strings up to this long are cached, 256 at most."""
_STRING_ENTRIES = 256

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
_EOS = 256


def _huffman_codes() -> dict[str, int]:
    codes: dict[str, int] = {}
    code, previous = -1, 0
    for symbol in sorted(range(257), key=lambda s: (_HUFFMAN_LENGTHS[s], s)):
        length = _HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        codes[format(code, f"0{length}b")] = symbol
    return codes


def _huffman_machine() -> tuple[list[int], list[bytes], int, frozenset[int]]:
    """The decoder as a machine reading a byte at a time (as nghttp2's reads a nibble): a state is
    a node of the code's tree (times 256); for state ``s`` and byte ``b``, ``next[s | b]`` is the
    state after it and ``emit[s | b]`` the symbols it completed. Built a nibble at a time, then
    composed (about 20 ms at import). Also returns the state after EOS and the states a string may
    end in (the root, or up to 7 bits of EOS: padding)."""
    children = [0, 0]  # node n's children at 2n and 2n + 1: a node, or ~symbol for a leaf
    for bits, symbol in _huffman_codes().items():
        node = 0
        for bit in bits[:-1]:
            slot = 2 * node + int(bit)
            if not children[slot]:
                children[slot] = len(children) // 2
                children += [0, 0]
            node = children[slot]
        children[2 * node + int(bits[-1])] = ~symbol
    dead = len(children) // 2  # after EOS: stays there
    step_next, step_emit = [], []
    for state in range(dead + 1):
        for nibble in range(16):
            node, out = state, bytearray()
            for shift in (3, 2, 1, 0):
                if node == dead:
                    break
                child = children[2 * node + (nibble >> shift & 1)]
                if child >= 0:
                    node = child
                elif child == ~_EOS:
                    node = dead
                else:
                    out.append(~child)
                    node = 0
            step_next.append(node)
            step_emit.append(bytes(out))
    interned: dict[bytes, bytes] = {}
    next_state, emit = [], []
    for middle, first in zip(step_next, step_emit, strict=True):
        for low in range(16):
            next_state.append(step_next[16 * middle + low] << 8)
            both = first + step_emit[16 * middle + low]
            emit.append(interned.setdefault(both, both))
    ends, node = {0}, 0
    for _ in range(7):
        node = children[2 * node + 1]
        ends.add(node << 8)
    return next_state, emit, dead << 8, frozenset(ends)


_NEXT, _EMIT, _DEAD, _ENDS = _huffman_machine()


class HpackError(ValueError):
    """The block is not valid HPACK: a connection error (COMPRESSION_ERROR)."""


class TooLarge(Exception):
    """The header list passes ``max_list_size``: refused, its fields not kept (the table is in step)."""


class HpackLimit(HpackError):
    """The block is past anything a peer within the limit sends: a connection error (ENHANCE_YOUR_CALM)."""


def huffman_decode(data: bytes) -> bytes:
    state, out, next_state, emit = 0, bytearray(), _NEXT, _EMIT
    for byte in data:
        index = state | byte
        out += emit[index]
        state = next_state[index]
    if state not in _ENDS:
        if state == _DEAD:
            raise HpackError("a Huffman-coded string contains EOS")
        raise HpackError("a Huffman-coded string ends inside a code")
    return bytes(out)


def _shortest(length: int, huffman: int) -> int:
    """The fewest bytes a string of ``length`` bytes decodes to (a symbol's code is 30 bits at most)."""
    return (8 * length + 22) // 30 if huffman else length


class Decoder:
    """One connection's decoding state: the dynamic table, the caches and the header list limit."""

    def __init__(
        self, max_table_size: int = DEFAULT_TABLE_SIZE, max_list_size: int = DEFAULT_LIST_SIZE
    ) -> None:
        self.limit = max_table_size
        """What we allow the peer to use (SETTINGS_HEADER_TABLE_SIZE)."""
        self.max_size = max_table_size
        self.size = 0
        self.table: deque[tuple[bytes, bytes]] = deque()
        self.generation = 0
        self.max_list_size = max_list_size
        """The largest header list decoded (SETTINGS_MAX_HEADER_LIST_SIZE)."""
        self.max_block = max_list_size + BLOCK_SLACK
        """The longest block that may hold a header list within the limit: a longer one is refused unread."""
        self.max_fields = max_list_size // FIELD_OVERHEAD + FIELD_SLACK
        """Representations read past the limit before the connection ends (ENHANCE_YOUR_CALM)."""
        self._blocks: dict[bytes, tuple[int, tuple[tuple[bytes, bytes], ...]]] = {}
        self._strings: dict[bytes, bytes] = {}

    def decode(self, block: bytes) -> tuple[tuple[bytes, bytes], ...]:
        """The header fields of ``block`` in order; raises ``TooLarge`` past ``max_list_size`` (the
        table kept in step), ``HpackError``."""
        cached = self._blocks.get(block)
        if cached is not None and cached[0] == self.generation:
            return cached[1]
        if len(block) > self.max_block:
            raise self._skip(block, 0, False)
        fields: list[tuple[bytes, bytes]] = []
        unchanged, updates, room = True, 0, self.max_list_size
        position, end = 0, len(block)
        while position < end:
            first = block[position]
            if first & 0x80:  # indexed field
                index, position = self._integer(block, position, 0x7F)
                field = self._field(index)
                fields.append(field)
                room -= len(field[0]) + len(field[1]) + 32  # FIELD_OVERHEAD
                if room < 0:
                    raise self._skip(block, position, True)
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                updates += 1
                unchanged = False
                position = self._update(block, position, bool(fields) or updates > 2)
                continue
            start = position
            incremental = first & 0x40
            index, position = self._integer(block, position, 0x3F if incremental else 0x0F)
            if index:
                name: bytes | None = self._field(index)[0]
            else:
                name, position = self._string(block, position, room - 32)
            value = None
            if name is not None:
                value, position = self._string(block, position, room - 32 - len(name))
            if name is None or value is None:  # too long to be worth decoding (but for the table)
                raise self._skip(block, start, bool(fields))
            fields.append((name, value))
            room -= len(name) + len(value) + 32
            if incremental:
                unchanged = False
                self._insert(name, value)
            if room < 0:
                raise self._skip(block, position, True)
        result = tuple(fields)
        if unchanged and len(block) <= _CACHED_BLOCK and self.max_list_size - room <= _CACHED_LIST:
            if len(self._blocks) >= _BLOCK_ENTRIES:
                self._blocks.clear()
            self._blocks[block] = (self.generation, result)
        return result

    def _skip(self, block: bytes, position: int, fielded: bool) -> TooLarge:
        """Read the rest of a refused block for its changes to the table only (a string is decoded
        only if the table can hold its entry); returns what to raise."""
        end, left, updates = len(block), self.max_fields, 0
        while position < end:
            left -= 1
            if left < 0:
                raise HpackLimit(f"a header block reads as more than {self.max_fields} fields past the limit")
            first = block[position]
            if first & 0x80:
                index, position = self._integer(block, position, 0x7F)
                self._field(index)
                fielded = True
                continue
            if first & 0xE0 == 0x20:
                updates += 1
                position = self._update(block, position, fielded or updates > 2)
                continue
            fielded = True
            incremental = first & 0x40
            index, position = self._integer(block, position, 0x3F if incremental else 0x0F)
            name = self._field(index)[0] if index else None
            name_at = position
            if name is None:
                huffman, start, position = self._bounds(block, position)
                shortest = _shortest(position - start, huffman)
            else:
                shortest = len(name)
            value_at = position
            huffman, start, position = self._bounds(block, position)
            if not incremental:
                continue
            shortest += _shortest(position - start, huffman)
            if shortest + FIELD_OVERHEAD > self.max_size:  # an entry the table cannot hold empties it
                self._evict(self.max_size + 1)
                continue
            left -= (position - name_at) // FIELD_OVERHEAD  # decoding costs as much as reading fields
            if left < 0:
                raise HpackLimit(f"a header block reads as more than {self.max_fields} fields past the limit")
            if name is None:
                name = self._text(block, name_at)
            self._insert(name, self._text(block, value_at))
        return TooLarge(f"a header list over {self.max_list_size} bytes")

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise HpackError(f"no header table entry {index}")

    def _update(self, block: bytes, position: int, misplaced: bool) -> int:
        if misplaced:
            raise HpackError("a table size update must start the block (at most two)")
        size, position = self._integer(block, position, 0x1F)
        if size > self.limit:
            raise HpackError(f"table size {size} exceeds the {self.limit} allowed")
        self.max_size = size
        self._evict(0)
        return position

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

    def _bounds(self, block: bytes, position: int) -> tuple[int, int, int]:
        """A string's Huffman flag, start and end."""
        if position >= len(block):
            raise HpackError("a field ends before its string")
        huffman = block[position] & 0x80
        length, position = self._integer(block, position, 0x7F)
        end = position + length
        if end > len(block):
            raise HpackError("a string runs past the end of the block")
        return huffman, position, end

    def _string(self, block: bytes, position: int, room: int) -> tuple[bytes | None, int]:
        """The string at ``position`` and its end; None for one that cannot decode within ``room``."""
        huffman, start, end = self._bounds(block, position)
        if not huffman:
            return block[start:end], end
        if (8 * (end - start) + 22) // 30 > room:  # _shortest
            return None, end
        return self._huffman(block[start:end]), end

    def _text(self, block: bytes, position: int) -> bytes:
        huffman, start, end = self._bounds(block, position)
        return self._huffman(block[start:end]) if huffman else block[start:end]

    def _huffman(self, raw: bytes) -> bytes:
        decoded = self._strings.get(raw)
        if decoded is None:
            decoded = huffman_decode(raw)
            if len(raw) <= _CACHED_STRING:
                if len(self._strings) >= _STRING_ENTRIES:
                    self._strings.clear()
                self._strings[raw] = decoded
        return decoded


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
