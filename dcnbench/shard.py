"""`--shard K/N`: split a case list deterministically so a CI matrix spreads a suite over machines.

Case i of the list goes to shard (i mod N) + 1: every case lands in exactly one shard, shards
differ in size by at most one, and the same list always splits the same way.
"""

from __future__ import annotations

from dcnbench.errors import UsageError

SHARD_GRAMMAR = "K/N with 1 <= K <= N, e.g. 2/4"


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    k, slash, n = spec.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not slash or not 1 <= k_i <= n_i:
        raise UsageError(f"malformed --shard '{spec}'", hint=f"write {SHARD_GRAMMAR}")
    return k_i, n_i


def take_shard(items: list, shard: tuple[int, int] | None) -> list:
    if shard is None:
        return list(items)
    k, n = shard
    return [item for i, item in enumerate(items) if i % n == k - 1]
