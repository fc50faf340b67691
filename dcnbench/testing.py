"""dcnbench inside your own pytest suite: check a kernel against the float64 oracle as `verify --impl` does.

    import pytest
    from dcnbench.testing import assert_op_matches_oracle, case_params
    from mykernels import deform_conv2d

    def test_deform_conv2d_matches_oracle():
        assert_op_matches_oracle(deform_conv2d, op="deform_conv2d", dtypes=["float64", "float32"])

    @pytest.mark.parametrize("case", case_params("deform_conv2d", dtypes=["float32"]))
    def test_each_case(case):  # one test id per case, e.g. test_each_case[groups2/float32]
        assert_op_matches_oracle(deform_conv2d, cases=[case])

The callable takes the operator's signature (`dcnbench verify --help`, README). It runs exactly
what `dcnbench verify --impl PATH.py:FUNC` runs: the same probe call, the same default cases
(filtered by `dtypes` and `cases` as `--dtype` and `--case` filter them), the same engine
(`dcnbench.checking.verify.run_verify`: output and every gradient against the oracle or identity, bitwise
determinism, no writes to the caller's tensors, gradcheck), the same tolerances, and the same
verdict (`dcnbench.checking.verify.failed`). A failure raises AssertionError with one line per failing
case and quantity: the case id, the quantity, the error and the tolerance (or the reason).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dcnbench.ops.case import Case

DEFAULT_OP = "deform_conv2d"


def oracle_cases(op: str = DEFAULT_OP, *, dtypes: Sequence[str] | None = None, cases: Sequence[str | Case] | None = None,
                 seed: int = 0) -> list[Case]:
    """The default cases of `op` that `verify --op OP --dtype ... --case ...` would run.

    `cases` holds text a case id must contain (as `--case`), or Case objects taken as they are.
    """
    from dcnbench import ops
    from dcnbench.checking.verify import default_suite, select_cases

    ops.get(op)
    given = [c for c in cases or [] if isinstance(c, Case)]
    patterns = [c for c in cases or [] if not isinstance(c, Case)]
    if given and not patterns:
        return [c for c in given if not dtypes or c.dtype in dtypes]
    return given + select_cases(default_suite(seed, [op]), patterns or None, list(dtypes) if dtypes else None, [op])


def case_params(op: str = DEFAULT_OP, *, dtypes: Sequence[str] | None = None, cases: Sequence[str] | None = None,
                seed: int = 0) -> list:
    """`pytest.param(case, id=case.case_id)` for each case `oracle_cases` selects: one test id per case."""
    import pytest

    return [pytest.param(c, id=c.case_id) for c in oracle_cases(op, dtypes=dtypes, cases=cases, seed=seed)]


def verify_callable(fn: Callable, *, op: str | None = None, dtypes: Sequence[str] | None = None,
                    cases: Sequence[str | Case] | None = None, device: str = "cpu", seed: int = 0,
                    name: str | None = None) -> list:
    """The verify results (dcnbench.checking.verify.VerifyResult) of `fn` on the selected cases, as `verify --impl` gets them."""
    from dcnbench.errors import PluginError
    from dcnbench.plugins import callable_backend, probe_backend
    from dcnbench.checking.verify import run_verify

    label = name or getattr(fn, "__name__", "kernel")
    try:
        backend = callable_backend(fn, name=label, description=_where(fn), op=op)
        op = next(iter(backend.ops))
        probe_backend(backend, label, device, op)
    except PluginError as exc:
        raise AssertionError(f"{exc.message} ({exc.hint})") from None
    chosen = oracle_cases(op, dtypes=dtypes, cases=cases, seed=seed)
    if not chosen:
        raise ValueError(f"no {op} case matches dtypes={dtypes!r}, cases={cases!r} (see `dcnbench verify --list --op {op}`)")
    return run_verify(backends=[backend], cases=chosen, device=device)


def assert_op_matches_oracle(fn: Callable, op: str | None = None, *, dtypes: Sequence[str] | None = None,
                             cases: Sequence[str | Case] | None = None, device: str = "cpu", seed: int = 0,
                             allow_nondeterministic: bool = False, name: str | None = None) -> None:
    """Raise AssertionError naming each failing case, quantity, error and tolerance; return None when all pass.

    `op` defaults to `fn.dcnbench_op`, else deform_conv2d; `fn.dcnbench_dtypes` limits the dtypes
    it is asked to run (others are `unsupported`, which does not fail), as for `--impl`.
    """
    from dcnbench.checking.problems import FAILING, one_line, problems
    from dcnbench.checking.verify import failed

    results = verify_callable(fn, op=op, dtypes=dtypes, cases=cases, device=device, seed=seed, name=name)
    if not failed(results, allow_nondeterministic):
        return
    statuses = tuple(s for s in FAILING if not (allow_nondeterministic and s == "nondeterministic"))
    found = problems(results, statuses)
    bad = len({p.case_id for p in found})
    lines = [f"{results[0].backend} does not match the {results[0].case.op} oracle: {bad} of {len(results)} case(s) "
             f"did not pass on {device}"] + [f"  {one_line(p)}" for p in found]
    raise AssertionError("\n".join(lines))


def _where(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{fn.__name__}" if code else repr(fn)
