import pytest

from dcnbench.errors import UsageError
from dcnbench.shard import parse_shard, take_shard
from dcnbench.checking.verify import default_suite
from tests.conftest import invoke


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_shards_cover_every_case_exactly_once(n):
    cases = default_suite()
    shards = [take_shard(cases, (k, n)) for k in range(1, n + 1)]
    flat = [c.case_id for s in shards for c in s]
    assert sorted(flat) == sorted(c.case_id for c in cases) and len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [take_shard(cases, (k, n)) for k in range(1, n + 1)]  # deterministic


@pytest.mark.parametrize("spec", ["0/3", "4/3", "a/b", "3", "1/0"])
def test_bad_shard_specs(spec):
    with pytest.raises(UsageError):
        parse_shard(spec)


def test_verify_lists_only_its_shard():
    listed = [invoke("verify", "--list", "--shard", f"{k}/3").stdout.split() for k in (1, 2, 3)]
    ids = [w for words in listed for w in words if "/" in w and not w.startswith("(")]
    assert len(ids) == len(default_suite()) == len(set(ids))
