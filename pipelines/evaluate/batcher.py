"""The test-time view loop shared by ``vcorr eval``, ``vcorr predict`` and ``vcorr extract``.

Clips arrive per video (or per window of a video) as one resized uint8 tensor; the spatial
views are cut from it on the device (:func:`vcorr.pipelines.evaluate.views.build_views`), converted
to float and normalised, and queued. Views of several videos share a forward pass up to
``max_views`` views (a video's views may also span passes); once every view of a video has
been through the model, its stacked outputs are reduced (e.g. averaged softmax) and handed on.
:class:`Prefetched` lets the loop run a part-filled batch whenever the next video is not ready
yet, so the model never idles while the loader's workers decode.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

import torch

from vcorr.pipelines.evaluate.views import build_views, crop_boxes

# reduce(outputs (V, ...) of one video's views in view order, which views are flipped) -> result
Reduce = Callable[[torch.Tensor, list[bool]], torch.Tensor]


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 (else fp16) autocast on CUDA when ``amp``; nothing on other devices."""
    if not amp or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


class ViewBatcher:
    """Cut views, batch them across videos, run ``forward``, reduce per video.

    Shape: ``add`` takes uint8 clips (N, C, T, H, W); the views are (N * crops, C, T, s, s)
    floats in [0, 1] (minus ``mean``, divided by ``std`` when given), clip-major; ``forward``
    maps (B, C, T, s, s) to (B, ...); ``on_done(key, reduce(outputs, flips))`` is called once per
    key, with the outputs in view order.

    ``crops``: 1, 3, 6 or 10 crops of ``crop_size`` (:func:`crop_boxes`); ``crops=None`` feeds
    the whole frames (one view per clip). ``timing`` holds the seconds spent building views
    and in the model (with ``sync_timing`` the CUDA device is synchronised so they are real).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], reduce: Reduce,
                 on_done: Callable[[Hashable, torch.Tensor], None], *, crops: int | None,
                 crop_size: int, max_views: int, device: torch.device,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 amp: bool = True, sync_timing: bool = False) -> None:
        self.forward, self.reduce, self.on_done = forward, reduce, on_done
        self.crops, self.crop_size, self.max_views = crops, crop_size, max_views
        self.device, self.amp, self.sync_timing = device, amp, sync_timing
        self.mean = self.std = None
        if mean is not None:
            self.mean = torch.tensor(tuple(mean), device=device).view(1, 3, 1, 1, 1)
            self.std = torch.tensor(tuple(std), device=device).view(1, 3, 1, 1, 1)
        self.timing = {"views": 0.0, "model": 0.0}
        self.views_per_video = 0
        self._pending: list[tuple[Hashable, torch.Tensor]] = []
        self._queued = 0
        self._partial: dict[Hashable, list[torch.Tensor]] = {}
        self._flips: dict[Hashable, list[bool]] = {}
        self._left: dict[Hashable, int] = {}

    def _sync(self) -> None:
        if self.sync_timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, key: Hashable, clips: torch.Tensor) -> None:
        """Queue the views of ``clips`` (uint8 (N, C, T, H, W)) under ``key``; runs the model
        whenever ``max_views`` views are queued.

        Raises:
            ValueError: the crop is larger than the frames (nothing is queued).
        """
        t0 = time.perf_counter()
        clips = clips.to(self.device, non_blocking=True)
        boxes = (None if self.crops is None
                 else crop_boxes(clips.shape[-2], clips.shape[-1], self.crop_size, self.crops))
        views, flips = build_views(clips, boxes)
        views = views.float().div_(255)
        if self.mean is not None:
            views = views.sub_(self.mean).div_(self.std)
        self._sync()
        self.timing["views"] += time.perf_counter() - t0
        self.views_per_video = max(self.views_per_video, views.shape[0])
        self._flips[key], self._left[key] = flips, views.shape[0]
        # Shapes differ between videos only for whole frames: run before mixing them.
        if self._pending and self._pending[0][1].shape[1:] != views.shape[1:]:
            self.flush()
        start = 0
        while start < views.shape[0]:
            part = views[start:start + self.max_views - self._queued]
            self._pending.append((key, part))
            self._queued += part.shape[0]
            start += part.shape[0]
            if self._queued >= self.max_views:
                self.flush()

    def flush(self) -> None:
        """Run the model on the queued views (also called by ``add``)."""
        if not self._pending:
            return
        t0 = time.perf_counter()
        x = torch.cat([p[1] for p in self._pending])
        sizes = [(key, p.shape[0]) for key, p in self._pending]
        self._pending, self._queued = [], 0
        with autocast(self.device, self.amp):
            out = self.forward(x).float()
        self._sync()
        self.timing["model"] += time.perf_counter() - t0
        start = 0
        for key, n in sizes:
            self._partial.setdefault(key, []).append(out[start:start + n])
            start += n
            self._left[key] -= n
            if self._left[key] == 0:
                del self._left[key]
                outputs = torch.cat(self._partial.pop(key))
                self.on_done(key, self.reduce(outputs, self._flips.pop(key)))


class Prefetched:
    """Iterate over ``loader`` (a DataLoader) with a background thread taking its items, so
    that ``on_idle`` (run a part-filled batch) is called whenever the next item is not there
    yet, before waiting for it. ``waited``: seconds spent waiting (``on_idle`` excluded);
    ``first``: seconds until the first item. With ``workers=0`` the items are made by the
    consumer's own thread (a background thread would decode in this process, where the
    decoding layer captures stderr) and ``on_idle`` is never called.
    """

    _END = object()

    def __init__(self, loader: Iterable, workers: int,
                 on_idle: Callable[[], None] = lambda: None) -> None:
        self._loader, self._workers, self.on_idle = loader, workers, on_idle
        self.waited, self.first = 0.0, None

    def _pull(self, q: queue.Queue) -> None:
        try:
            for item in self._loader:
                q.put((item, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            q.put((None, exc))
        finally:
            q.put((self._END, None))

    def __iter__(self) -> Iterator[Any]:
        start = time.perf_counter()
        if not self._workers:
            source = iter(self._loader)

            def get() -> tuple[Any, Exception | None]:
                return next(source, self._END), None
        else:
            q: queue.Queue = queue.Queue(maxsize=2)
            threading.Thread(target=self._pull, args=(q,), daemon=True).start()
            get = q.get
        while True:
            if self._workers and q.empty():
                self.on_idle()
            t0 = time.perf_counter()
            item, exc = get()
            self.waited += time.perf_counter() - t0
            if self.first is None:
                self.first = time.perf_counter() - start
            if exc is not None:
                raise exc
            if item is self._END:
                return
            yield item
