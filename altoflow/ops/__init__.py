"""Aggregate operators for ``@stage(aggregate=...)``.

``ops.sum`` and ``ops.sum()`` mean the same. Each operator is a plain object with
``create`` / ``add`` / ``merge`` / ``result``; write your own by subclassing ``Aggregator``
(or ``Ordered`` for one that needs its values in ancestry order). See docs/operators.md.
"""

from altoflow.ops._base import Aggregator, Index, Ordered
from altoflow.ops._builtin import (
    All,
    Any_,
    Collect,
    Concat,
    Count,
    Filter,
    First,
    Max,
    Mean,
    Min,
    Reduce,
    Sum,
    TopK,
)

# The public, lower-case names (docs/architecture.md, "The public contract"). Each is the
# operator's class: calling it with arguments configures it, and a bare class is instantiated by
# @stage when it needs none.
sum = Sum
count = Count
min = Min
max = Max
mean = Mean
collect = Collect
concat = Concat
topk = TopK
filter = Filter
first = First
any = Any_
all = All
reduce = Reduce

__all__ = [
    "Aggregator",
    "Index",
    "Ordered",
    "all",
    "any",
    "collect",
    "concat",
    "count",
    "filter",
    "first",
    "max",
    "mean",
    "min",
    "reduce",
    "sum",
    "topk",
]
