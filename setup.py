"""vcorr: video action recognition with correspondence and correlation models."""
from setuptools import find_packages, setup

setup(
    name="vcorr",
    version="0.1.0",
    description="Prepare video datasets, train, evaluate and visualise CPNet, CorrNet and DCF models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # One import name, ``vcorr``, for the three top-level folders: vcorr.cli (vcorr_cli/),
    # vcorr.models (models/), vcorr.pipelines (pipelines/). The root's __init__.py / __main__.py
    # are the package itself (``python -m vcorr``). Nothing is installed as a top-level
    # ``models`` or ``pipelines``, so vcorr runs beside a project that has its own.
    packages=["vcorr", "vcorr.cli"] + ["vcorr." + p for p in find_packages(
        include=["models", "models.*", "pipelines", "pipelines.*"])],
    package_dir={"vcorr": ".", "vcorr.cli": "vcorr_cli"},
    # The Kinetics-400 class list of the torchvision / PyTorchVideo checkpoints (pipelines.weights).
    package_data={"vcorr.pipelines.weights": ["kinetics400_classes.txt"],
                  "vcorr.pipelines.data": ["class_lists/*.txt"]},
    install_requires=[
        # torch and torchvision unpinned so pip resolves a matching pair.
        "torch",
        "torchvision",
        "decord>=0.6.0",
        # fallback decoder (frame widths decord 0.6 cannot convert, damaged files); 13.1:
        # Packet.opaque/Frame.opaque, which carry decode positions to count damaged frames
        "av>=13.1",
        "ffmpeg-python>=0.2.0",
        "imageio-ffmpeg>=0.4.9",
        "h5py>=3.8",
        "click>=8.1",
        "rich>=13",
        "tqdm>=4.60",
        "numpy>=1.23",
        "matplotlib>=3.7",
    ],
    # PyTorchVideo: test-only reference for the imported Kinetics layouts (tests/test_weights.py).
    # tb: TensorBoard event files in RUN_DIR/tb while training (pipelines.train.monitor).
    extras_require={"test": ["pytest>=7", "pytorchvideo==0.1.5"], "tb": ["tensorboard"]},
    entry_points={"console_scripts": ["vcorr = vcorr.cli.main:main"]},
)
