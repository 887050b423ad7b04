"""The parts of ``benchmarks/router.py``, the runtime's own cost (see its docstring)."""
