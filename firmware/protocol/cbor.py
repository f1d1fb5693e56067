"""CBOR (RFC 8949) for the subset Urja's messages use, on CPython and MicroPython.

Encodes: ints from -2**64 to 2**64-1, bytes, str, list/tuple, dict, ``Map``
(pairs in the caller's order), ``Tag``, True/False/None.  Floats are refused
on purpose: money, energy and time travel as integers (paise, Wh, seconds).
Heads are always the shortest form; a plain dict is written with its keys in
RFC 8949 section 4.2.1 order (bytewise order of the encoded keys), so the
same dict gives the same bytes on both runtimes even though MicroPython's
dicts are unordered.  Map keys must be int or str.

Decodes the same subset plus half/single/double floats (a peer may send
them; on the ESP32 port a double is rounded to single precision).  Refused
with ``CborError``: indefinite lengths, reserved additional info 28..30,
simple values other than false/true/null (including ``undefined``), keys
other than int/str, duplicate keys, invalid UTF-8, truncated input, trailing
bytes, nesting deeper than ``max_depth``, more than ``max_items`` data items
in one top-level item, and items larger than ``max_bytes`` (protects the
ESP32's ~100 KB heap from a hostile length field).

>>> encode(Map([("v", 1), ("e_wh", 1500)])).hex()
'a261760164655f77681905dc'
>>> decode(bytes.fromhex("83010203"))
[1, 2, 3]
"""
import math
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]  # looser signature than the stub
        return x

MAX_DEPTH = const(16)
MAX_ITEMS = const(1024)
MAX_BYTES = const(8192)
_U64_MAX = const(0xFFFFFFFFFFFFFFFF)

_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)


def __getattr__(name):
    # CborError, Map, Tag and Decoder are made on first use and kept in the module
    # dict: a meter encodes dicts and lists of plain values and decodes well-formed
    # commands without tags, whole, so it never holds these classes (~1.2 KB of heap).
    # Code here calls ``__getattr__("CborError")``; ``cbor.Map`` and ``from
    # firmware.protocol.cbor import Tag`` work as for any class.
    g = globals()
    if name in g:
        return g[name]
    if name == "CborError":
        class CborError(ValueError):
            """Input that is not well-formed CBOR, or outside the subset we accept."""
        g[name] = CborError
    elif name == "Map":
        class Map:
            """A CBOR map whose pairs are encoded in exactly the given order.

            >>> encode(Map([(2, "b"), (1, "a")])).hex()
            'a2026162016161'
            """

            def __init__(self, pairs):
                self.pairs = list(pairs)

            def __eq__(self, other):
                return isinstance(other, Map) and self.pairs == other.pairs

            def __repr__(self):
                return "Map(%r)" % (self.pairs,)
        g[name] = Map
    elif name == "Tag":
        class Tag:
            """A tagged item (major type 6), kept as (tag number, value) without interpretation.

            >>> decode(bytes.fromhex("c11a514b67b0"))
            Tag(1, 1363896240)
            """

            def __init__(self, tag, value):
                self.tag = tag
                self.value = value

            def __eq__(self, other):
                return (isinstance(other, Tag) and self.tag == other.tag
                        and self.value == other.value)

            def __repr__(self):
                return "Tag(%d, %r)" % (self.tag, self.value)
        g[name] = Tag
    elif name == "Decoder":
        # a meter decodes each command whole with ``decode``: no incremental decoder
        class Decoder:
            """Incremental decoder: feed bytes as they arrive, get complete items.

            Each top-level item is first scanned for well-formedness and limits (the
            scan resumes where it stopped, so byte-by-byte feeding costs O(n)), then
            built.  After a ``CborError`` from a malformed head the buffered bytes are
            dropped (CBOR has no resync marker; the transport must reframe); an item
            rejected while building (bad UTF-8, duplicate key) is skipped alone.

            >>> dec = Decoder()
            >>> list(dec.feed(b"\\x01\\x82"))
            [1]
            >>> list(dec.feed(b"\\x02\\x03"))
            [[2, 3]]
            """

            def __init__(self, max_depth=MAX_DEPTH, max_items=MAX_ITEMS, max_bytes=MAX_BYTES):
                self.max_depth = max_depth
                self.max_items = max_items
                self.max_bytes = max_bytes
                self.reset()

            def reset(self):
                """Forget buffered bytes and any partial item."""
                self._buf = bytearray()  # type: bytearray
                # scan progress inside self._buf, data items seen in this top-level
                # item, children still expected per open container (see _scan)
                self._state = [0, 0, []]

            @property
            def buffered(self):
                """Bytes held waiting for the rest of an item."""
                return len(self._buf)

            def feed(self, data):
                """Add ``data``; return an iterator over the items it completes."""
                self._buf.extend(data)
                return self._items()

            def _items(self):
                while self._buf:
                    try:
                        end = _scan(self._buf, self._state, self.max_depth, self.max_items,
                                    self.max_bytes)
                    except __getattr__("CborError"):
                        self.reset()
                        raise
                    if end < 0:
                        if len(self._buf) > self.max_bytes:
                            self.reset()
                            raise __getattr__("CborError")(
                                "item larger than %d bytes" % self.max_bytes)
                        return
                    item = bytes(self._buf[:end])
                    self._buf = bytearray(self._buf[end:])
                    self._state = [0, 0, []]
                    if end > self.max_bytes:  # same verdict whether it came in one chunk or many
                        raise __getattr__("CborError")("item of %d bytes exceeds %d" % (
                            end, self.max_bytes))
                    value, _ = _build(item, 0)
                    yield value
        g[name] = Decoder
    else:
        raise AttributeError(name)
    return g[name]


# ---------------------------------------------------------------- encoding

def encode(value):
    """CBOR bytes of ``value`` (deterministic: same value, same bytes).

    >>> encode([1, -1, b"\\x00", "a"]).hex()
    '84012041006161'
    """
    out = bytearray()
    _encode(out, value, 0)
    return bytes(out)


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
        return
    if n < 0x100:
        ai, size = 24, 1
    elif n < 0x10000:
        ai, size = 25, 2
    elif n < 0x100000000:
        ai, size = 26, 4
    else:
        ai, size = 27, 8
    out.append(mt | ai)
    for i in range(8 * size - 8, -8, -8):  # big-endian, byte by byte: nothing allocated
        out.append((n >> i) & 0xFF)


def _check_key(key):
    # bool first: on CPython True is an int, on MicroPython it is not
    if key is True or key is False or not (isinstance(key, int) or isinstance(key, str)):
        raise __getattr__("CborError")("map key must be int or str, not %s" % type(key).__name__)


def _encode(out, v, depth):
    # Separate isinstance calls, not one with a tuple of types: MicroPython builds
    # that tuple on the heap at every call.  Dicts before bytes and lists (no type
    # is both): a meter's uplinks are dicts.
    if depth > MAX_DEPTH:
        raise __getattr__("CborError")("nesting deeper than %d" % MAX_DEPTH)
    if v is None:
        out.append(_NULL)
    elif v is True:
        out.append(_TRUE)
    elif v is False:
        out.append(_FALSE)
    elif isinstance(v, int):
        if v >= 0:
            if v > _U64_MAX:
                raise __getattr__("CborError")("int %d does not fit in 64 bits" % v)
            _head(out, 0, v)
        else:
            if -1 - v > _U64_MAX:
                raise __getattr__("CborError")("int %d does not fit in 64 bits" % v)
            _head(out, 1, -1 - v)
    elif isinstance(v, str):
        b = v.encode()
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(v, dict):
        # Each key is encoded once into ``kb`` and the keys are sorted by those bytes
        # in place (RFC 8949 4.2.1 order): a scratch bytearray and three small lists
        # per map, not a bytearray, a bytes and a tuple per key and a lambda per call.
        keys = list(v)
        kb = bytearray()
        at = []  # keys[i] is kb[at[i]:at[i + 1]]
        for k in keys:
            _check_key(k)
            at.append(len(kb))
            _encode(kb, k, depth + 1)
        at.append(len(kb))
        n = len(keys)
        order = list(range(n))
        for i in range(1, n):  # insertion sort: a map has a few keys
            x = order[i]
            j = i
            while j:
                # is the key before slot j bytewise greater than key x?
                p, pe = at[order[j - 1]], at[order[j - 1] + 1]
                q, qe = at[x], at[x + 1]
                while p < pe and q < qe and kb[p] == kb[q]:
                    p += 1
                    q += 1
                if p == pe or (q < qe and kb[p] < kb[q]):
                    break  # it is a prefix of key x, or smaller at the first difference
                order[j] = order[j - 1]
                j -= 1
            order[j] = x
        _head(out, 5, n)
        for i in order:
            for p in range(at[i], at[i + 1]):
                out.append(kb[p])
            _encode(out, v[keys[i]], depth + 1)
    elif isinstance(v, bytes) or isinstance(v, bytearray) or isinstance(v, memoryview):
        _head(out, 2, len(v))
        out.extend(v)
    elif isinstance(v, list) or isinstance(v, tuple):
        _head(out, 4, len(v))
        for x in v:
            _encode(out, x, depth + 1)
    # Map and Tag come last: a meter's values never get here, so it never makes them
    elif isinstance(v, __getattr__("Map")):
        seen = set()
        for k, _ in v.pairs:
            _check_key(k)
            if k in seen:
                raise __getattr__("CborError")("duplicate map key %r" % (k,))
            seen.add(k)
        _head(out, 5, len(v.pairs))
        for k, x in v.pairs:
            _encode(out, k, depth + 1)
            _encode(out, x, depth + 1)
    elif isinstance(v, __getattr__("Tag")):
        if not isinstance(v.tag, int) or v.tag < 0 or v.tag > _U64_MAX:
            raise __getattr__("CborError")("tag number must be 0..2**64-1")
        _head(out, 6, v.tag)
        _encode(out, v.value, depth + 1)
    elif isinstance(v, float):
        raise __getattr__("CborError")("floats are not encoded: send integer units (paise, Wh, s)")
    else:
        raise __getattr__("CborError")("cannot encode %s" % type(v).__name__)


# ---------------------------------------------------------------- decoding

def decode(data, max_depth=MAX_DEPTH, max_items=MAX_ITEMS):
    """The one data item that fills ``data`` exactly.

    >>> decode(bytes.fromhex("a26161016162820203"))
    {'a': 1, 'b': [2, 3]}
    """
    end = _scan(data, [0, 0, []], max_depth, max_items, _U64_MAX)  # data is in memory
    if end < 0:
        raise __getattr__("CborError")("truncated: %d bytes end inside an item" % len(data))
    if end != len(data):
        raise __getattr__("CborError")("%d trailing bytes after the item" % (len(data) - end))
    value, _ = _build(data, 0)
    return value


def _scan(buf, state, max_depth, max_items, max_bytes):
    """End offset of the first complete item in ``buf``, or -1 if more bytes are needed.

    ``state`` is [offset to scan from, data items seen in this top-level item,
    children still expected per open container], updated so that a call with
    more bytes resumes where this one stopped.
    """
    pos = state[0]
    stack = state[2]
    n = len(buf)
    while True:
        if pos >= n:
            state[0] = pos
            return -1
        ib = buf[pos]
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            arg = ai
            hlen = 1
        elif ai < 28:
            hlen = 1 + (1 << (ai - 24))
            if pos + hlen > n:
                state[0] = pos
                return -1
            arg = int.from_bytes(bytes(buf[pos + 1:pos + hlen]), "big")
        elif ai == 31:
            if major == 7:
                raise __getattr__("CborError")("unexpected break byte 0xff at offset %d" % pos)
            raise __getattr__("CborError")(
                "indefinite length (major type %d) not supported" % major)
        else:
            raise __getattr__("CborError")("reserved additional info %d at offset %d" % (
                ai, pos))
        state[1] += 1
        if state[1] > max_items:
            raise __getattr__("CborError")("more than %d data items" % max_items)
        if major == 2 or major == 3:
            if arg > max_bytes:
                raise __getattr__("CborError")("string of %d bytes exceeds %d" % (
                    arg, max_bytes))
            if pos + hlen + arg > n:
                state[0] = pos  # re-read this head when more bytes come
                state[1] -= 1
                return -1
            pos += hlen + arg
        elif major == 4 or major == 5 or major == 6:
            children = arg * 2 if major == 5 else (1 if major == 6 else arg)
            pos += hlen
            if children > max_items:
                raise __getattr__("CborError")("container of %d items exceeds %d" % (
                    children, max_items))
            if children:
                if len(stack) >= max_depth:
                    raise __getattr__("CborError")("nesting deeper than %d" % max_depth)
                stack.append(children)
                continue
        elif major == 7 and ai == 24 and arg < 32:
            raise __getattr__("CborError")("simple value %d in two-byte form" % arg)
        else:
            pos += hlen
        # an item just ended: close every container it completes
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if not stack:
            state[0] = pos
            return pos


def _build(buf, pos):
    """(value, next offset) of the item at ``pos``; ``buf`` was scanned already."""
    ib = buf[pos]
    major = ib >> 5
    ai = ib & 31
    if ai < 24:
        arg = ai
        pos += 1
    else:
        size = 1 << (ai - 24)
        arg = int.from_bytes(bytes(buf[pos + 1:pos + 1 + size]), "big")
        pos += 1 + size
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2:
        return bytes(buf[pos:pos + arg]), pos + arg
    if major == 3:
        try:
            text = str(bytes(buf[pos:pos + arg]), "utf-8")
        except UnicodeError:
            raise __getattr__("CborError")("text string is not valid UTF-8")
        return text, pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _build(buf, pos)
            items.append(item)
        return items, pos
    if major == 5:
        result = {}
        for _ in range(arg):
            key, pos = _build(buf, pos)
            if key is True or key is False or not isinstance(key, (int, str)):
                raise __getattr__("CborError")("map key must be int or str, got %r" % (key,))
            if key in result:
                raise __getattr__("CborError")("duplicate map key %r" % (key,))
            result[key], pos = _build(buf, pos)
        return result, pos
    if major == 6:
        item, pos = _build(buf, pos)
        return __getattr__("Tag")(arg, item), pos
    # major 7: simple values and floats
    if ai == 20:
        return False, pos
    if ai == 21:
        return True, pos
    if ai == 22:
        return None, pos
    if ai == 25:  # half precision: RFC 8949 Appendix D
        exp = (arg >> 10) & 0x1F
        mant = arg & 0x3FF
        if exp == 0:
            val = math.ldexp(mant, -24)
        elif exp != 31:
            val = math.ldexp(mant + 1024, exp - 25)
        else:
            val = math.inf if mant == 0 else math.nan
        return -val if arg & 0x8000 else val, pos
    if ai == 26:
        return struct.unpack(">f", struct.pack(">I", arg))[0], pos
    if ai == 27:
        return struct.unpack(">d", struct.pack(">Q", arg))[0], pos
    raise __getattr__("CborError")("unsupported simple value %d" % arg)
