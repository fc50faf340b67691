"""Checking: does an implementation compute the operator? verify (the suite run, its comparison,
cotangents and special checks), fuzz, knobs, covering arrays, problems (what did not pass), and
the ONNX export checks."""
