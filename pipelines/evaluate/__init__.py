"""Evaluation: multi-view testing of a checkpoint (``vcorr eval``) and per-class comparison of
results against a baseline (``vcorr compare``)."""
from vcorr.pipelines.evaluate.compare import compare_results
from vcorr.pipelines.evaluate.evaluate import EvalSettings, compute_metrics, evaluate_checkpoint
from vcorr.pipelines.evaluate.views import (CROP_CHOICES, average_views, build_views, crop_boxes,
                                            swap_scores)

__all__ = ["CROP_CHOICES", "EvalSettings", "average_views", "build_views", "compare_results",
           "compute_metrics", "crop_boxes", "evaluate_checkpoint", "swap_scores"]
