"""The pipe protocol between dcnbench and a worker process (main.py), shared by both sides.

A message is an 8-byte big-endian header length, a UTF-8 JSON header, then the arrays the header
lists in `arrays` ([name, nbytes] pairs), each as `.npy` bytes. Only data crosses: no pickles, no
code. This file imports nothing but numpy and the standard library, so every worker environment
(MXNet's numpy 1.23, paddle's numpy 2, dcnbench's own) loads it.

Version 2: the hello names the framework (`framework`), says `ok` (false with `error`, and maybe
`hint`, when the framework cannot start), whether it has a backward, and each package version
under `versions` and under its own name.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

PROTOCOL_VERSION = 2
# A header is a few hundred bytes of JSON; a length beyond this is a corrupt stream, not a message.
MAX_HEADER_BYTES = 16 << 20


class ProtocolError(ValueError):
    """The other side sent bytes that are not a message of this protocol."""


def encode(header: dict, arrays: dict | None = None) -> bytes:
    blobs = []
    for name, value in (arrays or {}).items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        blobs.append((name, buf.getvalue()))
    head = dict(header, arrays=[[name, len(blob)] for name, blob in blobs])
    text = json.dumps(head).encode()
    return struct.pack(">Q", len(text)) + text + b"".join(blob for _, blob in blobs)


def decode_arrays(header: dict, payload: bytes) -> dict:
    arrays, at = {}, 0
    for name, size in header.get("arrays", []):
        try:
            arrays[name] = np.load(io.BytesIO(payload[at:at + size]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ProtocolError(f"array '{name}' is not .npy data without pickles ({exc})") from None
        at += size
    return arrays


def read_message(read_exactly) -> tuple[dict, dict]:
    """Read one message with `read_exactly(n) -> bytes` (which raises EOFError at the end).

    Bytes that do not form a message raise ProtocolError, whatever they are.
    """
    (size,) = struct.unpack(">Q", read_exactly(8))
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"a header length of {size} bytes (at most {MAX_HEADER_BYTES} expected)")
    text = read_exactly(size)
    try:
        header = json.loads(text.decode())
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"a header that is not JSON: {text[:60]!r}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"a header that is a JSON {type(header).__name__}, not an object")
    listed = header.get("arrays", [])
    try:
        total = sum(int(n) for _, n in listed)
    except (TypeError, ValueError):
        raise ProtocolError(f"a malformed array list: {str(listed)[:60]}") from None
    return header, decode_arrays(header, read_exactly(total) if total else b"")
