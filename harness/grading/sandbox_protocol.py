"""What the harness, the judge and the worker say to each other: framed JSON messages over pipes, and
the plain-data codec for the values that cross between the program and the tests.

Standard library only: the judge and the worker load this file as a top-level module, outside the
harness package, so nothing of the harness lives in a process the program can reach.

Values cross as plain data: JSON arrays are lists; every other value is a one-key object naming its
type ({"t": [...]} a tuple, {"q": [n, d]} a Fraction, ...); {"r": n} is a reference to an object kept
in the worker. The judge rebuilds each value from that data with the standard library's own types,
so equality is always Python's own (Fraction, Decimal, complex, deque, Counter, ...) and never that of
a class the program wrote.
"""

from __future__ import annotations

import _json
import builtins
import os
import sys
import time

# Decoding is bounded: the judge stops once a reply is past the program's deadline, and rejects a
# reply with more containers than one per CONTAINER_BYTES of the message cap (an empty list costs the
# judge ~60 bytes of memory for 3 bytes of JSON, so a bare cap on bytes does not bound memory).
CONTAINER_BYTES = 32
_CHECK_EVERY = 256  # values decoded between two looks at the clock (a big Fraction counts as many)
# Fraction(n, d) normalises with a gcd, quadratic in the size of n and d: at 2^20 bits ~4 s each (so
# 256 of them between two looks at the clock), at 2^16 bits (19,728 digits) ~15 ms.
_FRACTION_BITS = 1 << 16


_CONTAINERS = {list, dict}  # what JSON parsing gives besides scalars
_PLAIN, _NUMBERS = {float, str, bool, type(None)}, {int, float, bool}  # scalars that travel as themselves


def _stdlib(module: str, name: str):
    """A standard-library class if its module is loaded (a worker imports none it does not need)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def encode(x, other):
    """`x` as plain data; `other(x)` for a value of a type not listed here (exact types only)."""
    t = type(x)
    if x is None or t is bool or t is float or t is str:
        return x
    if t is int:  # big ints travel in hex: linear to convert both ways, unlike decimal
        return x if -(1 << 62) < x < 1 << 62 else {"i": format(x, "x")}
    if t is list:
        kinds = set(map(type, x))  # a million floats is a common reply: leave such a list as it is
        if kinds <= _PLAIN or (kinds <= _NUMBERS and -(1 << 62) < min(x, default=0) and max(x, default=0) < 1 << 62):
            return x
        return [encode(v, other) for v in x]
    if t is tuple:
        return {"t": [encode(v, other) for v in x]}
    if t is dict:
        return {"d": [[encode(k, other), encode(v, other)] for k, v in x.items()]}
    if t is set:
        return {"s": [encode(v, other) for v in x]}
    if t is frozenset:
        return {"f": [encode(v, other) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is bytearray:
        return {"B": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    if t is range:
        return {"R": [x.start, x.stop, x.step]}
    if t is type and getattr(builtins, x.__name__, None) is x:
        return {"y": x.__name__}  # builtin types (`int`, `str`, ...) are values tests pass around
    if t is _stdlib("fractions", "Fraction"):
        return {"q": [encode(x.numerator, other), encode(x.denominator, other)]}
    if t is _stdlib("decimal", "Decimal"):
        return {"D": str(x)}
    if t is _stdlib("collections", "deque"):
        return {"Q": [encode(v, other) for v in x]}
    if t is _stdlib("collections", "Counter"):
        return {"C": [[encode(k, other), encode(v, other)] for k, v in x.items()]}
    if t is _stdlib("collections", "OrderedDict"):
        return {"o": [[encode(k, other), encode(v, other)] for k, v in x.items()]}
    return other(x)


class Decoder:
    """Rebuilds values from plain data, within a deadline (Timeout past it): a set of hash-colliding
    ints costs quadratic time to build, and that time is the program's, not the judge's."""

    def __init__(self, ref, deadline: float | None = None):
        self.ref, self.deadline, self.count = ref, deadline, 0

    def _tick(self, weight: int = 1) -> None:
        before, self.count = self.count, self.count + weight
        if self.deadline is not None and self.count // _CHECK_EVERY > before // _CHECK_EVERY:
            if time.monotonic() > self.deadline:
                raise Timeout

    def __call__(self, x):
        self._tick()
        if isinstance(x, list):
            if not _CONTAINERS & set(map(type, x)):  # plain scalars (a million floats): nothing to rebuild
                return x
            for i, v in enumerate(x):  # in place: the parsed list is ours, and a copy would double the memory
                x[i] = self(v)
            return x
        if not isinstance(x, dict):
            return x
        ((tag, v),) = x.items()
        if tag == "t":
            return tuple(self(e) for e in v)
        if tag in ("d", "C", "o"):
            kind = {"d": dict, "C": _import("collections").Counter, "o": _import("collections").OrderedDict}[tag]
            out = kind()
            for k, e in v:
                out[self(k)] = self(e)
            return out
        if tag in ("s", "f"):
            out = set()
            for e in v:
                out.add(self(e))
            return out if tag == "s" else frozenset(out)
        if tag == "b":
            return bytes.fromhex(v)
        if tag == "B":
            return bytearray.fromhex(v)
        if tag == "c":
            return complex(*_typed(v, float, 2))
        if tag == "i":
            return int(v, 16)
        if tag == "R":
            return range(*_typed([self(e) for e in v], int, 3))
        if tag == "q":
            n, d = _typed([self(e) for e in v], int, 2)
            bits = max(n.bit_length(), d.bit_length())
            if bits > _FRACTION_BITS:
                raise ValueError("a fraction too large to normalise")
            self._tick(bits * bits >> 20)  # its gcd costs as much as decoding that many small values
            return _import("fractions").Fraction(n, d)
        if tag == "D":
            return _import("decimal").Decimal(_typed([v], str, 1)[0])
        if tag == "Q":
            return _import("collections").deque(self(e) for e in v)
        if tag == "y":
            value = getattr(builtins, v)
            if type(value) is not type:
                raise ValueError(f"{v!r} is not a builtin type")
            return value
        if tag == "r":
            return self.ref(v)
        raise ValueError(f"unknown tag {tag!r}")


def decode(x, ref, deadline: float | None = None):
    return Decoder(ref, deadline)(x)


def _typed(values: list, kind: type, count: int) -> list:
    if len(values) != count or not all(type(v) is kind or (kind is float and type(v) is int) for v in values):
        raise ValueError(f"expected {count} values of type {kind.__name__}")
    return values


def _import(name: str):
    return __import__(name)


class _Syntax:
    """The settings `json.loads` gives its C scanner. The `json` package itself is not imported: it
    pulls in `re` and `enum`, about half of a worker's start-up, once per program."""

    strict, object_hook, object_pairs_hook, parse_float, parse_int, memo = True, None, None, float, int, {}
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def _not_plain(value):
    raise TypeError(f"{type(value).__name__} is not plain data")


_scan = _json.make_scanner(_Syntax())
_encode = _json.make_encoder({}, _not_plain, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def dumps(value) -> str:
    """As `json.dumps(value)`, for the plain data `encode` makes."""
    return "".join(_encode(value, 0))


def loads(text: str | bytes):
    """As `json.loads(text)` (ValueError on bad input)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogatepass")
    try:
        value, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"no JSON value at {exc.value}") from None
    if end != len(text):
        raise ValueError(f"extra data at {end}")
    return value


def send(fd: int, message) -> None:
    send_text(fd, dumps(message))


def send_text(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


class Timeout(Exception):
    pass


class Output:
    """The program's stdout+stderr, drained while waiting for replies so the program never blocks on
    a full pipe; the first `cap` bytes are kept."""

    def __init__(self, fd: int, cap: int):
        self.fd, self.source, self.cap, self.kept = fd, fd, cap, bytearray()

    def read(self) -> bool:
        chunk = os.read(self.fd, 1 << 16)
        self.kept += chunk[: max(0, self.cap - len(self.kept))]
        return bool(chunk)

    def drain(self) -> None:
        """What is left once every writer is dead."""
        import select

        while self.fd >= 0 and select.select([self.fd], [], [], 0.2)[0] and self.read():
            pass
        if self.source >= 0:
            os.close(self.source)
            self.fd = self.source = -1


def recv_bytes(
    fd: int,
    deadline: float | None = None,
    cap: int = 1 << 30,
    output: Output | None = None,
    watch=None,
    every: float = 0.1,
) -> bytes:
    """One message's bytes; Timeout past `deadline`, EOFError when the writer is gone, ValueError when
    over `cap`. `watch()` is called every `every` seconds of waiting (it may raise to give up)."""
    import select

    def read_exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if watch is not None:
                    wait = min(wait, every)
                watched = [fd, output.fd] if output and output.fd >= 0 else [fd]
                ready = select.select(watched, [], [], wait)[0] if wait > 0 else []
                if not ready:
                    if watch is None or time.monotonic() >= deadline:
                        raise Timeout
                    watch()
                    continue
                if output and output.fd in ready and not output.read():
                    output.fd = -1
                if fd not in ready:
                    continue
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    size = int.from_bytes(read_exactly(4), "big")
    if size > cap:
        raise ValueError(f"message of {size} bytes exceeds the cap of {cap}")
    return read_exactly(size)


def recv(fd: int, deadline: float | None = None, cap: int = 1 << 30, output: Output | None = None):
    return loads(recv_bytes(fd, deadline, cap, output))


def parse_reply(data: bytes, cap: int):
    """JSON of a reply, refused when it holds more containers than the cap allows (see CONTAINER_BYTES)."""
    if data.count(b"[") + data.count(b"{") > max(cap // CONTAINER_BYTES, 1024):
        raise ValueError("too many values")
    return loads(data)
