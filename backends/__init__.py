"""In-tree backends. Installed as `dcnbench.backends`; each module exposes `backend()`."""
