"""``Pipeline``: a named set of stages, and loading one from a target string."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from altoflow._errors import GraphError, TargetError, describe
from altoflow._stage import StageSpec, get_spec
from altoflow.compiler._compile import compile_pipeline
from altoflow.compiler._compiled import CompiledPipeline


class Pipeline:
    """The stages of one application.

    ``Pipeline([answer, claims, verify])`` names them; ``Pipeline.from_module("app.py")``
    collects every stage of a module. Compiling is lazy and cached (``.compiled``).
    """

    def __init__(self, stages: Iterable[Any], *, name: str | None = None, target: str | None = None):
        specs: list[StageSpec] = []
        for obj in stages:
            spec = get_spec(obj)
            if spec is None:
                raise GraphError(
                    f"{describe(obj)} is not a stage: decorate it with @stage (from altoflow "
                    f"import stage) or leave it out of the Pipeline."
                )
            if any(s.obj is obj for s in specs):
                continue
            specs.append(spec)
        self.specs: tuple[StageSpec, ...] = tuple(specs)
        self.name = name or "pipeline"
        # How a worker process finds this pipeline again (None: only in this process).
        self.target = target

    @classmethod
    def from_module(cls, module: "str | Path | types.ModuleType") -> "Pipeline":
        """Every stage defined in or imported into ``module`` (a module, a dotted name, or a path)."""
        if isinstance(module, types.ModuleType):
            mod, target = module, _module_target(module)
        else:
            mod, target = _import(str(module)), str(module)
        stages = [v for v in vars(mod).values() if get_spec(v) is not None]
        stages.sort(key=_definition_order)
        if getattr(mod, "__altoflow_file__", False):
            name = Path(mod.__file__ or mod.__name__).stem
        else:
            name = mod.__name__.rpartition(".")[2]
        return cls(stages, name=name, target=target)

    @cached_property
    def compiled(self) -> CompiledPipeline:
        return compile_pipeline(self)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages=[{', '.join(s.name for s in self.specs)}])"

    def draw(self, format: str = "text", *, width: int | None = None) -> str:
        """The graph, as ``altoflow compile --format`` prints it: ``text`` (wrapped at ``width``
        columns, the terminal's by default), ``json``, ``mermaid``, ``dot`` or ``svg``.

        Raises ``CompileError`` for a pipeline that does not compile, and ``ValueError`` for
        another format.
        """
        from altoflow.compiler import render

        if format not in render.FORMATS:
            raise ValueError(f"Pipeline.draw(format={format!r}): take one of "
                             f"{', '.join(map(repr, render.FORMATS))}")
        if format == "text":
            return render.to_text(self.compiled.plan, width or render.terminal_width())
        return render.FORMATS[format](self.compiled.plan)

    def _repr_svg_(self) -> str:
        # A notebook shows a Pipeline as its graph (IPython's rich display); a pipeline that
        # does not compile falls back to the plain repr, and the error shows when it is run.
        try:
            return self.draw("svg")
        except Exception:  # noqa: BLE001  # a display hook must not raise
            return None  # type: ignore[return-value]


def _definition_order(obj: Any) -> tuple[str, int]:
    code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__call__", None), "__code__", None)
    return (getattr(code, "co_filename", ""), getattr(code, "co_firstlineno", 0))


def _module_target(module: types.ModuleType) -> str | None:
    if getattr(module, "__altoflow_file__", False) or module.__name__ == "__main__":
        return getattr(module, "__file__", None)
    return module.__name__


_pipelines: dict[str, Pipeline] = {}


def load_target(target: Any) -> Pipeline:
    """A ``Pipeline`` from a Pipeline, a module, or a target string.

    Target strings are ``app.py``, ``app.py:name``, ``package.module`` or ``package.module:name``
    (like uvicorn's); ``name`` is a ``Pipeline`` (or a list of stages, or a module) in that module.
    Pipelines loaded from a string or a module are cached, so class stages keep their instances.
    """
    if isinstance(target, Pipeline):
        return target
    if isinstance(target, types.ModuleType):
        key = f"module:{id(target)}"
        if key not in _pipelines:
            _pipelines[key] = Pipeline.from_module(target)
        return _pipelines[key]
    if isinstance(target, (list, tuple)):
        return Pipeline(target)
    if not isinstance(target, (str, Path)):
        raise TargetError(
            f"cannot run {target!r}: a target is a Pipeline, a module, or a string like "
            f"'app.py', 'app.py:pipeline' or 'package.module:pipeline'."
        )
    text = str(target)
    if text in _pipelines:
        return _pipelines[text]
    module_part, _, attr = text.partition(":") if not _is_windows_drive(text) else (text, "", "")
    mod = _import(module_part)
    if not attr:
        pipeline = Pipeline.from_module(mod)
        pipeline.target = text
    else:
        try:
            obj = getattr(mod, attr)
        except AttributeError:
            found = [k for k, v in vars(mod).items() if isinstance(v, Pipeline)]
            raise TargetError(
                f"target {text!r}: module {mod.__name__!r} has no attribute {attr!r}"
                + (f"; its pipelines: {', '.join(found)}" if found else "")
                + f". Write '{module_part}' to collect every stage of the module."
            ) from None
        if isinstance(obj, Pipeline):
            pipeline = obj
            if pipeline.target is None:
                pipeline.target = text
        elif isinstance(obj, types.ModuleType):
            pipeline = Pipeline.from_module(obj)
        elif isinstance(obj, (list, tuple)):
            pipeline = Pipeline(obj, name=attr, target=text)
        else:
            raise TargetError(
                f"target {text!r}: {attr!r} is a {type(obj).__name__}; it must be an "
                f"altoflow.Pipeline (e.g. {attr} = Pipeline([answer, claims])) or a list of stages."
            )
    _pipelines[text] = pipeline
    return pipeline


def _is_windows_drive(text: str) -> bool:
    return len(text) > 2 and text[1] == ":" and text[2] in "\\/"


def _import(spec: str) -> types.ModuleType:
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return _import_file(Path(spec))
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise TargetError(
                f"cannot import {spec!r}: no module named {exc.name!r}. For a file, give its "
                f"path ending in .py (e.g. 'app.py'); for a module, check it is on PYTHONPATH."
            ) from None
        raise


def _import_file(path: Path) -> types.ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise TargetError(f"cannot load {str(path)!r}: no such file.")
    # A stable name per file, so every process that loads the same file gets the same module name.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"{path.stem}_{digest}" if path.stem.isidentifier() else f"altoflow_app_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    parent = str(path.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)  # so the file can import its siblings, as `python app.py` would
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__altoflow_file__ = True  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
