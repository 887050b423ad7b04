"""The aggregate operators of the public contract (docs/architecture.md): results, identities,
and the algebra the runtimes rely on (any arrival order, split-and-merge, early decisions).

Each operator is checked against a plain-Python oracle over the values in ancestry order. The
protocol is driven directly (create / add / merge / result), the way a runtime drives it, and
through ``altoflow.run`` where what matters is what a user of ``@stage(aggregate=...)`` sees.
"""

from __future__ import annotations

import builtins
import functools
import itertools
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import altoflow as af
from altoflow import ops, stage

Pairs = list[tuple[tuple[int, ...], Any]]


def fold(op: ops.Aggregator, pairs: Pairs) -> Any:
    state = op.create()
    for index, value in pairs:
        state = op.add(state, value, index)
    return state


def in_order(pairs: Pairs) -> list:
    return [v for _, v in sorted(pairs, key=lambda iv: iv[0])]


def _step(acc: int, v: int) -> int:
    # Not commutative: the result depends on the order in which values are folded.
    return (acc * 31 + v) % 1_000_003


def _key(v: int) -> int:
    return v % 3  # many ties on purpose


def _topk_oracle(k: int, key: Callable[[Any], Any] | None) -> Callable[[Pairs], list]:
    def oracle(pairs: Pairs) -> list:
        ranked = sorted(pairs, key=lambda iv: iv[0])  # ancestry order, then a stable sort by key
        ranked.sort(key=lambda iv: iv[1] if key is None else key(iv[1]), reverse=True)
        return [v for _, v in ranked[:k]]

    return oracle


@dataclass(frozen=True)
class Case:
    """An operator, the values it folds, and what plain Python says its result is."""

    name: str
    make: Callable[[], ops.Aggregator]
    oracle: Callable[[Pairs], Any]
    values: st.SearchStrategy = st.integers(-20, 20)


CASES = [
    Case("sum", lambda: ops.sum(), lambda p: builtins.sum(in_order(p))),
    Case("count", lambda: ops.count(), lambda p: len(p)),
    Case("count_pred", lambda: ops.count(lambda v: v > 0), lambda p: len([v for _, v in p if v > 0])),
    Case("min", lambda: ops.min(), lambda p: builtins.min(in_order(p), default=None)),
    Case("max", lambda: ops.max(), lambda p: builtins.max(in_order(p), default=None)),
    Case("mean", lambda: ops.mean(), lambda p: builtins.sum(in_order(p)) / len(p) if p else None),
    Case("collect", lambda: ops.collect(), in_order),
    Case("concat", lambda: ops.concat(sep="|"), lambda p: "|".join(in_order(p)),
         st.text("abc", max_size=3)),
    Case("topk", lambda: ops.topk(3, key=_key), _topk_oracle(3, _key)),
    Case("topk_nokey", lambda: ops.topk(2), _topk_oracle(2, None), st.integers(0, 4)),
    Case("filter", lambda: ops.filter(lambda v: v % 2 == 0),
         lambda p: [v for v in in_order(p) if v % 2 == 0]),
    Case("first", lambda: ops.first(), lambda p: next(iter(in_order(p)), None)),
    Case("first_pred", lambda: ops.first(lambda v: v > 5),
         lambda p: next((v for v in in_order(p) if v > 5), None)),
    Case("any", lambda: ops.any(), lambda p: builtins.any(v for _, v in p), st.integers(0, 3)),
    Case("any_pred", lambda: ops.any(lambda v: v > 15),
         lambda p: builtins.any(v > 15 for _, v in p)),
    Case("all", lambda: ops.all(), lambda p: builtins.all(v for _, v in p), st.integers(0, 3)),
    Case("all_pred", lambda: ops.all(lambda v: v > -15),
         lambda p: builtins.all(v > -15 for _, v in p)),
    Case("reduce", lambda: ops.reduce(_step, 7), lambda p: functools.reduce(_step, in_order(p), 7)),
]
BY_NAME = {c.name: c for c in CASES}
case_param = pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)


def pairs_of(values: st.SearchStrategy, max_size: int = 30) -> st.SearchStrategy[Pairs]:
    """(index, value) pairs of one group: distinct indices, all of one depth (1 or 2 levels)."""
    return st.integers(1, 2).flatmap(
        lambda depth: st.lists(
            st.tuples(st.tuples(*[st.integers(0, 9)] * depth), values),
            max_size=max_size,
            unique_by=lambda iv: iv[0],
        )
    )


# -- results and identities ------------------------------------------------------------------

IDENTITIES = [
    (ops.sum, 0),
    (ops.count, 0),
    (ops.min, None),
    (ops.max, None),
    (ops.mean, None),
    (ops.collect, []),
    (ops.concat(sep=", "), ""),
    (ops.topk(3, key=len), []),
    (ops.filter(bool), []),
    (ops.first(), None),
    (ops.any, False),
    (ops.all, True),
    (ops.reduce(_step, 7), 7),
]


@pytest.mark.parametrize(("op", "identity"), IDENTITIES, ids=lambda x: repr(x))
def test_empty_group_gives_the_identity_of_section_8(op, identity):
    op = op()  # a bare operator and a configured one are both callable to an instance
    got = op.result(op.create())
    assert got == identity
    assert type(got) is type(identity)  # count's 0 is an int, not False


SMALL = [((2,), 5), ((0,), 1), ((1,), 4)]  # arrived out of ancestry order
WORDS = [((1,), "b"), ((0,), "a"), ((2,), "c")]


EXAMPLES = [
    (ops.sum(), SMALL, 10),
    (ops.count(), SMALL, 3),
    (ops.count(pred=lambda v: v > 3), SMALL, 2),
    (ops.min(), SMALL, 1),
    (ops.max(), SMALL, 5),
    (ops.mean(), SMALL, pytest.approx(10 / 3)),
    (ops.collect(), SMALL, [1, 4, 5]),
    (ops.filter(lambda v: v != 4), SMALL, [1, 5]),
    (ops.first(), SMALL, 1),
    (ops.first(lambda v: v > 3), SMALL, 4),
    (ops.first(lambda v: v > 9), SMALL, None),
    (ops.any(lambda v: v > 4), SMALL, True),
    (ops.any(lambda v: v > 5), SMALL, False),
    (ops.all(lambda v: v > 0), SMALL, True),
    (ops.all(lambda v: v > 1), SMALL, False),
    (ops.reduce(lambda acc, v: acc + [v], []), SMALL, [1, 4, 5]),
    (ops.topk(2), SMALL, [5, 4]),
    (ops.concat(), WORDS, "abc"),
    (ops.concat(sep="-"), WORDS, "a-b-c"),
]


@pytest.mark.parametrize(("op", "pairs", "expected"), EXAMPLES, ids=[repr(e[0]) for e in EXAMPLES])
def test_each_operator_on_a_small_group(op, pairs, expected):
    got = op.result(fold(op, pairs))
    assert got == expected
    if isinstance(expected, bool):
        assert got is expected


def test_mean_is_a_true_division():
    assert ops.mean().result(fold(ops.mean(), [((0,), 1), ((1,), 2)])) == 1.5


def test_count_counts_falsy_values_too():
    # Without pred, count counts folded items, whatever their value.
    p = [((0,), 0), ((1,), None), ((2,), ""), ((3,), False)]
    assert ops.count().result(fold(ops.count(), p)) == 4


# -- topk ------------------------------------------------------------------------------------


def test_topk_is_sorted_by_key_descending():
    op = ops.topk(3, key=len)
    p = [((0,), "aa"), ((1,), "a"), ((2,), "aaaa"), ((3,), "aaa")]
    assert op.result(fold(op, p)) == ["aaaa", "aaa", "aa"]


def test_topk_ties_go_to_the_lower_ancestry_index_whatever_the_arrival_order():
    op = ops.topk(2, key=lambda v: v[1])
    # Three values with the same key, arriving from the highest index to the lowest.
    p = [((2,), ("c", 1)), ((1,), ("b", 1)), ((0,), ("a", 1))]
    assert op.result(fold(op, p)) == [("a", 1), ("b", 1)]
    nested = [((1, 0), ("x", 1)), ((0, 5), ("y", 1)), ((0, 7), ("z", 1))]
    assert op.result(fold(op, nested)) == [("y", 1), ("z", 1)]


def test_topk_ties_survive_the_pruning_of_large_groups():
    # Many more values than k, all tied, in reverse order: the state is pruned while adding.
    op = ops.topk(3, key=lambda v: 0)
    p = [((i,), f"v{i}") for i in reversed(range(100))]
    assert op.result(fold(op, p)) == ["v0", "v1", "v2"]


def test_topk_with_fewer_values_than_k_returns_them_all():
    op = ops.topk(5)
    assert op.result(fold(op, [((0,), 1), ((1,), 3)])) == [3, 1]
    assert ops.topk(0).result(fold(ops.topk(0), [((0,), 1)])) == []


@pytest.mark.parametrize("k", [-1, 1.5, "3", True])
def test_topk_rejects_a_k_that_is_not_a_count(k):
    with pytest.raises(ValueError, match=r"ops\.topk\(k=.*k must be an int >= 0"):
        ops.topk(k)


# -- concat ----------------------------------------------------------------------------------


def test_concat_of_a_non_string_says_what_it_got_and_what_to_use():
    op = ops.concat()
    with pytest.raises(TypeError) as info:
        op.add(op.create(), 42, (0,))
    message = str(info.value)
    assert "ops.concat joins strings" in message
    assert "int" in message and "42" in message
    assert "return str" in message and "ops.collect" in message


def test_concat_sep_must_be_a_string():
    with pytest.raises(TypeError, match="sep must be a string"):
        ops.concat(sep=1)


@stage(fanout="n")
def _numbers(count: int):
    yield from range(count)


@stage(aggregate=ops.concat(sep=","))
def _joined(_numbers: int) -> int:
    return _numbers  # an int, not a str: a mistake concat must report


def test_concat_of_non_strings_fails_the_request_naming_the_stage():
    with pytest.raises(af.StageError) as info:
        af.run(af.Pipeline([_numbers, _joined]), count=2)
    assert info.value.stage == "_joined"
    assert isinstance(info.value.__cause__, TypeError)
    assert "ops.concat joins strings" in str(info.value)


# -- the algebra: any order, split and merge, early decisions ---------------------------------


# Every operator is drawn in every property: Hypothesis spreads its examples over all of them.
PROPERTY = settings(max_examples=150, deadline=None)
any_case = st.sampled_from(CASES)


@PROPERTY
@given(case=any_case, data=st.data())
def test_any_arrival_order_gives_the_result_of_ancestry_order(case, data):
    pairs = data.draw(pairs_of(case.values))
    arrival = data.draw(st.permutations(pairs))
    peek = data.draw(st.integers(0, len(pairs)))
    op = case.make()
    state = op.create()
    for n, (index, value) in enumerate(arrival):
        if n == peek:
            op.result(state)  # a runtime may look at a partial result and keep folding
        state = op.add(state, value, index)
    assert op.result(state) == case.oracle(pairs)


@PROPERTY
@given(case=any_case, data=st.data())
def test_merging_two_partial_states_equals_one_state(case, data):
    pairs = data.draw(pairs_of(case.values))
    arrival = data.draw(st.permutations(pairs))
    cut = data.draw(st.integers(0, len(pairs)))
    op = case.make()
    left, right = fold(op, arrival[:cut]), fold(op, arrival[cut:])
    merged = op.merge(left, right) if data.draw(st.booleans()) else op.merge(right, left)
    assert op.result(merged) == case.oracle(pairs)


@case_param
def test_every_arrival_order_and_every_split_of_a_small_group(case):
    # Exhaustive where Hypothesis samples: 5 values (two tied), 120 orders, 6 cut points each.
    values = ["b", "a", "", "c", "a"] if case.name == "concat" else [16, 2, 6, 0, 6]
    pairs = [((i,), v) for i, v in zip([3, 0, 4, 1, 2], values)]
    expected = case.oracle(pairs)
    op = case.make()
    for arrival in itertools.permutations(pairs):
        arrival = list(arrival)
        assert op.result(fold(op, arrival)) == expected, arrival
        for cut in range(len(arrival) + 1):
            left, right = fold(op, arrival[:cut]), fold(op, arrival[cut:])
            assert op.result(op.merge(left, right)) == expected, (arrival, cut)
            left, right = fold(op, arrival[:cut]), fold(op, arrival[cut:])
            assert op.result(op.merge(right, left)) == expected, (arrival, cut)


@case_param
def test_merging_with_an_empty_state_changes_nothing(case):
    op = case.make()
    pairs = list(enumerate(["x", "y"] if case.name == "concat" else [3, 9]))
    pairs = [((i,), v) for i, v in pairs]
    expected = case.oracle(pairs)
    assert op.result(op.merge(op.create(), fold(op, pairs))) == expected
    assert op.result(op.merge(fold(op, pairs), op.create())) == expected
    assert op.result(op.merge(op.create(), op.create())) == case.oracle([])


@PROPERTY
@given(case=st.sampled_from([BY_NAME[n] for n in ("any", "any_pred", "all", "all_pred", "first",
                                                 "first_pred", "count", "collect")]),
       data=st.data())
def test_a_decided_result_never_changes(case, data):
    pairs = data.draw(pairs_of(case.values, max_size=10))
    arrival = data.draw(st.permutations(pairs))
    depth = len(pairs[0][0]) if pairs else 1
    after = builtins.max((index for index, _ in pairs), default=(0,))[0] + 1
    op = case.make()
    state = op.create()
    for n, (index, value) in enumerate(arrival):
        state = op.add(state, value, index)
        if not op.decided(state):
            continue
        decided = op.result(state)
        assert decided == case.oracle(pairs)  # the rest of the group cannot change it...
        assert op.result(op.merge(state, fold(op, arrival[n + 1 :]))) == decided
        # ...nor can any further values, at indices after every one seen so far.
        later = data.draw(st.lists(case.values, max_size=5))
        for i, v in enumerate(later):
            state = op.add(state, v, (after + i,) + (0,) * (depth - 1))
            assert op.decided(state)
            assert op.result(state) == decided
        return


@pytest.mark.parametrize(
    ("op", "pairs", "decided"),
    [
        (ops.any(), [((3,), 0), ((5,), 1)], True),
        (ops.any(), [((0,), 0)], False),
        (ops.all(), [((4,), 1), ((2,), 0)], True),
        (ops.all(), [((0,), 1)], False),
        (ops.first(), [((0,), "a")], True),
        (ops.first(), [((0, 0), "a")], True),
        (ops.first(), [((1,), "b")], False),  # index 0 may still come
        (ops.first(), [((0, 1), "b")], False),
        (ops.first(lambda v: v > 0), [((0,), 0)], False),  # pred fails: not the first
        (ops.first(lambda v: v > 0), [((0,), 1)], True),
        (ops.sum(), [((0,), 1)], False),
        (ops.collect(), [((0,), 1)], False),
    ],
    ids=lambda x: repr(x) if isinstance(x, ops.Aggregator) else None,
)
def test_decided_exactly_when_no_value_can_change_the_answer(op, pairs, decided):
    assert op.decided(fold(op, pairs)) is decided


def test_no_operator_is_decided_on_an_empty_group():
    for case in CASES:
        op = case.make()
        assert op.decided(op.create()) is False, case.name


# -- through @stage and altoflow.run ---------------------------------------------------------

AGGREGATES: dict[str, tuple[Any, Any]] = {
    # name: (bare form, called form)
    "sum": (ops.sum, ops.sum()),
    "count": (ops.count, ops.count()),
    "min": (ops.min, ops.min()),
    "max": (ops.max, ops.max()),
    "mean": (ops.mean, ops.mean()),
    "collect": (ops.collect, ops.collect()),
    "concat": (ops.concat, ops.concat()),
    "first": (ops.first, ops.first()),
    "any": (ops.any, ops.any()),
    "all": (ops.all, ops.all()),
}


def _value(convert: Callable[[int], Any]) -> Callable[..., Any]:
    def fold_one(numbers: int) -> Any:
        return convert(numbers)

    return fold_one


def _pipeline(form: int) -> af.Pipeline:
    @stage(fanout="n")
    def numbers(size: int):
        yield from range(size)

    stages: list[Any] = [numbers]
    for name, forms in AGGREGATES.items():
        stages.append(stage(aggregate=forms[form], name=name)(_value(str if name == "concat" else int)))
    return af.Pipeline(stages)


@pytest.mark.parametrize("count", [0, 1, 5])
def test_bare_and_called_operators_mean_the_same(count):
    bare, called = _pipeline(0), _pipeline(1)
    assert [s.operator for s in bare.compiled.plan.stages] == [
        s.operator for s in called.compiled.plan.stages
    ]
    got = af.run(bare, size=count).to_dict()
    assert got == af.run(called, size=count).to_dict()
    values = list(range(count))
    assert got == {
        "sum": builtins.sum(values),
        "count": count,
        "min": builtins.min(values, default=None),
        "max": builtins.max(values, default=None),
        "mean": builtins.sum(values) / count if count else None,
        "collect": values,
        "concat": "".join(map(str, values)),
        "first": values[0] if values else None,
        "any": builtins.any(values),
        "all": builtins.all(values),
    }


@stage(aggregate=ops.topk(2, key=lambda v: v % 3))
def _top(_numbers: int) -> int:
    return _numbers


@stage(aggregate=ops.filter(lambda v: v % 2 == 1))
def _odd(_numbers: int) -> int:
    return _numbers


@stage(aggregate=ops.reduce(lambda acc, v: acc + [v], ["start"]))
def _trail(_numbers: int) -> int:
    return _numbers


@stage(aggregate=ops.count(pred=lambda v: v > 2))
def _big(_numbers: int) -> int:
    return _numbers


def test_configured_operators_through_run_including_empty_groups():
    pipeline = af.Pipeline([_numbers, _top, _odd, _trail, _big])
    assert af.run(pipeline, count=6).to_dict() == {
        "_top": [2, 5],  # keys 2 and 2: a tie, lower ancestry first
        "_odd": [1, 3, 5],
        "_trail": ["start", 0, 1, 2, 3, 4, 5],
        "_big": 3,
    }
    assert af.run(pipeline, count=0).to_dict() == {
        "_top": [],
        "_odd": [],
        "_trail": ["start"],
        "_big": 0,
    }


# -- misuse of aggregate= --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bare", "needs"), [(ops.topk, "k"), (ops.filter, "pred"), (ops.reduce, "fn, initial")]
)
def test_an_operator_that_needs_arguments_used_bare_says_to_call_it(bare, needs):
    with pytest.raises(af.StageDefinitionError) as info:

        @stage(aggregate=bare)
        def best(x: int) -> int:
            return x

    message = str(info.value)
    assert "'best'" in message  # names the user's stage...
    assert "call it" in message  # ...says what to do...
    assert f"{bare.public_name}(" in message  # ...and shows the called form
    assert needs in message


@pytest.mark.parametrize(
    ("builtin", "hint"),
    [(builtins.sum, "ops.sum"), (builtins.len, "ops.count"), (builtins.max, "ops.max"),
     (builtins.any, "ops.any"), (builtins.list, "ops.collect")],
)
def test_a_python_builtin_as_aggregate_points_to_the_operator(builtin, hint):
    with pytest.raises(af.StageDefinitionError) as info:

        @stage(aggregate=builtin)
        def total(x: int) -> int:
            return x

    message = str(info.value)
    assert "'total'" in message
    assert "builtin" in message
    assert f"aggregate={hint}" in message


def test_an_object_that_is_no_operator_is_refused():
    with pytest.raises(af.StageDefinitionError, match="is not an operator"):

        @stage(aggregate=lambda a, b: a + b)
        def total(x: int) -> int:
            return x


class _Incomplete(ops.Aggregator):
    """A user's operator that forgot ``merge``."""

    def create(self):
        return 0

    def add(self, state, value, index):
        return state + value

    def result(self, state):
        return state


def test_an_operator_class_missing_a_method_says_which():
    with pytest.raises(af.StageDefinitionError) as info:

        @stage(aggregate=_Incomplete)
        def total(x: int) -> int:
            return x

    assert "merge" in str(info.value)


def test_sum_refuses_values_whose_plus_depends_on_order():
    # "a" + "b" != "b" + "a": summing in arrival order would depend on scheduling.
    op = ops.sum()
    with pytest.raises(TypeError, match="ops.concat"):
        fold(op, [((0,), "a"), ((1,), "b")])
    with pytest.raises(TypeError, match="ops.collect"):
        fold(op, [((0,), [1]), ((1,), [2])])
