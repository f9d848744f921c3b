"""Pretrained weights: the known sources (:mod:`.sources`), reading and renaming other
libraries' files (:mod:`.convert`), exact loading with a report (:mod:`.load`) and
``vcorr weights convert`` (:mod:`.export`)."""
from vcorr.pipelines.weights.convert import WeightsFile, read_weights
from vcorr.pipelines.weights.load import LoadReport, inflate, layout_vs_2d_resnet, load_weights, plan_load
from vcorr.pipelines.weights.sources import (NOT_IMPORTED, SOURCES, KnownSource, find_source,
                                             kinetics400_classes, sources_for)

__all__ = ["KnownSource", "LoadReport", "NOT_IMPORTED", "SOURCES", "WeightsFile", "find_source",
           "inflate", "kinetics400_classes", "layout_vs_2d_resnet", "load_weights", "plan_load",
           "read_weights", "sources_for"]
