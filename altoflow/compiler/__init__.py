"""The compiler: ``@stage`` functions in, a checked, serialisable ``Plan`` out."""

from altoflow.compiler._compile import compile_pipeline
from altoflow.compiler._compiled import CompiledPipeline
from altoflow.compiler._pipeline import Pipeline, load_target
from altoflow.compiler.plan import Plan, StagePlan

__all__ = ["CompiledPipeline", "Pipeline", "Plan", "StagePlan", "compile_pipeline", "load_target"]
