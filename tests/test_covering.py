"""The covering-array generator (dcnbench/checking/covering.py): every valid pair (triple) covered, nothing
invalid generated, the same rows every time; and every operator's declared table."""

import pytest

from dcnbench import ops
from dcnbench.checking.covering import Constraint, Option, complete, covering_array, generate, uncovered

TOY = (Option("a", (1, 2, 3)), Option("b", ("x", "y")), Option("c", (0, 1, 2, 3)), Option("d", (True, False)))
NO_A3_WITH_C0 = Constraint(("a", "c"), lambda a, c: not (a == 3 and c == 0), "a toy rule")


@pytest.mark.parametrize("strength", [2, 3])
def test_every_valid_tuple_is_covered_and_no_row_breaks_a_rule(strength):
    rows = covering_array(TOY, (NO_A3_WITH_C0,), strength)
    assert not uncovered(rows, TOY, (NO_A3_WITH_C0,), strength)
    assert not [r for r in rows if r["a"] == 3 and r["c"] == 0]
    assert rows == covering_array(TOY, (NO_A3_WITH_C0,), strength)  # deterministic


def test_the_check_itself_sees_a_missing_pair():
    rows = covering_array(TOY)
    assert uncovered(rows[1:], TOY)  # the first row holds a pair no other row does: dropping it shows


def test_a_tuple_no_valid_row_holds_is_dropped_not_an_endless_search():
    # b = y forces c = 0 and a = 3 forbids c = 0: (a=3, b=y) is in no valid row.
    rules = (NO_A3_WITH_C0, Constraint(("b", "c"), lambda b, c: b == "x" or c == 0, "y needs 0"))
    rows = covering_array(TOY, rules)
    assert complete({"a": 3, "b": "y"}, TOY, rules) is None
    assert not uncovered(rows, TOY, rules) and not [r for r in rows if r["a"] == 3 and r["b"] == "y"]


@pytest.mark.parametrize("op", [s.name for s in ops.all_ops() if s.options])
def test_each_operators_table_is_covered_pairwise_by_valid_asymmetric_cases(op):
    declared = ops.get(op).options()
    made = generate(declared, op=op)
    assert not uncovered(made.rows, declared.options, declared.constraints)
    assert len({c.case_id for c in made.cases}) == len(made.cases) == len(made.rows)
    for case in made.cases:
        geo = case.geometry
        assert not geo.problems(), (case.case_id, geo.problems())
        assert geo.h != geo.w, case.case_id
        if hasattr(geo, "kh"):  # the sampling ops: kernels, strides, paddings and dilations differ per axis
            assert geo.stride[0] != geo.stride[1] and geo.padding[0] != geo.padding[1] and geo.dilation[0] != geo.dilation[1]
    assert {c.dtype for c in made.cases} == {"float64", "float32", "float16", "bfloat16"}


def test_the_suite_carries_each_covering_array_and_thorough_covers_triples():
    from dcnbench.checking.verify import default_suite

    built = []
    suite = default_suite(op_names=["dcnv4"], built=built)
    [made] = built
    assert made.strength == 2 and [c for c in suite if "-pairs2-" in c.name] == made.cases
    assert "dcnv4: 22 covering-array cases (strength 2" in made.line
    thorough = []
    default_suite(op_names=["dcnv4"], thorough=True, built=thorough)
    declared = ops.get("dcnv4").options()
    assert len(thorough[0].cases) > len(made.cases)
    assert not uncovered(thorough[0].rows, declared.options, declared.constraints, strength=3)
