"""The MXNet worker speaks dcnbench's one worker protocol (dcnbench/worker/protocol.py)."""

from dcnbench.worker.protocol import PROTOCOL_VERSION, decode_arrays, encode, read_message  # noqa: F401
