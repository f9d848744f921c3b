"""Training: configs, the loop (single process or DDP), checkpoints and initial weights."""
from vcorr.pipelines.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from vcorr.pipelines.train.config import DEFAULTS, apply_set, load_config, phases, to_toml
from vcorr.pipelines.train.distributed import EpochSampler, setup_distributed
from vcorr.pipelines.train.trainer import NonFiniteLoss, build_model, lr_at, train, validate

__all__ = ["DEFAULTS", "EpochSampler", "NonFiniteLoss", "apply_set", "build_model",
           "load_checkpoint", "load_config", "load_weights", "lr_at", "phases", "save_checkpoint",
           "setup_distributed", "to_toml", "train", "validate"]
