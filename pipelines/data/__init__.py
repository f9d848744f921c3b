"""Data: the toy dataset, annotation parsers, ``prepare`` into HDF5 shards, and the clip loader."""
from vcorr.pipelines.data.dataset import VideoClipDataset, decode_frames
from vcorr.pipelines.data.samplers import DenseSampler, SegmentSampler, make_sampler
from vcorr.pipelines.data.transforms import SWAP_MAPS, test_transform, train_transform

__all__ = ["VideoClipDataset", "decode_frames", "DenseSampler", "SegmentSampler",
           "make_sampler", "SWAP_MAPS", "train_transform", "test_transform"]
