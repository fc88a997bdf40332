"""The few-shot benchmark protocol: shots x seeds per category, train or reuse adapters, score, tabulate."""

from .protocol import EvaluationSettings, evaluate_cell, run_evaluation
from .tables import METRICS, summarize, write_results

__all__ = ["EvaluationSettings", "METRICS", "evaluate_cell", "run_evaluation", "summarize", "write_results"]
