"""The one decoding layer: every reader of raw video files and frame folders goes through here.

:func:`probe` reads a video's container without decoding it (PyAV demuxes every packet): the
presentation time of each frame, the display orientation, and whether the frame rate varies.
:class:`VideoReader` then decodes the frames a caller selects, in display orientation, in
chunks of bounded size (a 4K video never sits in memory whole):

* **decord** is the fast path where it is known to be right: it opened the file, counts the
  same frames as the container, the frame rate is constant, the orientation is a pure
  rotation (decord 0.6 applies rotations but not mirroring), frames are at most 720p (above,
  its decode-ahead buffers cost gigabytes and it is slower than PyAV), and its FFmpeg printed
  nothing while decoding, at INFO level (decord conceals damaged data and hides the corrupt
  flag; FFmpeg's error concealment may say so only at INFO level).
* **PyAV** (its wheel bundles FFmpeg) decodes everything else, sequentially, packet by packet:
  no duration or frame count in the header (piped Matroska, browser WebM), mirrored display
  matrices, variable frame rates, widths decord cannot convert, and damaged files. Frames that
  decode are kept; packets the decoder rejects, frames it marks corrupt (error-concealed) and
  frames decoded after them up to the next key frame (:func:`count_damage`) are counted in
  :class:`DecodeReport`, so the caller can say what happened. Damage the decoder does not
  notice (bytes that happen to parse as valid data) cannot be seen by either decoder.
  Frames are taken in the decoder's output order, which is presentation order; their
  timestamps need not be: AVI stores no presentation times (FFmpeg stamps B-frames' packets
  in decode order, 1, 4, 3, 5, 2, ..., and DivX-style packed B-frames a chunk off), so each
  frame is timed with the timestamps of the frames around it sorted (:class:`_Retimer`), and
  every frame the decoder outputs is kept once. Packed B-frames never take the fast path:
  decord's FFmpeg says they are there (INFO), and decord's random access into them returns
  the wrong frames.

Selection is by time: ``fps=F`` keeps, for each time k/F from the first frame's presentation
time up to the end of the video, the frame whose presentation time is nearest (exact ties go
to the even frame number, as ``numpy.rint`` rounds, so constant-rate videos keep the frames
they always kept); a frame nearest to several times is kept once. ``every=N`` stays
index-based. Decoder messages never reach the terminal: they are captured per video
(:attr:`DecodeReport.log`) for the caller to write to a log file.

Orientation follows FFmpeg's command line (``ffmpeg -i`` autorotation), which the tests use as
the reference: the display matrix (rotation by a multiple of 90 degrees, mirrored or not) or,
without one, a ``rotate`` tag in the stream metadata (clockwise degrees, as FFmpeg 4 and
older exported it). Other angles are refused (:class:`VideoError`), never stored unrotated.
"""
from __future__ import annotations

import heapq
import logging
import os
import re
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# The fixed phrases a failure reason starts with (failures.csv groups on them).
MISSING_FILE = "missing file"
EMPTY_FILE = "empty file"
NOT_MEDIA = "not a media file"
NO_VIDEO_STREAM = "no video stream"
NO_FRAME = "no decodable frame"
UNSUPPORTED_ORIENTATION = "unsupported orientation"
DAMAGED = "damaged video"  # with --strict: only part of the video decoded

# A decode chunk holds at most this many bytes of full-size RGB frames (and 32 frames): a
# 3840x2160 frame is 24.9 MB, so 4K video is decoded, resized and encoded a frame at a time.
CHUNK_BYTES = 32 * 2**20
CHUNK_FRAMES = 32
# decord decodes ahead and keeps decoded frames in memory: measured peak RSS over PyAV's for
# 10 s at 30 fps, +200-300 MB at 1280x720 (and 1.5x faster), +560 MB at 1920x1080 (and 1.5x
# slower), +3.1 GB at 3840x2160 (2x slower). Larger frames than 720p go to PyAV.
DECORD_MAX_PIXELS = 1280 * 720
# PyAV's output frames are timed once this many later frames are out (at most CHUNK_BYTES of
# them): timestamps this far out of presentation order are put back in order (_Retimer).
REORDER_WINDOW = 16


class VideoError(Exception):
    """A video that cannot be used. ``phrase`` is one of the fixed phrases above, ``detail``
    the decoder's own message; ``str()`` is ``"phrase: detail"``."""

    def __init__(self, phrase: str, detail: str = "") -> None:
        self.phrase, self.detail = phrase, detail
        super().__init__(f"{phrase}: {detail}" if detail else phrase)


# --------------------------------------------------------------------------- orientation
@dataclass(frozen=True)
class Orientation:
    """How stored frames become display frames: mirror left-right (``hflip``) first, then
    ``quarter_turns`` counter-clockwise quarter turns (``numpy.rot90``'s ``k``)."""

    quarter_turns: int = 0
    hflip: bool = False

    @property
    def identity(self) -> bool:
        return self.quarter_turns == 0 and not self.hflip

    @property
    def swaps_axes(self) -> bool:
        return self.quarter_turns % 2 == 1

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Display orientation of one frame (H, W, 3) or a stack (N, H, W, 3) (a view)."""
        h_axis = frame.ndim - 3
        if self.hflip:
            frame = np.flip(frame, axis=h_axis + 1)
        if self.quarter_turns:
            frame = np.rot90(frame, self.quarter_turns, axes=(h_axis, h_axis + 1))
        return frame


# The eight display matrices a video can carry, by the signs of their linear part
# (matrix[0], matrix[1], matrix[3], matrix[4]), and what FFmpeg's command line shows for each
# (checked against ``ffmpeg -i`` output for every one of them in the tests).
_MATRIX_ORIENTATION = {
    (1, 0, 0, 1): Orientation(0, False),
    (-1, 0, 0, 1): Orientation(0, True),
    (1, 0, 0, -1): Orientation(2, True),
    (-1, 0, 0, -1): Orientation(2, False),
    (0, -1, 1, 0): Orientation(1, False),
    (0, -1, -1, 0): Orientation(3, True),
    (0, 1, 1, 0): Orientation(1, True),
    (0, 1, -1, 0): Orientation(3, False),
}


def orientation_from_matrix(matrix: Sequence[int]) -> Orientation:
    """Orientation of FFmpeg's 3x3 display matrix (``AV_FRAME_DATA_DISPLAYMATRIX``: nine
    int32, 16.16 fixed point in the linear part).

    Raises:
        VideoError: the matrix is not a rotation by a multiple of 90 degrees (mirrored or not).
    """
    lin = np.array([matrix[0], matrix[1], matrix[3], matrix[4]], np.float64) / 65536.0
    signs = np.sign(np.where(np.abs(lin) < 1e-3, 0.0, lin)).astype(int)
    key = tuple(int(s) for s in signs)
    # Only pure quarter turns and mirrors (|entries| 1 or 0); scaling and shearing are refused.
    if key in _MATRIX_ORIENTATION and np.allclose(np.abs(lin), np.abs(signs), atol=1e-3):
        return _MATRIX_ORIENTATION[key]
    angle = float(np.degrees(np.arctan2(lin[1], lin[0])))
    raise VideoError(UNSUPPORTED_ORIENTATION,
                     f"display matrix rotates by {-angle:.1f} degrees, not a multiple of 90")


def orientation_from_tag(tag: str) -> Orientation:
    """Orientation of a ``rotate`` metadata tag (clockwise degrees).

    Raises:
        VideoError: not a multiple of 90 degrees.
    """
    try:
        degrees = float(tag)
    except ValueError:
        raise VideoError(UNSUPPORTED_ORIENTATION, f"rotate tag {tag!r} is not a number") from None
    if degrees % 90:
        raise VideoError(UNSUPPORTED_ORIENTATION,
                         f"rotate tag {tag} is not a multiple of 90 degrees")
    return Orientation(int(-degrees // 90) % 4, False)


# --------------------------------------------------------------------------- probe
@dataclass
class VideoInfo:
    """What the container says of a video, read without decoding it.

    ``times`` holds each frame's presentation time in seconds from the first frame, in
    presentation order; ``duration`` runs from the first frame to the end of the last (seconds);
    ``height``/``width`` are the display size (pixels, after orientation).
    """

    path: str
    times: np.ndarray
    duration: float
    height: int
    width: int
    orientation: Orientation = Orientation()
    variable_rate: bool = False
    header_frames: int = 0  # frames the header announces (0: it does not say)
    header_duration: float | None = None  # seconds the header announces
    frame_folder: bool = False
    files: list[Path] = field(default_factory=list)  # frame folders: the image of each frame
    start_pts: int | None = None  # the first frame's timestamp (stream time base)
    # The stream's stated rate, where the timestamps follow it (then times are k / rate).
    nominal_rate: float | None = None
    log: list[str] = field(default_factory=list)  # what the demuxer and decoder said

    @property
    def num_frames(self) -> int:
        return len(self.times)

    @property
    def fps(self) -> float:
        """Average frame rate: frames / duration (frames per second)."""
        return self.num_frames / self.duration if self.duration > 0 else 0.0

    def selector(self, every: int = 1, fps: float | None = None,
                 indices: Sequence[int] | None = None) -> FrameSelector:
        """A :class:`FrameSelector` for this video's frames."""
        return FrameSelector(every, fps, indices, self.duration, self.nominal_rate,
                             repeat=self.nominal_rate is None)

    def select(self, every: int = 1, fps: float | None = None) -> list[int]:
        """Numbers of the frames ``every``/``fps`` keep (see :class:`FrameSelector`)."""
        sel = self.selector(every, fps)
        out = [n for i, t in enumerate(self.times) for n, _ in sel.feed(i, float(t))]
        return out + [n for n, _ in sel.finish()]


def probe(path: str | Path, folder_fps: float = 12.0) -> VideoInfo:
    """Frame times, display size and orientation of a video file or frame folder.

    Frame folders hold one image per frame (sorted by name) at ``folder_fps``.

    Raises:
        VideoError: missing or empty file, not a media file, no video stream, no frame,
            unsupported orientation.
    """
    p = Path(path)
    if not p.exists():
        raise VideoError(MISSING_FILE, str(p))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise VideoError(NO_FRAME, "no image files in the folder")
        h, w = _image_size(files[0])
        n = len(files)
        return VideoInfo(str(p), np.arange(n) / float(folder_fps), n / float(folder_fps), h, w,
                         frame_folder=True, files=files, header_frames=n,
                         nominal_rate=float(folder_fps))
    if p.stat().st_size == 0:
        raise VideoError(EMPTY_FILE, "0 bytes")
    av = _av()
    with capture_decoder_output() as log:
        try:
            container = av.open(str(p))
        except av.error.FFmpegError as exc:
            said = f" ({log[-1]})" if log else ""  # e.g. "[mov,mp4,...] moov atom not found"
            raise VideoError(NOT_MEDIA, _ffmpeg_message(exc) + said) from None
        with container:
            stream = video_stream(container)
            if stream is None:
                kinds = ", ".join(sorted({
                    "cover picture" if s.disposition & av.stream.Disposition.attached_pic
                    else s.type for s in container.streams})) or "none"
                raise VideoError(NO_VIDEO_STREAM, f"streams: {kinds}")
            info = _probe_stream(p, container, stream)
    info.log = list(log)
    return info


def video_stream(container):
    """The container's video: FFmpeg's best video stream, never a cover picture (an
    ``attached_pic`` stream holds one still image); None if there is none."""
    av = _av()
    moving = [s for s in container.streams.video
              if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        return None
    best = container.streams.best("video")
    return best if best in moving else moving[0]


def _probe_stream(p: Path, container, stream) -> VideoInfo:
    av = _av()
    # The first frame is decoded only for its side data: one thread, no thread pool to start
    # for every file. (Skipping non-key frames would be 6 ms faster a file, but makes the
    # H.264 decoder complain about missing references on clean files.)
    stream.codec_context.thread_count = 1
    tb = float(stream.time_base) if stream.time_base else 0.0
    pts: list[int] = []
    durations: list[int] = []
    discarded = 0
    first_frame = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packets
            if first_frame is None:  # the display matrix arrives as side data of a frame
                try:
                    frames = stream.decode(packet)
                    first_frame = frames[0] if frames else None
                except av.error.FFmpegError:
                    pass
            if packet.is_discard:  # pre-roll before an edit list's start: decoded, not shown
                discarded += 1
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            pts.append(stamp if stamp is not None else -2**62)
            durations.append(packet.duration or 0)
    except av.error.FFmpegError:
        pass  # a truncated or damaged container: the packets read so far are the video
    if first_frame is None:
        try:  # the decoder may hold the first frame back until it is flushed
            frames = stream.decode(None)
            first_frame = frames[0] if frames else None
        except av.error.FFmpegError:
            pass
    if not pts:
        raise VideoError(NO_FRAME, "the video stream holds no frames")
    start_pts = min(pts)
    if tb <= 0 or -2**62 in pts:  # no timestamps (raw H.264, ...): frames are 1/rate apart
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        tb, pts, start_pts = 1.0 / rate, list(range(len(pts))), None
        durations = [1] * len(pts)
    order = np.argsort(np.asarray(pts, np.int64), kind="stable")
    stamps = np.asarray(pts, np.int64)[order]
    times = (stamps - stamps[0]).astype(np.float64) * tb
    deltas = np.diff(times)
    last = durations[int(order[-1])] * tb
    if last <= 0:
        last = float(np.median(deltas)) if len(deltas) else (
            1.0 / float(stream.average_rate) if stream.average_rate else 1.0)
    duration = float(times[-1] + last)
    # Variable rate: frame spacings differ by more than timestamp rounding (1.5 ticks) and
    # 5% of the usual spacing (NTSC rates in millisecond timestamps alternate 33/34 ms).
    variable = bool(len(deltas) > 1 and deltas.max() - deltas.min()
                    > max(1.5 * tb, 0.05 * float(np.median(deltas))))
    # Constant rate: where every timestamp is the stream's stated rate's grid rounded to its
    # time base (WebM and Matroska store milliseconds: 12 fps is 0, 83, 167, ... ms), the
    # frames are at exactly k/rate, and the video lasts frames/rate.
    nominal = float(stream.average_rate) if stream.average_rate else 0.0
    grid = np.arange(len(times)) / nominal if nominal > 0 else None
    if (not variable and grid is not None
            and np.abs(times - grid).max() <= 1.5 * tb + 1e-6
            and abs(duration - len(times) / nominal) <= 1.5 * tb + 1e-6):
        times, duration = grid, len(times) / nominal
    else:
        nominal = 0.0
    orientation = Orientation()
    matrix = None
    if first_frame is not None:
        for side in first_frame.side_data:
            if "DISPLAYMATRIX" in str(side.type):
                matrix = np.frombuffer(bytes(side), np.int32)
    if matrix is not None:
        orientation = orientation_from_matrix(matrix)
    else:
        tag = {k.lower(): v for k, v in stream.metadata.items()}.get("rotate")
        if tag:
            orientation = orientation_from_tag(tag)
    h, w = (stream.codec_context.height, stream.codec_context.width)
    if first_frame is not None:
        h, w = first_frame.height, first_frame.width
    if orientation.swaps_axes:
        h, w = w, h
    header_duration = float(stream.duration * tb) if stream.duration else (
        container.duration / 1e6 if container.duration else None)
    header_frames = max(0, int(stream.frames or 0) - discarded) if stream.frames else 0
    return VideoInfo(str(p), times, duration, int(h), int(w), orientation, variable,
                     header_frames, header_duration, start_pts=start_pts,
                     nominal_rate=nominal or None)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as exc:
        raise VideoError(NO_FRAME, f"{path.name}: {exc}") from None


# --------------------------------------------------------------------------- selection
class FrameSelector:
    """Decides, frame by frame in presentation order, which frames a selection keeps.

    ``every=N`` keeps frame numbers 0, N, 2N, ...; ``indices`` keeps exactly those frame
    numbers; ``fps=F`` keeps the frame nearest to each time k/F (seconds from the first frame)
    below ``duration``. With ``repeat`` (variable-rate videos) a frame nearest to several
    times is kept for each, so the kept frames are exactly 1/F apart in time; without it
    (constant rate, where F at or above the rate keeps every frame once, at the source rate)
    it is kept once. ``tie_rate``: see :meth:`_tie`. :meth:`feed` returns the frames whose
    fate is decided (kept ones only, in order); :meth:`finish` those left at the end.
    """

    def __init__(self, every: int = 1, fps: float | None = None,
                 indices: Sequence[int] | None = None, duration: float = float("inf"),
                 tie_rate: float | None = None, repeat: bool = False) -> None:
        self.every, self.fps, self.duration = max(1, int(every)), fps, duration
        self.tie_rate, self.repeat = tie_rate, repeat
        self.indices = None if indices is None else set(int(i) for i in indices)
        self._k = 0
        self._prev: list | None = None  # [number, time, item, times chosen]

    def _target(self) -> float | None:
        t = self._k / self.fps
        return t if t < self.duration - 1e-9 else None

    def _emit(self, frame: list) -> list[tuple[int, object]]:
        count = frame[3] if self.repeat else min(frame[3], 1)
        return [(frame[0], frame[2])] * count

    def feed(self, number: int, time: float, item: object = None) -> list[tuple[int, object]]:
        """Offer frame ``number`` at ``time`` (seconds); returns the decided kept frames."""
        if self.fps is None:
            keep = (number in self.indices) if self.indices is not None else (
                number % self.every == 0)
            return [(number, item)] if keep else []
        cur = [number, time, item, 0]
        prev = self._prev
        while (target := self._target()) is not None and target <= time + 1e-9:
            choose_prev = False
            if prev is not None:
                d_prev, d_cur = target - prev[1], time - target
                if abs(d_prev - d_cur) <= 1e-9:
                    choose_prev = self._tie(prev[0], number)
                else:
                    choose_prev = d_prev < d_cur
            (prev if choose_prev else cur)[3] += 1
            self._k += 1
        self._prev = cur
        return self._emit(prev) if prev is not None else []

    def _tie(self, prev: int, cur: int) -> bool:
        """Whether a time exactly between frames ``prev`` and ``cur`` takes ``prev``."""
        if self.tie_rate:
            # Constant rate: round k/F * rate as vcorr always did (numpy's rint of the same
            # float64 product), so the frames stored before time-based selection stay.
            r = int(np.rint((self._k * (1.0 / self.fps)) * self.tie_rate))
            if r in (prev, cur):
                return r == prev
        return prev % 2 == 0  # the even frame number, as rint rounds halves

    def finish(self) -> list[tuple[int, object]]:
        """The last frame, for the times after it (it is the nearest to each)."""
        if self.fps is None or self._prev is None:
            return []
        last, self._prev = self._prev, None
        while self._target() is not None:
            last[3] += 1
            self._k += 1
        return self._emit(last)


def stored_fps(source_fps: float, every: int = 1, fps: float | None = None,
               constant_rate: bool = True) -> float:
    """Frame rate of the frames kept from a video at ``source_fps`` (frames per second):
    ``fps``, except at or above a constant source rate (every frame is kept once, at the
    source rate); without ``fps``, the source rate divided by ``every`` (for a variable-rate
    video an average: ``every`` goes by frame number)."""
    if fps is not None:
        return float(min(fps, source_fps)) if source_fps > 0 and constant_rate else float(fps)
    return source_fps / max(1, every)


# --------------------------------------------------------------------------- decoding
@dataclass
class DecodeReport:
    """What decoding one video did. ``frames_expected`` is the larger of the frames the
    header announces and the frames the container holds."""

    decoder: str = ""
    frames_expected: int = 0
    frames_decoded: int = 0
    frames_corrupt: int = 0  # decoded with errors (error-concealed, marked corrupt)
    # decoded after a damaged frame (decode order), before the next key frame: count_damage
    frames_after_damage: int = 0
    # timestamps not after the previous frame's beyond the reorder window (or repeated):
    # kept, timed 1/rate after it; said in the log, not a problem
    frames_retimed: int = 0
    packets_rejected: int = 0
    stream_end: float = 0.0  # seconds: end of the last decoded frame
    expected_end: float | None = None
    log: list[str] = field(default_factory=list)

    def problem(self) -> str | None:
        """One line on what went wrong (None for a clean decode), e.g. ``decoded 57 of 100
        frames; stream ends at 2.28 s``."""
        parts = []
        missing = self.frames_expected - self.frames_decoded
        if missing > 0:
            parts.append(f"decoded {self.frames_decoded} of {self.frames_expected} frames")
        if self.frames_corrupt:
            parts.append(f"{_count(self.frames_corrupt, 'frame')} decoded with errors")
        if self.frames_after_damage:
            parts.append(f"{_count(self.frames_after_damage, 'frame')} predicted from damaged "
                         "frames (up to the next key frame)")
        if self.packets_rejected and not missing:
            parts.append(f"{_count(self.packets_rejected, 'packet')} rejected by the decoder")
        if missing > 0 and self.expected_end and self.stream_end < self.expected_end - 0.05:
            parts.append(f"stream ends at {self.stream_end:.2f} s of {self.expected_end:.2f} s")
        return "; ".join(parts) or None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@dataclass
class FrameChunk:
    """Consecutive kept frames: uint8 (N, H, W, 3) RGB in display orientation, each frame's
    number (presentation order) and time (seconds from the first frame); for frame folders
    also each frame's image file (whose bytes a caller may keep as they are)."""

    frames: np.ndarray
    numbers: list[int]
    times: list[float]
    files: list[Path] | None = None


class VideoReader:
    """Decodes selected frames of one video file or frame folder (see the module docstring).

    >>> reader = VideoReader("phone.mp4")
    >>> report = reader.decode(lambda chunk: ..., fps=12)  # chunk.frames: (N, H, W, 3) uint8
    >>> report.problem()  # None, or what went wrong

    Raises:
        VideoError: from :func:`probe`, or when no frame decodes.
    """

    def __init__(self, path: str | Path, folder_fps: float = 12.0,
                 force_pyav: bool = False) -> None:
        self.path = Path(path)
        self.info = probe(self.path, folder_fps)
        self.force_pyav = force_pyav
        self.report: DecodeReport | None = None  # of the last read()

    @property
    def decord_ok(self) -> bool:
        """Whether decord is known to decode this file right (see the module docstring)."""
        info = self.info
        return not (self.force_pyav or info.frame_folder or info.orientation.hflip
                    or info.variable_rate or info.header_frames == 0
                    or info.header_duration is None
                    or info.height * info.width > DECORD_MAX_PIXELS)

    def decode(self, on_chunk: Callable[[FrameChunk], None], every: int = 1,
               fps: float | None = None, indices: Sequence[int] | None = None,
               size: tuple[int, int] | None = None) -> DecodeReport:
        """Hand the kept frames to ``on_chunk`` in chunks of at most ``CHUNK_BYTES`` of
        frames (and ``CHUNK_FRAMES``), in presentation order; return what decoding did.

        Exactly one selection applies: ``indices`` (frame numbers), ``fps`` (frames per
        second, by time) or ``every`` (every N-th frame). ``size`` (height, width of the
        display frame, pixels) scales in the decoder: fast, with the decoder's bilinear
        scaler, not the antialiased resize ``vcorr prepare`` stores. Decoder output is captured
        into the report's ``log`` for the whole call, so ``on_chunk`` should not print.

        Raises:
            VideoError: no frame could be decoded.
        """
        info = self.info
        rep = DecodeReport(frames_expected=max(info.header_frames, info.num_frames),
                           expected_end=max(info.duration, info.header_duration or 0),
                           log=list(info.log))

        def selector() -> FrameSelector:
            return info.selector(every, fps, indices)

        with capture_decoder_output() as log:
            if info.frame_folder:
                self._decode_images(selector(), on_chunk, rep, size)
            else:
                handed = 0
                # decord's scaler runs before its rotation: scaled output only when upright.
                if self.decord_ok and (size is None or self.info.orientation.identity):
                    handed = self._decode_decord(selector(), on_chunk, rep, log, size)
                if rep.decoder != "decord":
                    # PyAV from the start; the kept frames decord already handed out (the same
                    # selection over the same clean frames) are not handed out again.
                    skip = [handed]

                    def rest(chunk: FrameChunk) -> None:
                        n = min(skip[0], len(chunk.numbers))
                        skip[0] -= n
                        if n == 0:
                            on_chunk(chunk)
                        elif n < len(chunk.numbers):
                            on_chunk(FrameChunk(chunk.frames[n:], chunk.numbers[n:],
                                                chunk.times[n:]))

                    self._decode_pyav(selector(), rest, rep, log, size)
        rep.log.extend(log)
        if rep.frames_decoded == 0:
            detail = rep.log[-1] if rep.log else "the decoder returned no frame"
            raise VideoError(NO_FRAME, detail)
        return rep

    def read(self, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
        """The frames at ``indices`` (frame numbers; repeats and any order allowed), scaled
        in the decoder to ``size`` (height, width) if given (see :meth:`decode`).

        Shape: uint8 (len(indices), H, W, 3), display orientation.

        Raises:
            VideoError: no frame decodes, or a requested frame does not.
        """
        uniq = sorted(set(int(i) for i in indices))
        got: dict[int, np.ndarray] = {}

        def keep(chunk: FrameChunk) -> None:
            got.update(zip(chunk.numbers, chunk.frames))

        report = self.report = self.decode(keep, indices=uniq, size=size)
        missing = [i for i in uniq if i not in got]
        if missing:
            raise VideoError(NO_FRAME, f"frame {missing[0]} of {self.info.num_frames} did not "
                                       f"decode ({report.problem() or 'out of range'})")
        if not uniq:
            return np.zeros((0, *(size or (self.info.height, self.info.width)), 3), np.uint8)
        return np.stack([got[int(i)] for i in indices])

    # -- decoders
    def _chunk_limit(self, size: tuple[int, int] | None = None) -> int:
        h, w = size or (self.info.height, self.info.width)
        frame_bytes = h * w * 3
        return max(1, min(CHUNK_FRAMES, CHUNK_BYTES // max(1, frame_bytes)))

    def _decode_images(self, sel: FrameSelector, on_chunk: Callable[[FrameChunk], None],
                       rep: DecodeReport, size: tuple[int, int] | None) -> None:
        info = self.info
        rep.decoder = "images"
        out = _Chunker(self._chunk_limit(size), on_chunk)
        decided = [d for i, t in enumerate(info.times) for d in sel.feed(i, float(t), i)]
        for n, i in decided + sel.finish():
            frame = self._decode_image(info.files[i], rep, size)
            if frame is not None:
                out.add(n, float(info.times[n]), frame, info.files[i])
        out.flush()
        # Only kept frames are decoded: the others count as decoded.
        rep.frames_decoded = info.num_frames - rep.packets_rejected
        rep.stream_end = info.duration

    def _decode_image(self, path: Path, rep: DecodeReport,
                      size: tuple[int, int] | None = None) -> np.ndarray | None:
        from torchvision.io import ImageReadMode, decode_image, read_file
        from torchvision.transforms.v2 import functional as TF

        try:
            img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except Exception as exc:
            rep.packets_rejected += 1
            rep.log.append(f"{path.name}: {first_line(exc)}")
            return None
        if tuple(img.shape[1:]) != (self.info.height, self.info.width):
            rep.packets_rejected += 1
            rep.log.append(f"{path.name}: size {img.shape[2]}x{img.shape[1]} differs from "
                           f"{self.info.width}x{self.info.height}")
            return None
        if size is not None and tuple(img.shape[1:]) != tuple(size):
            img = TF.resize(img, list(size), antialias=False)
        return img.permute(1, 2, 0).numpy()

    def _decode_decord(self, sel: FrameSelector, on_chunk: Callable[[FrameChunk], None],
                       rep: DecodeReport, log: _Log, size: tuple[int, int] | None) -> int:
        """Decode with decord; returns how many kept frames it handed out. Sets
        ``rep.decoder = "decord"`` only if decord did the whole video cleanly."""
        import decord
        from torch.utils.dlpack import from_dlpack

        info = self.info
        # decord shows no frame's corrupt flag, and FFmpeg's error concealment says what it
        # hides only at INFO level ("concealing N DC, N AC, N MV errors"), with no error
        # before it when the damaged data happens to parse: at decord's default (ERROR) such
        # damage would pass unseen. Any message sends the video to PyAV, which counts; so
        # does a process whose stderr cannot be captured (decord's messages unseen).
        if not log.sees_stderr:
            return 0
        decord.logging.set_level(decord.logging.INFO)
        try:
            scale = {} if size is None else {"height": size[0], "width": size[1]}
            vr = decord.VideoReader(str(self.path), num_threads=1, **scale)
        except Exception as exc:
            log.append(f"decord: {first_line(exc)}")
            return 0
        if len(vr) != info.num_frames or log.peek():
            return 0
        keep = [n for i, t in enumerate(info.times) for n, _ in sel.feed(i, float(t))]
        keep += [n for n, _ in sel.finish()]
        limit, handed = self._chunk_limit(size), 0
        shape = size or (info.height, info.width)
        for start in range(0, len(keep), limit):
            idx = keep[start:start + limit]
            try:
                # Zero-copy through DLPack: asnumpy() would copy every frame once more (5% of
                # prepare's time on 480x360 H.264).
                frames = from_dlpack(vr.get_batch(idx).to_dlpack()).numpy()
            except Exception as exc:  # e.g. widths decord 0.6 cannot convert (24, 48, ...)
                log.append(f"decord: {first_line(exc)}")
                return handed
            # FFmpeg complained while decoding (decord conceals damage silently), or the
            # frames are not what the container describes: PyAV takes over.
            if log.peek() or frames.shape != (len(idx), *shape, 3):
                return handed
            on_chunk(FrameChunk(frames, idx, [float(info.times[i]) for i in idx]))
            handed += len(idx)
        rep.decoder = "decord"
        rep.frames_decoded = info.num_frames
        rep.stream_end = info.duration
        return handed

    def _decode_pyav(self, sel: FrameSelector, on_chunk: Callable[[FrameChunk], None],
                     rep: DecodeReport, log: _Log, size: tuple[int, int] | None) -> None:
        av = _av()
        info = self.info
        rep.decoder = "pyav"
        out = _Chunker(self._chunk_limit(size), on_chunk)
        orient = info.orientation
        times: dict[int, float] = {}
        scale = {}
        if size is not None:  # the scaler sees coded frames: swap for quarter turns
            h, w = size[::-1] if orient.swaps_axes else size
            scale = {"height": h, "width": w, "interpolation": "BILINEAR"}

        def convert(decided: list[tuple[int, object]]) -> None:
            done: dict[int, np.ndarray] = {}  # a frame kept for several times: converted once
            for n, frame in decided:  # only kept frames are converted to RGB
                if n not in done:
                    done[n] = orient.apply(frame.to_ndarray(format="rgb24", **scale))
                out.add(n, times[n], done[n])
            for n in [n for n in times if n < number - 1]:
                del times[n]

        with av.open(str(self.path)) as container:
            stream = video_stream(container)
            stream.codec_context.thread_count = 1  # parallelism comes from prepare's workers
            # Each frame carries its packet's decode position (frame.opaque): damage spreads
            # in decode order, which B-frames leave (see count_damage).
            stream.codec_context.copy_opaque = True
            tb = float(stream.time_base) if stream.time_base else 0.0
            spacing = 1.0 / info.fps if info.fps > 0 else 0.04
            t0, number, last_time = info.start_pts, 0, None
            position = -1  # decode position of the last packet sent
            shown: list[DecodedFrame] = []
            rejected: list[int] = []
            # The decoder outputs frames in presentation order; their timestamps may not be
            # (see _Retimer): a frame is timed once REORDER_WINDOW more frames are out.
            retimer = _Retimer(min(REORDER_WINDOW, self._chunk_limit()))

            def take(frame, stamp: int | None) -> None:
                nonlocal t0, number, last_time
                if stamp is not None and tb > 0:
                    t0 = stamp if t0 is None else t0
                    time = (stamp - t0) * tb
                    if info.nominal_rate:  # on the rate's grid, as probe put it
                        time = round(time * info.nominal_rate) / info.nominal_rate
                else:
                    time = number * spacing
                if last_time is not None and time <= last_time + 1e-9:
                    # beyond the window (or a repeated timestamp): still the next frame shown
                    rep.frames_retimed += 1
                    time = last_time + spacing
                # a decoder that does not pass opaque on: the latest packet's position,
                # an upper bound (counts the frame as damaged rather than clean)
                at = frame.opaque if isinstance(frame.opaque, int) else position
                shown.append(DecodedFrame(at, number, frame.is_corrupt, frame.key_frame))
                last_time = times[number] = time
                number += 1
                convert(sel.feed(number - 1, time, frame))

            for packet in _packets(container, stream, log):
                if packet is not None:
                    position += 1
                    packet.opaque = position
                try:
                    frames = stream.decode(packet)
                except av.error.FFmpegError as exc:
                    rep.packets_rejected += 1
                    rejected.append(position)
                    log.append(f"decoder: {_ffmpeg_message(exc)}")
                    continue
                for frame in frames:
                    for done in retimer.add(frame):
                        take(*done)
            for done in retimer.finish():
                take(*done)
            convert(sel.finish())
            out.flush()
        rep.frames_corrupt, rep.frames_after_damage = count_damage(shown, rejected)
        rep.frames_decoded = number
        if rep.frames_retimed:  # times approximate (in-window reordering is exact)
            log.append(f"timestamps: {_count(rep.frames_retimed, 'frame')} not after the frame "
                       f"shown before (out of order beyond the {retimer.window}-frame window, "
                       "or repeated): timed 1/rate after it")
        if last_time is not None:
            rep.stream_end = last_time + (info.duration - float(info.times[-1]))


class _Retimer:
    """Gives the decoder's output frames presentation timestamps in presentation order.

    A decoder outputs frames in presentation order, each with the timestamp of the packet it
    came from. Where packets carry decode-order timestamps (AVI has no presentation times:
    FFmpeg stamps its B-frames' packets in decode order, and DivX-style packed B-frames are
    stamped one chunk off), those come out of order (1, 2, 4, 3, 6, 5, ...) though the frames
    do not. Each frame is held until ``window`` later frames are out, then gets the smallest
    timestamp among the frames held: the sorted timestamps, in output order, wherever no
    frame's timestamp lies more than ``window`` frames from its place. In-order timestamps
    (MP4, WebM, ..., B-frames or not, constant or variable rate) are unchanged.
    """

    def __init__(self, window: int) -> None:
        self.window = max(0, window)
        self.held: deque = deque()
        self.stamps: list[int] = []  # a heap: the held frames' timestamps

    def add(self, frame) -> list[tuple[object, int | None]]:
        """Take the decoder's next output frame; returns the frames timed now, as
        ``(frame, timestamp or None)``."""
        if frame.pts is not None:
            heapq.heappush(self.stamps, frame.pts)
        self.held.append(frame)
        return [self._pop() for _ in range(len(self.held) - self.window)]

    def finish(self) -> list[tuple[object, int | None]]:
        """The frames still held, timed."""
        return [self._pop() for _ in range(len(self.held))]

    def _pop(self) -> tuple[object, int | None]:
        frame = self.held.popleft()
        return frame, (heapq.heappop(self.stamps) if frame.pts is not None else None)


@dataclass(frozen=True)
class DecodedFrame:
    """One frame the decoder output: its packet's position in decode order, its number in
    presentation order, whether the decoder marked it corrupt (error-concealed), whether it
    is a key frame."""

    position: int
    number: int
    corrupt: bool
    key: bool


def count_damage(frames: Sequence[DecodedFrame], rejected: Sequence[int] = ()) -> tuple[int, int]:
    """Frames decoded with errors, and frames damaged through prediction from them.

    The decoder marks only the frame whose data is damaged (or none, for a packet it rejects:
    ``rejected`` holds those packets' decode positions), but every frame decoded after it may
    predict from it, directly or through other frames, up to the next key frame: in decode
    order, so B-frames shown *before* a damaged reference frame but decoded after it count.
    After a key frame, only frames shown before it (an open GOP's leading B-frames, which
    may predict from the previous GOP) still count, up to the key frame after it. Frames
    decoded before the damage never depend on it. This is an upper bound: a damaged frame
    that no frame predicts from (a non-reference B-frame) is counted as if one did.

    Returns:
        (frames marked corrupt, other frames decoded after damage before the next key frame)
    """
    events = sorted([(f.position, 1, f) for f in frames] + [(p, 0, None) for p in rejected],
                    key=lambda e: (e[0], e[1]))
    corrupt = after = 0
    damaged = False
    clean_from: int | None = None  # number of the first key frame decoded after the damage
    for _, _, f in events:
        if f is None or f.corrupt:
            corrupt += f is not None
            damaged, clean_from = True, None
        elif f.key:
            if damaged and clean_from is not None:
                damaged = False  # the second key frame: even leading frames predict from clean ones
            elif damaged:
                clean_from = f.number
        elif damaged and (clean_from is None or f.number < clean_from):
            after += 1
    return corrupt, after


def _packets(container, stream, log: list[str]) -> Iterator:
    """The stream's packets with data, then None (flushes the decoder); a container that
    breaks off (truncated, damaged) ends the stream with a log line instead of an error."""
    av = _av()
    try:
        for packet in container.demux(stream):
            # Pre-roll packets (edit lists) are decoded too: later frames refer to them; the
            # decoder drops their frames itself.
            if packet.size:
                yield packet
    except av.error.FFmpegError as exc:
        log.append(f"demuxer: {_ffmpeg_message(exc)}")
    yield None


class _Chunker:
    """Collects kept frames and hands them on in chunks of at most ``limit`` frames."""

    def __init__(self, limit: int, on_chunk: Callable[[FrameChunk], None]) -> None:
        self.limit, self.on_chunk = limit, on_chunk
        self.buf: list[tuple[int, float, np.ndarray, Path | None]] = []

    def add(self, number: int, time: float, frame: np.ndarray, file: Path | None = None) -> None:
        self.buf.append((number, time, frame, file))
        if len(self.buf) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            buf, self.buf = self.buf, []
            files = [b[3] for b in buf]
            self.on_chunk(FrameChunk(np.stack([b[2] for b in buf]), [b[0] for b in buf],
                                     [b[1] for b in buf], None if None in files else files))


# --------------------------------------------------------------------------- quiet decoding
# FFmpeg messages that say nothing about a video's data, which decord's FFmpeg prints for
# clean files at INFO level: swscale on the JPEG-range pixel formats of full-range video
# (yuvj420p: phones, MJPEG), and the MPEG-4 parser on an AVI's extradata (the decoder reads
# it itself). They are not kept and do not send a video to PyAV.
_HARMLESS = re.compile(r"deprecated pixel format used|Failed to parse extradata")


def _kept(line: str) -> bool:
    return bool(line.strip()) and not _HARMLESS.search(line)


class _Log(list):
    """Decoder messages of one video (a list of lines) that also sees native stderr."""

    def __init__(self, tmp) -> None:
        super().__init__()
        self._tmp = tmp

    @property
    def sees_stderr(self) -> bool:
        """Whether native code's messages (decord's FFmpeg) are captured."""
        return self._tmp is not None

    def peek(self) -> bool:
        """Whether anything was said so far (Python log records or native stderr), harmless
        messages aside."""
        if len(self):
            return True
        if self._tmp is None:
            return False
        fd = self._tmp.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")
        return any(_kept(line) for line in text.splitlines())


class _Handler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.sink: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.sink is not None and _kept(record.getMessage()):
            self.sink.append(f"[{record.name.removeprefix('libav.')}] {record.getMessage()}")


_HANDLER = _Handler()


@contextmanager
def capture_decoder_output() -> Iterator[_Log]:
    """Collect FFmpeg's messages (PyAV's log records and anything native code writes to
    stderr, e.g. decord's bundled FFmpeg) into a list instead of the terminal."""
    _install_pyav_logging()
    tmp = saved = None
    try:
        sys.stderr.flush()
        tmp = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except (OSError, ValueError):  # no usable stderr (closed, or not a file descriptor)
        if tmp is not None:
            tmp.close()
        tmp = saved = None
    log = _Log(tmp)
    _HANDLER.sink = log
    try:
        yield log
    finally:
        _HANDLER.sink = None
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if tmp is not None:
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            tmp.close()
            log.extend(line for line in text.splitlines() if _kept(line))


_PYAV_LOGGING = False


def _install_pyav_logging() -> None:
    """Route FFmpeg's messages (warnings and worse) through Python logging to our handler,
    and never to the terminal."""
    global _PYAV_LOGGING
    if _PYAV_LOGGING:
        return
    av = _av()
    av.logging.set_level(av.logging.WARNING)
    logger = logging.getLogger("libav")
    logger.addHandler(_HANDLER)
    logger.propagate = False
    _PYAV_LOGGING = True


def _av():
    import av
    import av.logging  # noqa: F401  (the submodule is not imported by ``import av``)

    return av


def _ffmpeg_message(exc: BaseException) -> str:
    """FFmpeg's own words for an error, without the errno and the file name."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else first_line(exc)


# decord prefixes its messages with the time and its source file ("[20:28:41] /github/.../
# video_reader.cc:486: Error: ..."): dropped, so that reasons are the same on every run.
_DECORD_PREFIX = re.compile(r"^(\[\d{2}:\d{2}:\d{2}\] \S+:\d+: )+")


def first_line(exc: BaseException) -> str:
    """The first line of an error message, without decord's clock and source prefix."""
    text = str(exc).strip().splitlines()
    return _DECORD_PREFIX.sub("", text[0] if text else type(exc).__name__)[:200]
