"""The motion benchmark's dataset: "Something-Something in miniature", shortcut-free by design.

``vcorr toy OUT --kind motion`` writes H.264 videos (default 3200 videos of 2 s at 25 fps,
128x128) of procedural scenes: a textured background seen by a slowly panning, zooming and
shaking camera, one textured target object, 1-2 small distractor objects moving at random,
brightness drift, vignetting, sensor noise and the codec's own artefacts. The label is what
the target does (:data:`MOTION_CLASSES`), or for the two control classes what it is.

**Time reversal is the only cue within a pair.** The classes come in pairs
(:data:`REVERSAL_PAIRS`): a video of a pair's second class is the exact time reversal of a
fresh sample of the first class's process; the whole video is reversed (background, camera,
distractors, brightness, noise). Every single frame therefore has the same distribution in
both classes, and a frame-by-frame model that averages over time (C2D) is at 50% within every
pair whatever it learns; only a model that relates frames in order can tell the two apart.
The nuisance processes (camera pan and zoom, distractor velocities, brightness drift, when a
fast burst or a cover happens) are themselves symmetric in time, so a reversed video is not
told apart by them either: the target's motion is the only thing that differs.

**The encoder adds no position cue.** In an ordinary H.264 stream the key frame is sharper
than the frames predicted from it, which would mark a video's first frame (the covered target
of "uncover", the visible one of "cover"). Every frame here is a key frame (``-g 1``) coded
with a constant quantizer (``-qp``, no rate control, so no adaptive quantization) by one
encoder thread, in yuv420p: each decoded frame is a function of its own pixels only, so the
encoded second class is still exactly the reversed encoded first class (tested).

**Classes** (7 pairs and 2 controls, 16 in all, in ``classes.txt`` order):

- ``left_slow``/``right_slow``, ``up_slow``/``down_slow``: 1-3 px per frame during the whole
  video (42-126 px over 42 frames), on a path centred in the view (at 3 px per frame the
  target leaves it in part in the first and last few frames).
- ``left_fast``/``right_fast``, ``up_fast``/``down_fast``: the target rests, makes one fast
  move of 8-16 px per frame over 30-50% of the frame width (3-8 frames), and rests again:
  long-range motion, with the target in view before and after. The move falls within frames
  20-80% of the video, so a clip that covers the video always holds it.
- ``approach``/``recede``: the target grows (shrinks) 2-3.5 times in size.
- ``rotate_cw``/``rotate_ccw``: it turns 3-6 degrees per frame clockwise (counter-clockwise,
  as seen on screen); its texture and shading have no rotational symmetry.
- ``cover``/``uncover``: an opaque panel slides in from one side and stops over the resting
  target (it slides off the target and out).
- ``control_ring``, ``control_crescent``: the target is a ring painted in a black and white
  checker (a crescent in black and white stripes), doing any of the motions above; its look,
  not its motion, decides the class (the motion classes' targets are coloured discs, squares,
  triangles, stars and plus signs), so a frame-by-frame model is as good as any on them. The
  look is deliberately plain: with the controls told apart by shape alone (coloured like the
  others), C2D ResNet-10 had 0-20% on them after 300 steps (measured; README).

Distances are at 128 px and scale with ``size``; speeds are per frame of the written video.

**Sizes.** The target is large (radius 22-30 px at 128 px, 16-20 growing 2-3.5x for
``approach``, 24-32 rotating) and the clutter light (0-2 background shapes, 1-2 distractors of
radius 3-7): the benchmark trains CPU-size models for minutes, and with the target at
radius 11-16 among 3-7 shapes and 2-4 distractors, C2D had not learned even the controls
after 7 epochs, nor R(2+1)D any pair (measured; README "Does it learn motion?").

**Splits.** ``train``/``val``/``test`` = 50/10/40%, every class within one video of equal in
each split; the default 3200 videos give 200 per class (100/20/80), i.e. 160 test videos per
pair, enough to tell a per-pair accuracy from 50% (binomial 95% interval about +-8%).

**Recommended use.** Prepare at 64 px keeping every second frame (25 frames at 12.5 fps)::

    vcorr prepare --format list --annotations OUT/annotations.csv --labels OUT/classes.txt \\
        --root OUT --out data/motion64 --short-side 64 --every 2

and train on dense clips of 8 frames at interval 3 (``DenseSampler(8, 3)``: 22 of the 25
stored frames, 1.7 of the 2 s, the fast move always inside) without horizontal flips
(``flip="off"``: a flip turns ``left`` into ``right`` and ``rotate_cw`` into ``rotate_ccw``).
Per sampled frame of such a clip (6 original frames apart) at 64 px the target moves 3-9 px
in the slow classes; in the fast classes it covers its 19-32 px (the 38-64 px move at 128 px)
within one to three sampled frames (24-48 px per sampled frame while it moves); it turns
18-36 degrees in the rotation classes; the camera adds about 1 px at most.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic

REVERSAL_PAIRS: list[tuple[str, str]] = [
    ("left_slow", "right_slow"), ("up_slow", "down_slow"),
    ("left_fast", "right_fast"), ("up_fast", "down_fast"),
    ("approach", "recede"), ("rotate_cw", "rotate_ccw"), ("cover", "uncover"),
]
CONTROL_CLASSES: tuple[str, ...] = ("control_ring", "control_crescent")
MOTION_CLASSES: tuple[str, ...] = tuple(c for pair in REVERSAL_PAIRS for c in pair) \
    + CONTROL_CLASSES
# Shapes of the motion classes' targets; each control class has its own shape instead.
TARGET_KINDS: tuple[str, ...] = ("disc", "square", "triangle", "star", "plus")
CONTROL_KINDS: dict[str, str] = {"control_ring": "ring", "control_crescent": "crescent"}
# The control targets' pattern, painted black and white at 3 cycles per radius (no motion
# target is black and white: their first colour has a saturation of at least 0.5).
CONTROL_PATTERNS: dict[str, str] = {"ring": "checker", "crescent": "stripes"}
DISTRACTOR_KINDS: tuple[str, ...] = ("disc", "square", "triangle")
# The process each first class of a pair samples: (motion, (dy, dx) direction).
_PROCESS: dict[str, tuple[str, tuple[int, int]]] = {
    "left_slow": ("slow", (0, -1)), "up_slow": ("slow", (-1, 0)),
    "left_fast": ("fast", (0, -1)), "up_fast": ("fast", (-1, 0)),
    "approach": ("approach", (0, 0)), "rotate_cw": ("rotate", (0, 0)),
    "cover": ("cover", (0, 0)),
}
MIN_FRAMES = 16
# Encoder settings (see the module docstring): x264's speed/quality preset.
PRESET = "veryfast"
_VIDEOS_PER_CHUNK = 25  # videos per ffmpeg process (the unit of work of --workers)


@dataclass(frozen=True)
class MotionOptions:
    """Options of :func:`make_motion`: video count, splits, frame rate and length, frame size
    (pixels, square), the encoder's constant quantizer (H.264 QP, 0-51), seed, worker
    processes and progress display (the last two change nothing in the output)."""

    videos: int = 3200
    val_fraction: float = 0.1
    test_fraction: float = 0.4
    fps: float = 25.0
    seconds: float = 2.0
    size: int = 128
    qp: int = 26
    seed: int = 0
    workers: int = 1
    progress: bool = field(default=True, compare=False)

    @property
    def frames(self) -> int:
        """Frames per video: ``round(fps * seconds)``."""
        return round(self.fps * self.seconds)


@dataclass(frozen=True)
class VideoSpec:
    """One video to generate: index (seeds its random stream), id, class and split."""

    index: int
    id: str
    label: str
    split: str


def check_options(opt: MotionOptions) -> None:
    """Raise :class:`UserError` (one line naming the option) for options that cannot work."""
    if opt.videos < 1:
        raise UserError(f"--videos must be at least 1, got {opt.videos}")
    if not (0 <= opt.val_fraction and 0 <= opt.test_fraction
            and opt.val_fraction + opt.test_fraction < 1):
        raise UserError(f"--val-fraction ({opt.val_fraction}) and --test-fraction "
                        f"({opt.test_fraction}) must be at least 0 and leave a train split "
                        f"(sum below 1)")
    if not opt.fps > 0 or opt.frames < MIN_FRAMES:
        raise UserError(f"--fps {opt.fps} x --seconds {opt.seconds} gives {opt.frames} frames; "
                        f"the motions need at least {MIN_FRAMES}")
    if opt.size < 32 or opt.size % 2:
        raise UserError(f"--size must be even and at least 32 (yuv420p), got {opt.size}")
    if not 0 <= opt.qp <= 51:
        raise UserError(f"--qp must be an H.264 quantizer from 0 to 51, got {opt.qp}")
    if opt.workers < 1:
        raise UserError(f"--workers must be at least 1, got {opt.workers}")


def motion_plan(opt: MotionOptions) -> list[VideoSpec]:
    """Every video's id, class and split, deterministic for ``opt.seed``.

    Ids run ``motion_00000``... through train, then val, then test; within each split the
    classes are dealt in turn (counts differ by at most one) and shuffled.
    """
    check_options(opt)
    n_val = round(opt.videos * opt.val_fraction)
    n_test = round(opt.videos * opt.test_fraction)
    n_train = opt.videos - n_val - n_test
    rng = np.random.default_rng([opt.seed, 0])
    specs: list[VideoSpec] = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % len(MOTION_CLASSES))
        for lab in labels:
            i = len(specs)
            specs.append(VideoSpec(i, f"motion_{i:05d}", MOTION_CLASSES[lab], split))
    return specs


# --------------------------------------------------------------------------- scene sampling
@dataclass
class Look:
    """How an object is painted: two colours (RGB 0-255), a pattern (``stripes``,
    ``checker`` or ``flat``) of ``freq`` cycles per radius at ``tilt`` radians, and shading that
    brightens one side (direction ``light``, strength ``shade``); all fixed to the object, so
    they turn with it."""

    colours: np.ndarray
    pattern: str
    freq: float
    tilt: float
    light: float
    shade: float


@dataclass
class Track:
    """An object's path, in world coordinates (pixels of the middle frame's view): centre
    (T, 2) as (y, x), radius (T,) and clockwise angle (T,) in radians."""

    kind: str
    look: Look
    centre: np.ndarray
    radius: np.ndarray
    angle: np.ndarray


@dataclass
class Panel:
    """The cover: a half-plane whose edge, along ``axis`` (0: y, 1: x), is at ``edge`` (T,)
    world pixels and which lies on the side ``-sign`` of it (it moves towards ``+sign``)."""

    axis: int
    sign: int
    edge: np.ndarray
    colour: np.ndarray
    grain: tuple[float, float, float]  # amplitude, wavelength (px), phase of its stripes
    seam: float  # spacing (px) of the dark seams that move with the panel


@dataclass
class Scene:
    """Everything one video shows, sampled by :func:`sample_scene`; :func:`render_scene`
    draws it. Camera: frame t shows world point P at ``C + (P - C - shift[t]) / zoom[t]``
    (C the frame centre), and the background texture (2x the world's pixel density) holds
    world point P at texture pixel ``2 * (tex_centre + (P - C) * tex_scale)``."""

    size: int
    texture: np.ndarray  # (Ht, Wt) uint32, RGBA packed
    tex_centre: float
    tex_scale: float
    shift: np.ndarray  # (T, 2)
    zoom: np.ndarray  # (T,)
    target: Track
    behind: list[Track]
    in_front: list[Track]
    panel: Panel | None
    gain: np.ndarray  # (T,)
    tint: np.ndarray  # (4,) RGBx
    vignette: float
    noise: float  # grey levels (standard deviation)
    noise_seed: int


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * rng.random())


def _colour(rng: np.random.Generator, sat: tuple[float, float],
            val: tuple[float, float]) -> np.ndarray:
    """An RGBx colour (0-255, the 4th channel 0: frames are rendered as RGBx, see
    :func:`render_scene`) of random hue, saturation and value in the given ranges."""
    rgb = colorsys.hsv_to_rgb(rng.random(), _uniform(rng, *sat), _uniform(rng, *val))
    return np.array([*rgb, 0], np.float32) * 255


def _look(rng: np.random.Generator, flat: bool = False) -> Look:
    c1 = _colour(rng, (0.5, 1.0), (0.55, 1.0))
    c2 = c1 * _uniform(rng, 0.25, 0.55) if rng.random() < 0.5 else \
        _colour(rng, (0.3, 1.0), (0.3, 0.9))
    pattern = "flat" if flat else ("stripes", "checker")[int(rng.integers(2))]
    return Look(np.stack([c1, c2]), pattern, _uniform(rng, 1.2, 2.2),
                _uniform(rng, 0, np.pi), _uniform(rng, 0, 2 * np.pi), _uniform(rng, 0.2, 0.4))


def _centred(t: np.ndarray) -> np.ndarray:
    """Frame times relative to the middle of the video: a path ``m + v * _centred(t)``
    reversed in time is ``m - v * _centred(t)``, the same family (what keeps the nuisance
    motions symmetric in time)."""
    return t - (len(t) - 1) / 2


def _target(rng: np.random.Generator, motion: str, direction: tuple[int, int], kind: str,
            size: int, frames: int) -> tuple[Track, Panel | None]:
    """The target's path for the first class of a pair's ``motion`` (and the cover)."""
    k, c, n = size / 128, (size - 1) / 2, frames - 1
    tc = _centred(np.arange(frames, dtype=np.float64))
    d = np.array(direction, np.float64)
    radius = np.full(frames, _uniform(rng, 22, 30) * k)
    spin = np.deg2rad(_uniform(rng, -0.4, 0.4))  # a slight wobble, either way
    drift = rng.normal(0, 0.15 * k, 2)
    centre = c + rng.uniform(-0.25, 0.25, 2) * size
    panel = None
    if motion == "slow":
        v = _uniform(rng, 1, 3) * k
        room = max(0.0, 0.38 * size - v * n / 2)  # keep the path's middle near the centre
        along = c + _uniform(rng, -room, room)
        across = c + _uniform(rng, -0.3, 0.3) * size
        start = np.abs(d) * along + (1 - np.abs(d)) * across
        path = start + d * v * tc[:, None]
    elif motion == "fast":
        v = _uniform(rng, 8, 16) * k
        travel = min(_uniform(rng, 0.3, 0.5) * size, v * 0.6 * n)
        burst = travel / v  # frames the move takes
        mid = _uniform(rng, 0.2 * n + burst / 2, 0.8 * n - burst / 2)
        room = max(0.0, size / 2 - radius[0] - 3 * k - travel / 2)
        along = c + _uniform(rng, -room, room)
        across = c + _uniform(rng, -0.25, 0.25) * size  # the whole target stays in view
        start = np.abs(d) * along + (1 - np.abs(d)) * across
        t = np.arange(frames, dtype=np.float64)
        path = start + d * v * np.clip(t - mid, -burst / 2, burst / 2)[:, None]
    elif motion == "approach":
        radius = _uniform(rng, 16, 20) * k * np.exp(np.log(_uniform(rng, 2, 3.5)) / n * tc)
        path = centre + drift * tc[:, None]
    elif motion == "rotate":
        radius = np.full(frames, _uniform(rng, 24, 32) * k)
        spin = np.deg2rad(_uniform(rng, 3, 6))
        path = centre + drift * tc[:, None]
    elif motion == "cover":
        path = np.repeat(centre[None], frames, 0)  # at rest, so the panel's stop covers it
        axis, sign = int(rng.integers(2)), int(rng.choice([-1, 1]))
        speed = _uniform(rng, 3, 6) * k
        stop = _uniform(rng, 0.35, 0.65) * n
        edge_stop = centre[axis] + sign * (radius[0] + _uniform(rng, 2, 8) * k)
        edge = edge_stop - sign * speed * np.maximum(0.0, stop - np.arange(frames))
        panel = Panel(axis, sign, edge, _colour(rng, (0.1, 0.7), (0.3, 0.95)),
                      (_uniform(rng, 0.03, 0.12), _uniform(rng, 3, 9) * k,
                       _uniform(rng, 0, 2 * np.pi)), _uniform(rng, 14, 30) * k)
    else:  # pragma: no cover - the table above names every motion
        raise ValueError(motion)
    angle = rng.uniform(0, 2 * np.pi) + spin * tc
    look = _look(rng)
    if kind in CONTROL_PATTERNS:  # the controls' own look: black and white, fine (see above)
        look = Look(np.array([[235, 235, 235, 0], [20, 20, 20, 0]], np.float32),
                    CONTROL_PATTERNS[kind], 3.0, look.tilt, look.light, look.shade)
    return Track(kind, look, path, radius, angle), panel


def _distractor(rng: np.random.Generator, size: int, frames: int) -> Track:
    """A small plain object gliding across at up to 3 px per frame, turning either way."""
    k = size / 128
    tc = _centred(np.arange(frames, dtype=np.float64))
    v = _uniform(rng, 0, 3) * k
    heading = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform(-0.05, 1.05, 2) * size + v * np.array(
        [np.sin(heading), np.cos(heading)]) * tc[:, None]
    angle = rng.uniform(0, 2 * np.pi) + np.deg2rad(_uniform(rng, -4, 4)) * tc
    kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
    return Track(kind, _look(rng, flat=True), centre, np.full(frames, _uniform(rng, 3, 7) * k),
                 angle)


def _upsample(grid: np.ndarray, n: int) -> np.ndarray:
    """(n, n) float32 bilinear interpolation of a (g, g) grid spread over n x n pixels
    (elementwise, no BLAS: its threads would fight over the cores)."""
    g = grid.shape[0]
    pos = np.linspace(0, g - 1, n, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), g - 2)
    w = pos - lo
    rows = grid[lo] * (1 - w)[:, None] + grid[lo + 1] * w[:, None]  # (n, g)
    return rows[:, lo] * (1 - w) + rows[:, lo + 1] * w


def _value_noise(rng: np.random.Generator, n: int, grids: tuple[int, ...]) -> np.ndarray:
    """(n, n) float32 fractal value noise in [0, 1]: random grids of each size, smoothly
    upsampled, coarse ones weighted more."""
    out = np.zeros((n, n), np.float32)
    for g in grids:
        out += _upsample(rng.random((g, g), np.float32), n) / np.float32(g ** 0.7)
    out -= out.min()
    return out / max(float(out.max()), 1e-9)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """A procedural background of n x n world pixels, returned at 2x density as packed RGBx
    (2n-1, 2n-1) uint32: two-colour fractal noise, maybe a grating (wallpaper, boards), and a
    few soft-edged shaded rectangles and ellipses (furniture, clutter) in muted colours."""
    a, b = _colour(rng, (0.05, 0.5), (0.35, 0.85)), _colour(rng, (0.05, 0.6), (0.2, 0.9))
    mix = _value_noise(rng, n, (3, 6, 12))[..., None]
    detail = _value_noise(rng, n, (16, 32, 64))[..., None]
    img = (a + (b - a) * mix) * (0.8 + 0.4 * detail)
    if rng.random() < 0.5:
        th, wl = rng.uniform(0, np.pi), _uniform(rng, 6, 24)
        y, x = np.ogrid[0:n, 0:n]
        img *= (1 + _uniform(rng, 0.05, 0.2) * np.sin(
            2 * np.pi * (x * np.cos(th) + y * np.sin(th)) / wl))[..., None].astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.uniform(0, n, 2)
        hy, hx = rng.uniform(0.03, 0.15, 2) * n
        y0, y1 = max(0, int(cy - hy) - 2), min(n, int(cy + hy) + 3)
        x0, x1 = max(0, int(cx - hx) - 2), min(n, int(cx + hx) + 3)
        if y0 >= y1 or x0 >= x1:
            continue
        y, x = np.ogrid[y0:y1, x0:x1]
        if rng.random() < 0.5:
            dist = np.maximum(np.abs(y - cy) - hy, np.abs(x - cx) - hx)
        else:
            dist = (np.hypot((y - cy) / hy, (x - cx) / hx) - 1) * min(hy, hx)
        alpha = np.clip(0.5 - dist / _uniform(rng, 1, 3), 0, 1)[..., None]
        th = rng.uniform(0, 2 * np.pi)
        shade = 1 + 0.25 * ((x - cx) * np.cos(th) + (y - cy) * np.sin(th))[..., None] \
            / max(hy, hx)
        colour = (a, b)[int(rng.integers(2))] * rng.uniform(0.6, 1.4, 4).astype(np.float32)
        patch = img[y0:y1, x0:x1]
        patch += (alpha * (colour * shade - patch)).astype(np.float32)
    np.clip(img, 0, 255, out=img)
    # 2x by linear interpolation, so nearest-pixel look-ups move in half-pixel steps
    up = np.empty((2 * n - 1, n, 4), np.float32)
    up[0::2], up[1::2] = img, (img[:-1] + img[1:]) / 2
    out = np.empty((2 * n - 1, 2 * n - 1, 4), np.uint8)
    out[:, 0::2] = np.rint(up)
    out[:, 1::2] = np.rint((up[:, :-1] + up[:, 1:]) / 2)
    return out.view(np.uint32)[..., 0]


def sample_scene(rng: np.random.Generator, process: str, kind: str, size: int,
                 frames: int) -> Scene:
    """A random scene in which the target (shape ``kind``) does the motion of ``process``, the
    first class of a pair (e.g. ``"left_slow"``). Distances scale with ``size``/128."""
    motion, direction = _PROCESS[process]
    k, c, n = size / 128, (size - 1) / 2, frames - 1
    tc = _centred(np.arange(frames, dtype=np.float64))
    target, panel = _target(rng, motion, direction, kind, size, frames)
    others = [_distractor(rng, size, frames) for _ in range(int(rng.integers(1, 3)))]
    front = rng.random(len(others)) < 0.3
    # camera: a slow pan, a slow zoom and a smooth shake, all symmetric in time
    heading = rng.uniform(0, 2 * np.pi)
    pan = _uniform(rng, 0, 0.3) * k * np.array([np.sin(heading), np.cos(heading)])
    zoom = np.exp(_uniform(rng, -0.1, 0.1) / n * tc)
    kernel = np.array([1.0, 2, 3, 2, 1])
    shake = np.stack([np.convolve(rng.normal(0, 1, frames + 4), kernel, "valid")
                      for _ in range(2)], 1) * (_uniform(rng, 0, 0.5) * k / np.linalg.norm(kernel))
    shift = pan * tc[:, None] + shake
    tex_scale = _uniform(rng, 0.85, 1.1)
    reach = c * zoom.max() + np.abs(shift).max() + 2  # world pixels from the centre
    n_tex = math.ceil(2 * reach * tex_scale) + 4
    texture = _background(rng, n_tex)
    gain = _uniform(rng, 0.8, 1.15) * np.exp(_uniform(rng, -0.15, 0.15) / n * tc) \
        * (1 + 0.01 * rng.standard_normal(frames))
    tint = np.append(rng.uniform(0.9, 1.1, 3), 0)
    return Scene(size, texture, (n_tex - 1) / 2, tex_scale, shift, zoom, target,
                 [o for o, f in zip(others, front) if not f],
                 [o for o, f in zip(others, front) if f], panel, gain, tint,
                 _uniform(rng, 0, 0.3), _uniform(rng, 1, 3), int(rng.integers(2**63)))


# --------------------------------------------------------------------------- rendering
def shape_distance(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (about; negative inside) to the outline of shape ``kind`` at object
    coordinates (u, v), in units of the object's radius; every shape lies within radius 1."""
    if kind == "disc":
        return np.hypot(u, v) - 0.85
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.66
    if kind == "triangle":  # equilateral, a corner at angle -90 degrees (up at angle 0)
        return np.maximum(np.maximum(v, 0.866 * u - 0.5 * v), -0.866 * u - 0.5 * v) - 0.47
    if kind == "star":  # five points
        r = np.hypot(u, v)
        frac = np.arctan2(v, u) * (5 / (2 * np.pi)) % 1
        return (r - (0.42 + 0.53 * np.abs(2 * frac - 1))) * 0.6
    if kind == "plus":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 0.85, av - 0.3), np.maximum(au - 0.3, av - 0.85))
    if kind == "ring":
        return np.abs(np.hypot(u, v) - 0.62) - 0.26
    if kind == "crescent":
        return np.maximum(np.hypot(u, v) - 0.88, 0.62 - np.hypot(u - 0.42, v + 0.12))
    raise ValueError(f"unknown shape {kind!r}")


def _paint(look: Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colour (..., 4) float32 (RGBx) of the object surface at object coordinates (u, v)."""
    shade = (1 + look.shade * (u * np.cos(look.light) + v * np.sin(look.light)))[..., None]
    c1, c2 = look.colours
    if look.pattern == "flat":
        return (c1 * shade).astype(np.float32, copy=False)
    if look.pattern == "stripes":
        w = np.sin(np.pi * look.freq * (u * np.cos(look.tilt) + v * np.sin(look.tilt)))
    else:  # checker
        w = np.sin(np.pi * look.freq * u) * np.sin(np.pi * look.freq * v)
    mix = np.clip(0.5 + 1.5 * w, 0, 1)[..., None]  # soft-edged two-colour pattern
    return ((c1 + mix * (c2 - c1)) * shade).astype(np.float32, copy=False)


def draw_object(frames: np.ndarray, kind: str, look: Look, centre: np.ndarray,
                radius: np.ndarray, angle: np.ndarray) -> None:
    """Composite an object into ``frames`` (T, S, S, 4) float32 RGBx in place, antialiased.

    ``centre`` (T, 2) is in frame pixels (y, x; pixel i's centre at i), ``radius`` (T,) in
    pixels, ``angle`` (T,) in radians clockwise as seen on screen (y grows downwards). Each
    frame only touches a box around the object, clamped to the frame.
    """
    s = frames.shape[1]
    shown = np.flatnonzero(np.all(np.abs(centre - (s - 1) / 2) < s / 2 + radius[:, None] + 1,
                                  axis=1))
    if len(shown) == 0:
        return
    centre, radius, angle = centre[shown], radius[shown], angle[shown]
    box = min(s, 2 * math.ceil(radius.max()) + 4)
    lo = np.clip(np.floor(centre).astype(np.int64) - box // 2 + 1, 0, s - box)  # (N, 2)
    ys = lo[:, 0, None] + np.arange(box)  # (N, B)
    xs = lo[:, 1, None] + np.arange(box)
    dy = ((ys - centre[:, 0, None]) / radius[:, None]).astype(np.float32)[:, :, None]
    dx = ((xs - centre[:, 1, None]) / radius[:, None]).astype(np.float32)[:, None, :]
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    u = cos * dx + sin * dy  # (N, B, B): the screen offset turned back by the angle
    v = cos * dy - sin * dx
    alpha = np.clip(0.5 - shape_distance(kind, u, v) * radius[:, None, None].astype(np.float32),
                    0, 1)[..., None]
    # plain slices per frame: much faster than fancy indexing with (N, B, B) index arrays
    boxes = [(t, slice(y, y + box), slice(x, x + box)) for t, (y, x) in zip(shown, lo)]
    region = np.stack([frames[b] for b in boxes])
    region += alpha * (_paint(look, u, v) - region)
    for b, r in zip(boxes, region):
        frames[b] = r


def _draw_panel(frames: np.ndarray, scene: Scene) -> None:
    """Composite the cover (and the shadow it casts ahead of its edge) into ``frames``."""
    p, s = scene.panel, scene.size
    c = (s - 1) / 2
    pix = np.arange(s, dtype=np.float64)
    # world coordinates of every frame's pixel rows/columns, along and across the motion
    world_along = c + scene.shift[:, p.axis, None] + (pix - c) * scene.zoom[:, None]
    world_across = c + scene.shift[:, 1 - p.axis, None] + (pix - c) * scene.zoom[:, None]
    ahead = p.sign * (world_along - p.edge[:, None]) / scene.zoom[:, None]  # screen px
    alpha = np.clip(0.5 - ahead, 0, 1)
    shadow = 1 - 0.35 * np.exp(-np.maximum(ahead, 0) / 3) * (ahead > -0.5)
    amp, wl, ph = p.grain
    grain = 1 + amp * np.sin(2 * np.pi * world_across / wl + ph)
    seams = 1 - 0.3 * np.exp(-((world_along - p.edge[:, None]) % p.seam - p.seam / 2) ** 2 / 2)
    # frames * keep + cover, with (T, S) factors along the motion and across it
    keep, cover = (shadow * (1 - alpha)).astype(np.float32), (alpha * seams).astype(np.float32)
    grain = grain.astype(np.float32)
    if p.axis == 0:  # moving along y: rows
        keep, cover, grain = keep[:, :, None], cover[:, :, None], grain[:, None, :]
    else:
        keep, cover, grain = keep[:, None, :], cover[:, None, :], grain[:, :, None]
    frames *= keep[..., None]
    frames += (cover * grain)[..., None] * p.colour


def _render_rgbx(scene: Scene) -> np.ndarray:
    """:func:`render_scene` as (T, S, S, 4) uint8 RGBx (the 4th channel 0): four bytes per
    pixel keep every step on contiguous memory (the background look-up is one uint32 per
    pixel), and ffmpeg reads it as ``rgb0``."""
    s, t = scene.size, len(scene.zoom)
    c = (s - 1) / 2
    pix = np.arange(s, dtype=np.float64)
    # texture pixel of every screen pixel: nearest on the 2x texture (half-pixel steps)
    world = c + scene.shift[:, :, None] + (pix - c) * scene.zoom[:, None, None]  # (T, 2, S)
    tex = np.rint(2 * (scene.tex_centre + (world - c) * scene.tex_scale)).astype(np.int64)
    n_tex = scene.texture.shape[0]
    if tex.min() < 0 or tex.max() >= n_tex:  # pragma: no cover - the texture is sized for it
        raise AssertionError("camera looks beyond the background texture")
    packed = scene.texture[tex[:, 0, :, None], tex[:, 1, None, :]]  # (T, S, S)
    frames = packed.view(np.uint8).reshape(t, s, s, 4).astype(np.float32)

    def screen(track: Track) -> tuple[np.ndarray, np.ndarray]:
        return (c + (track.centre - c - scene.shift) / scene.zoom[:, None],
                track.radius / scene.zoom)

    for track in [*scene.behind, scene.target]:
        draw_object(frames, track.kind, track.look, *screen(track), track.angle)
    if scene.panel is not None:
        _draw_panel(frames, scene)
    for track in scene.in_front:
        draw_object(frames, track.kind, track.look, *screen(track), track.angle)
    r2 = ((pix - c) ** 2)[:, None] + ((pix - c) ** 2)[None, :]
    light = (1 - scene.vignette * r2 / (2 * c * c))[..., None] * scene.tint  # (S, S, 4)
    frames *= light.astype(np.float32)
    frames *= scene.gain.astype(np.float32)[:, None, None, None]
    # sensor noise: the sum of two uniform bytes, a fast near-Gaussian (triangular) variate;
    # its offset also adds the 0.5 that makes the truncation below round to nearest
    scale = scene.noise / 104.5  # 104.5: the standard deviation of the sum of two bytes
    raw = np.frombuffer(np.random.default_rng(scene.noise_seed).bytes(2 * t * s * s),
                        np.uint8).reshape(2, t, s, s, 1)
    noise = raw[0].astype(np.float32)
    noise += raw[1]
    noise -= np.float32(255 - 0.5 / scale)
    noise *= np.float32(scale)
    frames += noise
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)


def render_scene(scene: Scene) -> np.ndarray:
    """The frames (T, S, S, 3) uint8 RGB of a scene: background through the camera, objects,
    cover, lighting (gain, tint, vignette) and sensor noise, rounded to 8 bits."""
    return _render_rgbx(scene)[..., :3]


def video_process(label: str, rng: np.random.Generator) -> tuple[str, bool, str]:
    """(first class of the pair whose process to sample, whether to reverse the video, target
    shape) of a video of class ``label``; a control class draws its motion, direction and
    shape from ``rng``, a motion class draws its shape."""
    if label in CONTROL_KINDS:
        process = REVERSAL_PAIRS[int(rng.integers(len(REVERSAL_PAIRS)))][0]
        return process, bool(rng.integers(2)), CONTROL_KINDS[label]
    for first, second in REVERSAL_PAIRS:
        if label in (first, second):
            return first, label == second, TARGET_KINDS[int(rng.integers(len(TARGET_KINDS)))]
    raise ValueError(f"unknown motion class {label!r}")


def video_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of video ``index`` of dataset seed ``seed``."""
    return np.random.default_rng([seed, 1, index])


def _video_rgbx(label: str, rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    process, reverse, kind = video_process(label, rng)
    video = _render_rgbx(sample_scene(rng, process, kind, size, frames))
    return video[::-1] if reverse else video


def render_video(label: str, rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 RGB of one video of class ``label``.

    A pair's second class renders the first class's process from the same random stream and
    reverses the whole video, so ``render_video(second, rng_a, ...)`` is exactly
    ``render_video(first, rng_b, ...)[::-1]`` for two generators in the same state.
    """
    return _video_rgbx(label, rng, size, frames)[..., :3]


# --------------------------------------------------------------------------- writing
def _write_chunk(opt: MotionOptions, specs: list[VideoSpec], videos_dir: str) -> int:
    """Render and encode ``specs`` (consecutive indices) into ``videos_dir`` with one ffmpeg
    process; files appear only once all of them are complete. Returns the number written."""
    from vcorr.pipelines.data.video_io import SegmentedVideoWriter

    first = specs[0].index
    tmp = Path(videos_dir) / f".chunk-{first:05d}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        # a thread feeds ffmpeg (the pipe write releases the GIL) while the next video renders
        with ThreadPoolExecutor(1) as feeder, \
                SegmentedVideoWriter(tmp / "motion_%05d.mp4", len(specs), opt.frames, opt.size,
                                     opt.size, opt.fps, intra_qp=opt.qp, preset=PRESET,
                                     start_number=first, rgbx=True) as writer:
            pending = None
            for spec in specs:
                video = _video_rgbx(spec.label, video_rng(opt.seed, spec.index), opt.size,
                                    opt.frames)
                if pending is not None:
                    pending.result()
                pending = feeder.submit(writer.write, video)
            pending.result()
        for spec in specs:
            os.replace(tmp / f"{spec.id}.mp4", Path(videos_dir) / f"{spec.id}.mp4")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(specs)


def encoder_settings(opt: MotionOptions) -> dict:
    """The H.264 settings the videos are written with (for ``motion.json``)."""
    return {"codec": "libx264", "preset": PRESET, "qp": opt.qp, "gop": 1, "b_frames": 0,
            "threads": 1, "pix_fmt": "yuv420p", "container": "mp4"}


def make_motion(out: str | Path, opt: MotionOptions = MotionOptions()) -> dict:
    """Write ``out/videos/motion_NNNNN.mp4``, ``out/annotations.csv`` (format ``list``:
    path,label,split,id), ``out/classes.txt`` and ``out/motion.json`` (classes, reversal pairs,
    controls, generation settings, recommended preparation).

    Every file is deterministic for ``opt.seed`` (the same bytes again on the same machine and
    software, whatever ``opt.workers``). The CSV and JSON files are written last, atomically.
    Returns a summary dict (counts per split, frames, classes, pairs, controls).

    Raises:
        UserError: options that cannot work (see :func:`check_options`).
        RuntimeError: ffmpeg failed.
    """
    from vcorr.pipelines.progress import make_progress

    specs = motion_plan(opt)
    out = Path(out)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    for stale in videos_dir.glob(".chunk-*.tmp"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    chunks = [specs[i:i + _VIDEOS_PER_CHUNK] for i in range(0, len(specs), _VIDEOS_PER_CHUNK)]
    bar = make_progress(len(specs), "motion videos", unit="video") if opt.progress else None
    try:
        if opt.workers == 1:
            for chunk in chunks:
                done = _write_chunk(opt, chunk, str(videos_dir))
                if bar is not None:
                    bar.update(done)
        else:
            with ProcessPoolExecutor(min(opt.workers, len(chunks))) as pool:
                jobs = [pool.submit(_write_chunk, opt, chunk, str(videos_dir))
                        for chunk in chunks]
                for job in as_completed(jobs):
                    done = job.result()
                    if bar is not None:
                        bar.update(done)
    finally:
        if bar is not None:
            bar.close()
    counts = {split: sum(s.split == split for s in specs) for split in ("train", "val", "test")}
    write_atomic(out / "classes.txt", "".join(c + "\n" for c in MOTION_CLASSES))
    settings = {k: v for k, v in asdict(opt).items() if k not in ("workers", "progress")}
    meta = {
        "generator": "vcorr toy --kind motion (vcorr.pipelines.data.motion)",
        "classes": list(MOTION_CLASSES),
        "reversal_pairs": [list(p) for p in REVERSAL_PAIRS],
        "control_classes": list(CONTROL_CLASSES),
        "control_kinds": CONTROL_KINDS,
        "target_kinds": list(TARGET_KINDS),
        "options": settings,
        "frames": opt.frames,
        "encoder": encoder_settings(opt),
        "splits": counts,
        "recommended": {
            "prepare": "--short-side 64 --every 2",
            "clip": {"sampler": "dense", "frames": 8, "interval": 3}, "flip": "off"},
    }
    write_atomic(out / "motion.json", json.dumps(meta, indent=2) + "\n")
    write_atomic(out / "annotations.csv", "path,label,split,id\n" + "".join(
        f"videos/{s.id}.mp4,{s.label},{s.split},{s.id}\n" for s in specs))
    return {"out": str(out), "videos": len(specs), **counts, "frames": opt.frames,
            "fps": opt.fps, "size": opt.size, "classes": list(MOTION_CLASSES),
            "pairs": [list(p) for p in REVERSAL_PAIRS], "controls": list(CONTROL_CLASSES)}
