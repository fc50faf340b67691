"""Timing: how fast and how memory-hungry? speed (the runner), measure (the timer and its
statistics), memory and its worker, limits (bounded workloads), contention (a busy machine),
roofline."""
