"""Oversubscription detection (dcnbench/timing/contention.py): each sign on its own, and a watched block."""

import os

from dcnbench.timing import contention
from dcnbench.timing.contention import Contention


def test_each_sign_alone_makes_the_machine_oversubscribed():
    quiet = Contention(cores=2, load_1m=1.9, steal=0.01, probe_share=0.97, wait_policy="passive")
    assert not quiet.oversubscribed and quiet.line().startswith("machine: not oversubscribed (load 1.9 on 2 cores")
    for busy, why in ((Contention(2, 2.6, 0.01, 0.97, "passive"), "load 2.6 on 2 cores"),
                      (Contention(2, 1.0, 0.20, 0.97, "passive"), "20% of the CPU time stolen by the hypervisor"),
                      (Contention(2, 1.0, 0.00, 0.45, "passive"), "a busy probe got 45% of a core")):
        assert busy.reasons == (why,) and busy.line().startswith(f"machine: OVERSUBSCRIBED ({why})")
        assert busy.to_dict()["oversubscribed"] and contention.oversubscribed({"contention": busy.to_dict()}) == why
    assert contention.oversubscribed({}) == ""  # a file from before the check: unknown, not untrustworthy


def test_a_watched_block_records_what_it_saw(monkeypatch):
    with contention.watch() as seen:
        sum(range(10**5))
    found = seen.result
    assert found.cores == contention.cores() and 0 <= found.probe_share <= 1 and 0 <= found.steal <= 1
    assert found.wait_policy == "passive"  # dcnbench set it before torch loaded (conftest imports dcnbench first)
    monkeypatch.setattr(os, "getloadavg", lambda: (contention.cores() + 3.0, 0.0, 0.0))
    with contention.watch() as seen:
        pass
    assert seen.result.oversubscribed and seen.result.reasons[0].startswith("load ")
