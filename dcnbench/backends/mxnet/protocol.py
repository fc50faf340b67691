"""The pipe protocol between dcnbench and the MXNet worker, shared by both sides.

A message is an 8-byte big-endian header length, a UTF-8 JSON header, then the arrays the header
lists in `arrays` ([name, nbytes] pairs), each as `.npy` bytes. Only data crosses: no pickles, no
code. This file imports nothing but numpy and the standard library, so the worker's environment
(numpy 1.23) and dcnbench's (numpy 2) both load it.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

PROTOCOL_VERSION = 1


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
        arrays[name] = np.load(io.BytesIO(payload[at:at + size]), allow_pickle=False)
        at += size
    return arrays


def read_message(read_exactly) -> tuple[dict, dict]:
    """Read one message with `read_exactly(n) -> bytes` (which raises EOFError at the end)."""
    (size,) = struct.unpack(">Q", read_exactly(8))
    header = json.loads(read_exactly(size).decode())
    total = sum(n for _, n in header.get("arrays", []))
    return header, decode_arrays(header, read_exactly(total) if total else b"")
