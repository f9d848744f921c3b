"""vcorr models: one generic video ResNet and the architectures built on it.

Use the registry: ``create_model(name, num_classes=..., **overrides)``, ``list_models(pattern)``,
``get_model_entry(name)`` (paper, default input, paper parameter count). Tensor layout is
(B, C, T, H, W) everywhere. Models take plain constructor arguments, never configs.
"""
from vcorr.models import zoo as _zoo  # noqa: F401  (registers the variants)
from vcorr.models import zoo_corr as _zoo_corr  # noqa: F401  (CorrNet / DCF / X3D variants)
from vcorr.models import zoo_sources as _zoo_sources  # noqa: F401  (torchvision / PyTorchVideo layouts)
from vcorr.models import zoo_tiny as _zoo_tiny  # noqa: F401  (CPU-size variants of every family)
from vcorr.models.cp import CPModule, knn_other_frames, knn_other_frames_dense
from vcorr.models.heads import ClassifierHead, TRNHead
from vcorr.models.layers import (Conv2Plus1d, StemSpec, conv_2d, conv_2plus1d, conv_3d,
                                 r2plus1d_mid_width)
from vcorr.models.nonlocal_block import NonLocalBlock
from vcorr.models.artnet import SmartConv, smart_block, smart_conv
from vcorr.models.registry import (ModelEntry, UnknownModelError, create_model, get_model_entry,
                                   list_models, register_model)
from vcorr.models.resnet import (DEPTHS, BasicBlock, Bottleneck, PlainBlock, StageSpec, VideoResNet,
                                 build_stage)
from vcorr.models.zoo import place, video_resnet

__all__ = [
    "BasicBlock", "Bottleneck", "CPModule", "ClassifierHead", "Conv2Plus1d", "DEPTHS",
    "ModelEntry", "NonLocalBlock", "PlainBlock", "SmartConv", "StageSpec", "StemSpec", "TRNHead",
    "UnknownModelError", "VideoResNet", "build_stage", "conv_2d", "conv_2plus1d", "conv_3d",
    "create_model", "get_model_entry", "knn_other_frames", "knn_other_frames_dense",
    "list_models", "place", "r2plus1d_mid_width", "register_model", "smart_block", "smart_conv",
    "video_resnet",
]
