"""Writing videos (the toy dataset, test videos, rendered figures).

Reading goes through :mod:`vcorr.pipelines.data.decode`, the one decoding layer. Writing uses the
ffmpeg binary through ffmpeg-python (:class:`TimedVideoWriter`: the binary fed a NUT stream
that PyAV muxes, for frames with their own times). The binary is, in order of preference:
``$VCORR_FFMPEG``, an ``ffmpeg`` on PATH, or the one bundled with imageio-ffmpeg, so no
system package is needed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Self

import numpy as np


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
    _, h, w, _ = frames.shape
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
    n_total, h, w, _ = frames.shape
    if n_total % frames_per_video:
        raise ValueError("number of frames is not a multiple of frames_per_video")
    with SegmentedVideoWriter(pattern, n_total // frames_per_video, frames_per_video, h, w,
                              fps) as writer:
        writer.write(frames)


class _FfmpegWriter:
    """What the writers feeding an ffmpeg process share: as a context manager, ``close()``
    (finish the output) when the block succeeds and ``abort()`` when it raises."""

    _proc: subprocess.Popen
    _closed: bool

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Stop without finishing the output (the caller removes it)."""
        self._closed = True
        self._proc.kill()
        self._proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SegmentedVideoWriter(_FfmpegWriter):
    """Many equally long videos from one ffmpeg process, frames streamed in.

    The stream is cut every ``frames_per_video`` frames by ffmpeg's segment muxer into files
    named by ``pattern`` (``%05d`` counts from ``start_number``). Two encodings:

    - ``intra_qp=None``: lossless H.264 in RGB (qp 0), a key frame at every cut.
    - ``intra_qp=Q``: H.264 yuv420p with every frame a key frame (``-g 1``), constant quantizer
      ``Q`` (no rate control, hence no adaptive quantization either) and one encoder thread.
      Each decoded frame then depends on that frame's pixels alone: not on its position, its
      neighbours or the file, so reordering frames (time reversal) reorders the decoded
      frames exactly, and a video's first frame is no sharper than its others.

    ``rgbx``: frames come as (N, H, W, 4) RGBx (the 4th byte ignored) instead of RGB.

    >>> with SegmentedVideoWriter("videos/v_%05d.mp4", 10, 50, 128, 128, 25.0, intra_qp=26) as w:
    ...     w.write(frames)   # uint8 (N, H, W, 3) RGB, any N; 10 * 50 frames in all

    Raises:
        RuntimeError: ffmpeg failed (its last lines in the message).
        ValueError: frames of the wrong size, or not ``videos * frames_per_video`` in all.
    """

    def __init__(self, pattern: str | Path, videos: int, frames_per_video: int, height: int,
                 width: int, fps: float, *, intra_qp: int | None = None,
                 preset: str = "veryfast", start_number: int = 0, rgbx: bool = False) -> None:
        import ffmpeg

        t = frames_per_video
        self.pattern, self.height, self.width = str(pattern), height, width
        self.channels = 4 if rgbx else 3
        self.expected, self.written = videos * t, 0
        cuts = ",".join(str(i) for i in range(t, videos * t, t)) or str(videos * t)
        if intra_qp is None:
            # A key frame at every cut, so every file starts cleanly and holds exactly t frames.
            codec = {"vcodec": "libx264rgb", "qp": 0, "g": t, "keyint_min": t,
                     "sc_threshold": 0}
        else:
            codec = {"vcodec": "libx264", "preset": preset, "qp": intra_qp, "g": 1,
                     "keyint_min": 1, "bf": 0, "sc_threshold": 0, "threads": 1,
                     "pix_fmt": "yuv420p"}
        cmd = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb0" if rgbx else "rgb24",
                         s=f"{width}x{height}", r=fps)
            .output(self.pattern, **codec, f="segment", segment_frames=cuts,
                    segment_start_number=start_number, reset_timestamps=1,
                    segment_format="mp4")
            .global_args("-loglevel", "error")
            .overwrite_output()
            .compile(cmd=ffmpeg_exe())
        )
        # stderr to a file: a pipe nobody reads until the end could fill up and stall ffmpeg.
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()/abort()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._err)
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Append frames, uint8 (N, H, W, 3) RGB, or (N, H, W, 4) RGBx with ``rgbx``."""
        shape = (self.height, self.width, self.channels)
        if frames.ndim != 4 or frames.shape[1:] != shape:
            raise ValueError(f"frames {frames.shape} are not (N, {', '.join(map(str, shape))})")
        self.written += len(frames)
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames, dtype=np.uint8).data)
        except BrokenPipeError:
            self._closed = True
            self._proc.wait()
            raise RuntimeError(self._failure()) from None

    def _failure(self) -> str:
        self._err.seek(0)
        err = self._err.read().decode("utf-8", "replace")
        return (f"ffmpeg failed writing {self.pattern} (exit {self._proc.returncode}): "
                + " | ".join(err.strip().splitlines()[-3:]))

    def close(self) -> None:
        """Finish the files (waits for ffmpeg)."""
        if self._closed:
            return
        self._closed = True
        self._proc.stdin.close()
        code = self._proc.wait()
        try:
            if code:
                raise RuntimeError(self._failure())
            if self.written != self.expected:
                raise ValueError(f"{self.pattern}: {self.written} frames written, "
                                 f"{self.expected} announced")
        finally:
            self._err.close()

    def abort(self) -> None:
        """Stop without finishing the files (the caller removes them)."""
        super().abort()
        self._err.close()


class TimedVideoWriter(_FfmpegWriter):
    """H.264 (yuv420p) mp4 of frames that keep their presentation times, written frame by
    frame (a long video never sits in memory).

    Frames go, as raw RGB with their timestamps, in a NUT stream (muxed by PyAV) into the
    ffmpeg binary, which encodes them with ``-fps_mode passthrough``: no frame is duplicated
    or dropped, and a variable-rate video keeps its timing. ``time_base`` (seconds per tick):
    1/rate for a constant-rate video (exact timestamps), else microseconds. ``rate`` (frames
    per second: the constant rate, or a variable-rate video's average) is how long the last
    frame lasts (1/rate). Odd widths or heights are padded by one black pixel (yuv420p needs
    even sizes).

    >>> with TimedVideoWriter("out.mp4", 480, 640, Fraction(30)) as w:
    ...     w.write(frame, 0.0)   # uint8 (H, W, 3) RGB, time in seconds

    Raises:
        RuntimeError: ffmpeg failed (its last lines in the message).
    """

    def __init__(self, path: str | Path, height: int, width: int, rate: Fraction,
                 time_base: Fraction = Fraction(1, 1_000_000), crf: int = 20) -> None:
        import av

        self.path, self.time_base = Path(path), time_base
        self.height, self.width = height, width
        self._last_pts: int | None = None
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "nut", "-i", "pipe:",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-fps_mode", "passthrough",
               # The encoder's time base would otherwise come from a guessed frame rate,
               # rounding the timestamps of a variable-rate video to it.
               "-enc_time_base:v", f"{time_base.numerator}:{time_base.denominator}",
               "-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", str(self.path)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._container = av.open(self._proc.stdin, "w", format="nut")
        self._stream = self._container.add_stream("rawvideo", rate=rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "rgb24"
        self._stream.time_base = self._stream.codec_context.time_base = time_base
        self._closed = False

    def write(self, frame: np.ndarray, time: float) -> None:
        """Append ``frame`` (uint8 (H, W, 3) RGB) shown at ``time`` seconds; a time not later
        than the previous frame's (after rounding to the time base) is refused.

        Raises:
            ValueError: wrong frame size, or time not increasing.
        """
        import av

        if frame.shape != (self.height, self.width, 3):
            raise ValueError(f"frame {frame.shape} is not ({self.height}, {self.width}, 3)")
        pts = round(Fraction(time).limit_denominator(10**9) / self.time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"frame time {time:.6f} s is not after the previous frame's")
        self._last_pts = pts
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, np.uint8), format="rgb24")
        vf.pts, vf.time_base = pts, self.time_base
        self._container.mux(self._stream.encode(vf))

    def close(self) -> None:
        """Finish the file (waits for ffmpeg)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._stream.encode())
            self._container.close()
        finally:
            self._proc.stdin.close()
            err = self._proc.stderr.read().decode("utf-8", "replace")
            code = self._proc.wait()
        if code:
            raise RuntimeError(f"ffmpeg failed on {self.path} (exit {code}): "
                               + " | ".join(err.strip().splitlines()[-3:]))

