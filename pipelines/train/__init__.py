"""Training: configs, the loop (single process or DDP), checkpoints and initial weights."""
from pipelines.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from pipelines.train.config import DEFAULTS, apply_set, load_config, phases, to_toml
from pipelines.train.distributed import EpochSampler, setup_distributed
from pipelines.train.trainer import NonFiniteLoss, build_model, lr_at, train, validate

__all__ = ["DEFAULTS", "EpochSampler", "NonFiniteLoss", "apply_set", "build_model",
           "load_checkpoint", "load_config", "load_weights", "lr_at", "phases", "save_checkpoint",
           "setup_distributed", "to_toml", "train", "validate"]
