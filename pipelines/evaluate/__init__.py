"""Evaluation: multi-view testing of a checkpoint (``vcorr eval``, optionally with the frames
reversed or shuffled), per-class comparison of results against a baseline and the per-class
accuracy drop under reordered frames (``vcorr compare``)."""
from vcorr.pipelines.evaluate.compare import compare_orders, compare_results, order_drop
from vcorr.pipelines.evaluate.evaluate import EvalSettings, compute_metrics, evaluate_checkpoint
from vcorr.pipelines.evaluate.views import (CROP_CHOICES, FRAME_ORDERS, average_views,
                                            build_views, crop_boxes, frame_permutation,
                                            order_frames, swap_scores)

__all__ = ["CROP_CHOICES", "FRAME_ORDERS", "EvalSettings", "average_views", "build_views",
           "compare_orders", "compare_results", "compute_metrics", "crop_boxes",
           "evaluate_checkpoint", "frame_permutation", "order_drop", "order_frames",
           "swap_scores"]
