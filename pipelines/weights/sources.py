"""The published weights vcorr can start from, as data: where each file is published, the
source's own accuracy, and the input it was trained and evaluated with.

Numbers are the sources', not re-measured here:

* torchvision video models: the weights' metadata in torchvision 0.29
  (``torchvision.models.video.R3D_18_Weights.KINETICS400_V1`` etc.; video-level accuracy with
  16-frame clips at 15 fps, 5 clips per video, frames resized to 128 x 171, centre 112 crop).
* torchvision ImageNet ResNets: ``torchvision.models.ResNet50_Weights`` etc. (ImageNet-1k val,
  single 224 crop).
* PyTorchVideo: the hub functions' docstrings and checkpoint paths in PyTorchVideo 0.1.5
  (``pytorchvideo.models.hub``) and its model zoo table (Kinetics-400, 10 clips x 3 crops);
  clip "T x s" = T frames every s-th frame of the 30 fps videos.

The class order of every Kinetics source is the alphabetical Kinetics-400 label list
(:func:`kinetics400_classes`, a data file of this package).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

TV_VIDEO_MEAN = (0.43216, 0.394666, 0.37645)     # torchvision VideoClassification transform
TV_VIDEO_STD = (0.22803, 0.22145, 0.216989)
PTV_MEAN = (0.45, 0.45, 0.45)                    # PyTorchVideo's Kinetics transforms
PTV_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CLASSES_FILE = Path(__file__).with_name("kinetics400_classes.txt")


@lru_cache(maxsize=1)
def _classes() -> tuple[str, ...]:
    return tuple(line.strip() for line in CLASSES_FILE.read_text(encoding="utf-8").splitlines()
                 if line.strip())


def kinetics400_classes() -> list[str]:
    """The 400 Kinetics-400 class names in the order of torchvision's and PyTorchVideo's
    classifiers (alphabetical), read from the package's ``kinetics400_classes.txt``."""
    return list(_classes())


@dataclass(frozen=True)
class KnownSource:
    """One published checkpoint.

    ``name``: the source library's own name for it; ``model``: the vcorr model with its exact
    layout; ``dataset``: what the classifier was trained on ("Kinetics-400", "ImageNet-1k");
    ``top1``/``top5``: the source's published accuracy (%) on that dataset's validation set
    (``top5`` None where the source states none). Input: ``frames`` frames ``interval`` apart
    at ``fps``, short side resized to ``short_side``, centre ``crop`` x ``crop``, normalised with
    ``mean``/``std`` (0-1 RGB). ``reference``: where the numbers are from.
    """

    name: str
    library: str
    model: str | None
    dataset: str
    url: str
    top1: float
    top5: float | None
    frames: int
    interval: int
    fps: float | None
    crop: int
    short_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    reference: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def clip(self) -> str:
        """The input clip as text: ``16 x 112^2 @ 15 fps`` / ``13 x 6, 160^2 @ 30 fps``."""
        if self.frames == 1:
            return f"1 image, {self.crop}px"
        step = f" x {self.interval}" if self.interval > 1 else ""
        return f"{self.frames}{step}, {self.crop}px @ {self.fps:g} fps"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "file_name": self.file_name, "clip": self.clip}


_TV = "https://download.pytorch.org/models"
_PTV = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_TV_VIDEO_REF = "torchvision 0.29 weights metadata (KINETICS400_V1)"
_TV_IMAGENET_REF = "torchvision 0.29 weights metadata"
_PTV_REF = "PyTorchVideo 0.1.5 hub docstring and model zoo (Kinetics-400, 10 x 3 views)"


def _tv_video(name: str, model: str, file: str, top1: float, top5: float) -> KnownSource:
    return KnownSource(name, "torchvision", model, "Kinetics-400", f"{_TV}/{file}", top1, top5,
                       16, 1, 15.0, 112, 128, TV_VIDEO_MEAN, TV_VIDEO_STD, _TV_VIDEO_REF)


def _ptv(name: str, file: str, top1: float, frames: int, interval: int, crop: int,
         short_side: int) -> KnownSource:
    return KnownSource(name, "pytorchvideo", f"ptv_{name}", "Kinetics-400", f"{_PTV}/{file}",
                       top1, None, frames, interval, 30.0, crop, short_side, PTV_MEAN, PTV_STD,
                       _PTV_REF)


def _imagenet(name: str, tag: str, file: str, top1: float, top5: float) -> KnownSource:
    return KnownSource(f"{name} ({tag})", "torchvision", None, "ImageNet-1k", f"{_TV}/{file}",
                       top1, top5, 1, 1, None, 224, 256, IMAGENET_MEAN, IMAGENET_STD,
                       _TV_IMAGENET_REF)


SOURCES: tuple[KnownSource, ...] = (
    _tv_video("r3d_18", "tv_r3d_18", "r3d_18-b3b3357e.pth", 63.2, 83.479),
    _tv_video("mc3_18", "tv_mc3_18", "mc3_18-a90a0ba3.pth", 63.96, 84.13),
    _tv_video("r2plus1d_18", "tv_r2plus1d_18", "r2plus1d_18-91a641e6.pth", 67.463, 86.175),
    # PyTorchVideo: the test views of its model zoo (short side = crop: 3 crops along the
    # longer side); the training crop, whose feature size the head pools, is the vcorr
    # model's default input (X3D: 160, 160, 224, 312; ResNets 224).
    _ptv("x3d_xs", "X3D_XS.pyth", 69.12, 4, 12, 182, 182),
    _ptv("x3d_s", "X3D_S.pyth", 73.33, 13, 6, 182, 182),
    _ptv("x3d_m", "X3D_M.pyth", 75.94, 16, 5, 256, 256),
    _ptv("x3d_l", "X3D_L.pyth", 77.44, 16, 5, 356, 356),
    _ptv("c2d_r50", "C2D_8x8_R50.pyth", 71.46, 8, 8, 256, 256),
    _ptv("i3d_r50", "I3D_8x8_R50.pyth", 73.27, 8, 8, 256, 256),
    _ptv("slow_r50", "SLOW_8x8_R50.pyth", 74.58, 8, 8, 256, 256),
    _ptv("r2plus1d_r50", "R2PLUS1D_16x4_R50.pyth", 76.01, 16, 4, 256, 256),
    _ptv("csn_r101", "CSN_32x2_R101.pyth", 77.0, 32, 2, 256, 256),
    # ImageNet ResNets: inflated by `vcorr train --init` into any model with that ResNet inside.
    _imagenet("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758, 89.078),
    _imagenet("resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314, 91.42),
    _imagenet("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.13, 92.862),
    _imagenet("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858, 95.434),
    _imagenet("resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374, 93.546),
    _imagenet("resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886, 95.78),
    _imagenet("resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312, 94.046),
    _imagenet("resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284, 96.002),
)

# Published video models whose layout the generic video ResNet and X3D builders cannot express
# (README, "Pretrained weights"): name -> why.
NOT_IMPORTED: dict[str, str] = {
    "pytorchvideo slowfast_r50 / slowfast_r101 / slowfast_16x8_r101_50_50":
        "two pathways (Slow and Fast) with lateral fusion convs between them; the builders make "
        "one pathway",
    "pytorchvideo slow_r50_detection":
        "an RoI-align detection head on boxes (AVA), not a clip classifier",
    "pytorchvideo mvit_base_16x4 / mvit_base_32x3 / mvit_base_16":
        "multiscale vision transformers (attention blocks), not residual conv stages",
    "pytorchvideo efficient_x3d_xs / efficient_x3d_s":
        "the mobile-CPU X3D of pytorchvideo.accelerator: other block modules (fused conv+BN "
        "layers, its own SE and activations); not checked against our X3D block",
    "torchvision s3d":
        "Inception (S3D-G) mixed blocks, not residual stages",
    "torchvision mvit_v1_b / mvit_v2_s / swin3d_t / swin3d_s / swin3d_b":
        "video transformers",
}


def find_source(name: str, library: str | None = None) -> KnownSource | None:
    """The source called ``name`` (its own name or its vcorr model's) in ``library``, or None."""
    for s in SOURCES:
        if (library is None or s.library == library) and name in (s.name, s.model):
            return s
    return None


def sources_for(library: str) -> list[KnownSource]:
    """The Kinetics sources of ``library`` ("torchvision" or "pytorchvideo")."""
    return [s for s in SOURCES if s.library == library and s.model is not None]
