"""Data: the toy dataset, annotation parsers, ``prepare`` into HDF5 shards, and the clip loader."""
from vcorr.pipelines.data.dataset import VideoClipDataset, decode_frames
from vcorr.pipelines.data.samplers import DenseSampler, SegmentSampler, make_sampler
from vcorr.pipelines.data.swaps import SWAP_PAIRS, swap_index_map, swap_pairs
from vcorr.pipelines.data.transforms import test_transform, train_transform

__all__ = ["VideoClipDataset", "decode_frames", "DenseSampler", "SegmentSampler",
           "make_sampler", "SWAP_PAIRS", "swap_index_map", "swap_pairs", "train_transform",
           "test_transform"]
