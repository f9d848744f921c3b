"""Reading and writing videos and frame folders.

Decoding uses decord (fast random access into a video); writing uses the ffmpeg binary through
ffmpeg-python. The binary is, in order of preference: ``$VCORR_FFMPEG``, an ``ffmpeg`` on PATH,
or the one bundled with imageio-ffmpeg, so no system package is needed.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary to run (``$VCORR_FFMPEG`` > PATH > imageio-ffmpeg's)."""
    env = os.environ.get("VCORR_FFMPEG")
    if env:
        return env
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, lossless: bool = False,
                crf: int = 18, codec: str | None = None) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB to ``path`` with ffmpeg.

    ``lossless`` uses H.264 in RGB with qp=0 (every pixel survives decoding); otherwise
    H.264 yuv420p at ``crf`` (or VP9 for ``.webm``). Sizes must be even for yuv420p.
    """
    import ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    path = Path(path)
    if lossless:
        out_kw = {"vcodec": codec or "libx264rgb", "qp": 0}
    elif path.suffix == ".webm":
        out_kw = {"vcodec": codec or "libvpx-vp9", "crf": crf, "b:v": 0}
    else:
        out_kw = {"vcodec": codec or "libx264", "crf": crf, "pix_fmt": "yuv420p"}
    (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
        .output(str(path), **out_kw)
        .overwrite_output()
        .run(cmd=ffmpeg_exe(), input=frames.tobytes(), quiet=True)
    )


def write_videos_segmented(pattern: str | Path, frames: np.ndarray, frames_per_video: int,
                           fps: float = 8.0) -> None:
    """Write many equally long lossless clips with one ffmpeg process.

    ``frames`` is (N*T, H, W, 3); the stream is cut every ``frames_per_video`` frames by ffmpeg's
    segment muxer into files named by ``pattern`` (e.g. ``videos/toy_%05d.mp4``). One process
    instead of N keeps ``vcorr toy`` at about a second for 2000 videos.
    """
    import ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    n_total, h, w, _ = frames.shape
    t = frames_per_video
    if n_total % t:
        raise ValueError("number of frames is not a multiple of frames_per_video")
    cuts = ",".join(str(i) for i in range(t, n_total, t)) or str(n_total)
    (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
        # A key frame at every cut, so every file starts cleanly and holds exactly t frames.
        .output(str(pattern), vcodec="libx264rgb", qp=0, g=t, keyint_min=t, sc_threshold=0,
                f="segment", segment_frames=cuts, reset_timestamps=1, segment_format="mp4")
        .overwrite_output()
        .run(cmd=ffmpeg_exe(), input=frames.tobytes(), quiet=True)
    )


def select_frames(num_frames: int, source_fps: float, every: int = 1,
                  fps: float | None = None) -> list[int]:
    """Indices of the frames kept by temporal downsampling (frames are dropped, never blended).

    ``every=N`` keeps 0, N, 2N, ...; ``fps=F`` keeps, for each time k/F inside the video, the
    frame nearest to it (at or above the source rate every frame is kept once).
    """
    if num_frames <= 0:
        return []
    if fps is None or source_fps <= 0 or fps >= source_fps:
        step = max(1, every) if fps is None else 1
        return list(range(0, num_frames, step))
    duration = num_frames / source_fps
    times = np.arange(0.0, duration, 1.0 / fps)
    idx = np.rint(times * source_fps).astype(np.int64)
    idx = idx[idx < num_frames]
    return sorted(set(int(i) for i in idx))


def stored_fps(source_fps: float, every: int = 1, fps: float | None = None) -> float:
    """Frame rate of the kept frames (see :func:`select_frames`)."""
    if fps is not None:
        return float(min(fps, source_fps)) if source_fps > 0 else float(fps)
    return source_fps / max(1, every)


def _pyav_frames(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Decode ``indices`` (sorted) by reading the stream from the start with PyAV: slow for
    long videos, used only where decord fails."""
    import av

    want = list(indices)
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        pos = 0
        for i, frame in enumerate(container.decode(video=0)):
            while pos < len(want) and want[pos] == i:
                out.append(frame.to_ndarray(format="rgb24"))
                pos += 1
            if pos == len(want):
                break
    if len(out) != len(want):
        raise ValueError(f"{path}: frame {want[len(out)]} not found")
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


class VideoSource:
    """Random access to the frames of one video file or frame folder.

    Shape: :meth:`get` returns uint8 (N, H, W, 3) RGB.
    """

    def __init__(self, path: str | Path, folder_fps: float = 12.0) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir()
                                 if p.suffix.lower() in IMAGE_SUFFIXES)
            self._reader = None
            self.num_frames = len(self._files)
            self.fps = float(folder_fps)  # frame folders carry no rate of their own
        else:
            import decord

            self._reader = decord.VideoReader(str(self.path), num_threads=1)
            self._use_pyav = False
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames at ``indices`` (sorted, in range)."""
        if self._reader is not None:
            if not self._use_pyav:
                try:
                    out = self._reader.get_batch(list(indices)).asnumpy()
                    if out.ndim == 4 and out.shape[-1] == 3:
                        return out
                except Exception as exc:  # decord raises its own DECORDError
                    if "size must exactly match" not in str(exc):
                        raise
                # decord 0.6 cannot convert some widths (24, 48, ...: it copies a padded
                # RGBA-sized buffer and fails): decode this file with PyAV instead.
                self._use_pyav = True
            return _pyav_frames(self.path, indices)
        from torchvision.io import ImageReadMode, decode_image, read_file

        out = [decode_image(read_file(str(self._files[i])), mode=ImageReadMode.RGB)
               .permute(1, 2, 0).numpy() for i in indices]
        return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)

    def frame_file(self, index: int) -> Path | None:
        """The image file of frame ``index`` for frame folders, else None."""
        return self._files[index] if self._reader is None else None

    def iter_chunks(self, indices: Sequence[int], chunk: int = 32) -> Iterator[np.ndarray]:
        """Decode ``indices`` in chunks, so long videos never sit in memory whole."""
        for start in range(0, len(indices), chunk):
            yield self.get(indices[start:start + chunk])
