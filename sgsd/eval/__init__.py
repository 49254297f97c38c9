"""Evaluation behind ``sgsd eval``: the harness (:mod:`sgsd.eval.runner`), the metrics
(:mod:`sgsd.eval.metrics`), the models it samples from (:mod:`sgsd.eval.models`) and the
Tab. 3 tables (:mod:`sgsd.eval.report`)."""

from sgsd.eval.runner import EvalConfig, EvalError, EvalResult, evaluate

__all__ = ["EvalConfig", "EvalError", "EvalResult", "evaluate"]
