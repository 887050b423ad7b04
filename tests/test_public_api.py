"""The public surface: the contract's names (docs/architecture.md) exist, and ``__all__`` lists
exactly them."""

import inspect

import altoflow
from altoflow import ops

CONTRACT = ["stage", "ops", "Pipeline", "run", "Client", "Result", "DROP", "CompileError", "StageError"]
OPS = ["sum", "count", "min", "max", "mean", "collect", "concat", "topk", "filter", "first",
       "any", "all", "reduce"]


def test_contract_names_are_exported():
    for name in CONTRACT:
        assert name in altoflow.__all__
        assert getattr(altoflow, name) is not None


def test_all_matches_the_module():
    public = {n for n, v in vars(altoflow).items()
              if not n.startswith("_") and not inspect.ismodule(v) or n == "ops"}
    assert set(altoflow.__all__) == public


def test_operators():
    for name in OPS:
        op = getattr(ops, name)
        assert name in ops.__all__
        assert issubclass(op, ops.Aggregator)
    assert set(ops.__all__) == set(OPS) | {"Aggregator", "Ordered", "Index"}


def test_error_classes():
    assert issubclass(altoflow.LevelError, altoflow.CompileError)
    assert issubclass(altoflow.StageDefinitionError, altoflow.CompileError)
    err = altoflow.StageError("verify", {"claim": 2}, "ValueError: no")
    assert (err.stage, err.ancestry) == ("verify", {"claim": 2})
