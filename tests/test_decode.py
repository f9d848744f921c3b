"""The decoding layer on videos made the way phones, browsers, screen recorders and damaged
disks make them: display rotation (FFmpeg's command line is the reference), variable frame
rates (exact expected frames), no duration in the header, no video stream, damage in the
middle and at the end (warnings with counts, ``--strict``), a quiet terminal, bounded chunks,
and shards read without HDF5 file locking."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest

from vcorr.pipelines.data import decode
from vcorr.pipelines.data.decode import Orientation, VideoError, VideoReader, probe
from vcorr.pipelines.data.video_io import ffmpeg_exe, write_video
from vcorr.pipelines.errors import UserError


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def _ffmpeg_display_frames(path: Path, n: int | None = None) -> np.ndarray:
    """The first ``n`` frames (all without ``n``) as FFmpeg's command line shows them (it
    applies the display matrix and edit lists itself): the reference."""
    limit = ["-frames:v", str(n)] if n else []
    # passthrough: every decoded frame once (rawvideo output would default to a constant
    # rate and duplicate frames over gaps in the timestamps)
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), *limit,
                          "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"],
                         capture_output=True, check=True).stdout
    info = probe(path)
    return np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)


def _one_video(tmp_path: Path, path: Path, label: str = "a") -> Path:
    ann = tmp_path / f"{path.stem}.csv"
    ann.write_text(f"path,label,split,id\n{path.name},{label},train,{path.stem}\n")
    return ann


@pytest.fixture(scope="module")
def upright(tmp_path_factory, dh) -> dict:
    """An asymmetric 64x48 pattern (so every rotation and mirror differs) as a lossless
    video, 8 frames at 8 fps."""
    root = tmp_path_factory.mktemp("orient")
    frames = dh.synth_frames(8, seed=3)
    frames[:, :8, :8] = 255  # a white corner: top left
    path = root / "upright.mp4"
    write_video(path, frames, fps=8.0, lossless=True)
    return {"root": root, "frames": frames, "path": path}


# --------------------------------------------------------------------------- orientation
MATRIX_FLAGS = [(rot, flags) for rot in (0, 90, 180, 270)
                for flags in ((), ("-display_hflip",), ("-display_vflip",),
                              ("-display_hflip", "-display_vflip"))]


@pytest.mark.parametrize("rot,flags", MATRIX_FLAGS)
def test_every_display_matrix_decodes_as_ffmpeg_shows_it(tmp_path, upright, rot, flags):
    """All eight orientations a display matrix can give (rotations, mirrored or not) equal
    FFmpeg's command line output, pixel for pixel; decord is used only where it is right."""
    path = tmp_path / "tagged.mp4"
    _ffmpeg("-display_rotation", str(rot), *flags, "-i", str(upright["path"]), "-c", "copy",
            str(path))
    reader = VideoReader(path)
    got = reader.read(range(8))
    np.testing.assert_array_equal(got, _ffmpeg_display_frames(path, 8))
    mirrored = reader.info.orientation.hflip
    assert mirrored == (len(flags) == 1)
    assert reader.decord_ok == (not mirrored)  # decord 0.6 ignores mirroring


def test_rotate_tag_is_clockwise_degrees(tmp_path, upright):
    """A Matroska ``rotate`` tag (as FFmpeg 4 and older wrote it) turns the picture clockwise."""
    path = tmp_path / "tag.mkv"
    _ffmpeg("-i", str(upright["path"]), "-c", "copy", "-metadata:s:v:0", "rotate=90",
            str(path))
    got = VideoReader(path).read([0, 5])
    np.testing.assert_array_equal(got, np.rot90(upright["frames"][[0, 5]], -1, axes=(1, 2)))


def test_non_right_angle_rotation_is_refused(tmp_path, upright):
    path = tmp_path / "tilted.mp4"
    _ffmpeg("-display_rotation", "30", "-i", str(upright["path"]), "-c", "copy", str(path))
    with pytest.raises(VideoError, match="unsupported orientation: .*30.0 degrees"):
        probe(path)


@pytest.mark.parametrize("rot,flags,orientation", [
    (180, (), Orientation(2, False)),
    (270, (), Orientation(3, False)),
    (90, (), Orientation(1, False)),
    (90, ("-display_hflip",), Orientation(3, True)),
])
def test_prepare_stores_phone_videos_upright(tmp_path, dh, rot, flags, orientation):
    """A phone video stores its pixels sideways and says how to show them: prepare stores the
    upright picture (above 35 dB through H.264 and JPEG), never a squashed or turned one."""
    up = dh.synth_frames(6, h=64, w=48, seed=4)  # portrait, as a phone held upright films
    up[:, :8, :8] = 255
    # the stored (sensor) frames are the upright ones turned back, then mirrored back
    sensor = np.rot90(up, -orientation.quarter_turns, axes=(1, 2))
    if orientation.hflip:
        sensor = sensor[:, :, ::-1]
    assert np.array_equal(orientation.apply(sensor), up)
    plain = tmp_path / "sensor.mp4"
    write_video(plain, np.ascontiguousarray(sensor), fps=6.0, crf=12)
    path = tmp_path / "phone.mp4"
    _ffmpeg("-display_rotation", str(rot), *flags, "-i", str(plain), "-c", "copy", str(path))
    out = tmp_path / "out"
    dh.run_prepare(out, "list", _one_video(tmp_path, path), tmp_path, short_side=0)
    row = dh.read_csv(out / "index.csv")[0]
    assert (int(row["height"]), int(row["width"])) == (64, 48)
    stored = dh.stored_frames(out, row)
    for a, b in zip(stored, up):
        assert dh.psnr(a, b) > 35


# --------------------------------------------------------------------------- frame times
def _write_vfr(path: Path, times: list[float]) -> None:
    """A lossless video whose frame i, shown at ``times[i]`` seconds, is grey level 5*i."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 3000)
        stream.options = {"qp": "0"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * i, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = round(t * 3000), Fraction(1, 3000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


VFR_TIMES = [i / 10 for i in range(10)] + [1 + i / 30 for i in range(30)]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_keeps_the_frames_nearest_in_time(tmp_path, dh, suffix):
    """10 frames at 10 fps then 30 at 30 fps: --fps 5 stores the frames shown nearest to 0,
    0.2, ..., 1.8 s (0, 2, ..., 10, 16, ..., 34), not every 4th; source_fps is 40 / 2 s."""
    path = tmp_path / f"vfr{suffix}"
    _write_vfr(path, VFR_TIMES)
    out = tmp_path / "out"
    dh.run_prepare(out, "list", _one_video(tmp_path, path), tmp_path, short_side=0, fps=5.0)
    row = dh.read_csv(out / "index.csv")[0]
    assert float(row["source_fps"]) == pytest.approx(20.0)
    assert float(row["duration"]) == pytest.approx(2.0)
    assert row["variable_rate"] == "1" and float(row["fps"]) == 5.0
    grey = dh.stored_frames(out, row).reshape(int(row["num_frames"]), -1).mean(1) / 5
    assert np.rint(grey).astype(int).tolist() == [0, 2, 4, 6, 8, 10, 16, 22, 28, 34]


def test_variable_frame_rate_above_the_slow_part_stays_uniform_in_time(tmp_path, dh):
    """--fps 30 on the 10-then-30 fps recording: 60 frames, 1/30 s apart, the slow part's
    frames repeated (kept once each, the first second would play three times too fast)."""
    path = tmp_path / "vfr.mp4"
    _write_vfr(path, VFR_TIMES)
    out = tmp_path / "out"
    dh.run_prepare(out, "list", _one_video(tmp_path, path), tmp_path, short_side=0, fps=30.0)
    row = dh.read_csv(out / "index.csv")[0]
    assert int(row["num_frames"]) == 60 and float(row["fps"]) == 30.0
    grey = dh.stored_frames(out, row).reshape(60, -1).mean(1) / 5
    times = np.array(VFR_TIMES)
    expect = [int(np.argmin(np.abs(times - k / 30))) for k in range(60)]
    assert np.rint(grey).astype(int).tolist() == expect
    assert expect[:6] == [0, 0, 1, 1, 1, 2] and expect[30:] == list(range(10, 40))


def test_every_stays_index_based_on_variable_rate(tmp_path, dh):
    path = tmp_path / "vfr.mp4"
    _write_vfr(path, VFR_TIMES)
    out = tmp_path / "out"
    dh.run_prepare(out, "list", _one_video(tmp_path, path), tmp_path, short_side=0, every=4)
    row = dh.read_csv(out / "index.csv")[0]
    grey = dh.stored_frames(out, row).reshape(int(row["num_frames"]), -1).mean(1) / 5
    assert np.rint(grey).astype(int).tolist() == list(range(0, 40, 4))


def test_constant_rate_file_takes_the_fast_path_with_exact_times(upright):
    reader = VideoReader(upright["path"])
    assert reader.decord_ok and not reader.info.variable_rate
    assert reader.info.nominal_rate == 8.0 and reader.info.duration == 1.0
    np.testing.assert_array_equal(reader.info.times, np.arange(8) / 8)
    got = []
    report = reader.decode(lambda c: got.extend(c.numbers), fps=4.0)
    assert report.decoder == "decord" and got == [0, 2, 4, 6] and report.problem() is None


# --------------------------------------------------------------------------- containers
@pytest.mark.parametrize("fmt,codec", [("matroska", "libx264"), ("webm", "libvpx-vp9")])
def test_piped_video_without_duration_is_prepared(tmp_path, dh, fmt, codec):
    """Written through a pipe (as browsers' MediaRecorder does), the header has no duration
    or frame count; decord refuses the file, PyAV decodes all of it."""
    path = tmp_path / f"piped.{'mkv' if fmt == 'matroska' else 'webm'}"
    with open(path, "wb") as f:
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc=size=64x48:rate=25:duration=2", "-c:v", codec,
                        "-pix_fmt", "yuv420p", "-f", fmt, "-"], stdout=f, check=True)
    info = probe(path)
    assert info.header_frames == 0 and info.num_frames == 50
    out = tmp_path / "out"
    r = dh.run_prepare(out, "list", _one_video(tmp_path, path), tmp_path, short_side=0,
                       codec="raw")
    assert r.videos == 1 and r.failures == 0 and r.warnings == 0
    row = dh.read_csv(out / "index.csv")[0]
    assert int(row["num_frames"]) == 50 and float(row["source_fps"]) == pytest.approx(25.0)
    reference = _ffmpeg_display_frames(path)
    assert len(reference) == 50
    for a, b in zip(dh.stored_frames(out, row), reference):
        assert dh.psnr(a, b) > 35


def test_stream_copy_cut_shows_the_frames_a_player_shows(tmp_path, damaged):
    """``ffmpeg -ss 0.5 -c copy`` starts between key frames: an edit list hides the pre-roll
    frames, which must be decoded (later frames refer to them) but not stored. decord counts
    them as frames; the decoding layer gives exactly what ffmpeg shows, with no warning."""
    path = tmp_path / "cut.mp4"
    _ffmpeg("-ss", "0.5", "-i", str(damaged["root"] / "clean.mp4"), "-c", "copy", "-t", "1.5",
            str(path))
    reader = VideoReader(path)
    got: list[np.ndarray] = []
    report = reader.decode(lambda c: got.append(c.frames))
    reference = _ffmpeg_display_frames(path)
    import av

    with av.open(str(path)) as c:  # the file does hide pre-roll frames
        hidden = sum(p.is_discard for p in c.demux(video=0) if p.size)
    assert hidden > 0 and len(reference) == reader.info.num_frames
    np.testing.assert_array_equal(np.concatenate(got), reference)
    assert report.problem() is None and reader.info.header_frames == reader.info.num_frames


@pytest.mark.parametrize("suffix,codec", [
    (".avi", "mpeg4"), (".mpg", "mpeg2video"), (".ts", "libx264"), (".h264", "libx264"),
    (".mov", "mjpeg"), (".flv", "flv"), (".webm", "libvpx"), (".mkv", "ffv1")])
def test_containers_and_codecs_decode_as_ffmpeg_does(tmp_path, suffix, codec):
    """Every frame ffmpeg shows, once, pixel for pixel, at the right rate; among them a raw
    H.264 stream, whose packets carry no timestamps at all."""
    path = tmp_path / f"clip{suffix}"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=1", "-c:v", codec,
            "-pix_fmt", "yuv420p", str(path))
    reader = VideoReader(path)
    got: list[np.ndarray] = []
    report = reader.decode(lambda c: got.append(c.frames))
    np.testing.assert_array_equal(np.concatenate(got), _ffmpeg_display_frames(path))
    assert reader.info.num_frames == 25 and reader.info.fps == pytest.approx(25.0)
    assert report.problem() is None


def test_audio_only_file_says_there_is_no_video_stream(tmp_path, dh):
    path = tmp_path / "voice.mp4"
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
    cover = tmp_path / "cover.png"  # a song with cover art: its only video is one still
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x48", "-frames:v", "1", str(cover))
    song = tmp_path / "song.mp4"
    _ffmpeg("-i", str(path), "-i", str(cover), "-map", "0", "-map", "1", "-c:a", "copy",
            "-c:v", "png", "-disposition:v:0", "attached_pic", str(song))
    out = tmp_path / "out"
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label,split,id\nvoice.mp4,a,train,voice\nsong.mp4,a,train,song\n")
    # no video was prepared: prepare says so with exit code 2, after writing failures.csv
    with pytest.raises(UserError, match=r"no video was prepared \(2 tried; failures: 2 x no "
                                        r"video stream;"):
        dh.run_prepare(out, "list", ann, tmp_path)
    reasons = {f["id"]: f["reason"] for f in dh.read_csv(out / "failures.csv")}
    assert reasons == {"voice": "no video stream: streams: audio",
                       "song": "no video stream: streams: audio, cover picture"}


# --------------------------------------------------------------------------- AVI B-frames
def _bits(data: bytes) -> Iterator[int]:
    for byte in data:
        yield from (byte >> k & 1 for k in range(7, -1, -1))


def _take(bits: Iterator[int], n: int) -> int:
    value = 0
    for _ in range(n):
        value = value << 1 | next(bits)
    return value


def _vop_time_increment_bits(data: bytes) -> int:
    """Bits of ``vop_time_increment`` in MPEG-4 Part 2 VOP headers: from the video object
    layer header (ISO/IEC 14496-2 6.2.3) in ``data``."""
    at = next(i for i in range(len(data) - 3)
              if data[i:i + 3] == b"\0\0\1" and 0x20 <= data[i + 3] <= 0x2F)
    bits = _bits(data[at + 4:])
    _take(bits, 9)  # random_accessible_vol, video_object_type_indication
    if _take(bits, 1):  # is_object_layer_identifier: verid, priority
        _take(bits, 7)
    if _take(bits, 4) == 15:  # aspect_ratio_info: extended PAR
        _take(bits, 16)
    if _take(bits, 1):  # vol_control_parameters: chroma_format, low_delay
        _take(bits, 3)
        if _take(bits, 1):  # vbv_parameters
            _take(bits, 79)
    assert _take(bits, 2) == 0, "rectangular video object layer expected"
    _take(bits, 1)  # marker
    resolution = _take(bits, 16)  # vop_time_increment_resolution
    return max(1, (resolution - 1).bit_length())


def _n_vop(time_bits: int) -> bytes:
    """A not-coded VOP (``vop_coded`` 0): the placeholder DivX puts in the chunk of a packed
    B-frame."""
    bits = [0, 1, 0, 1] + [0] * time_bits + [1, 0]  # P, modulo_time_base, marker, time, marker,
    bits += [0] + [1] * (-(len(bits) + 1) % 8)  # vop_coded; then next_start_code() stuffing
    return b"\0\0\1\xb6" + bytes(int("".join(map(str, bits[i:i + 8])), 2)
                                 for i in range(0, len(bits), 8))


def _pack_b_frames(src: Path, dst: Path) -> None:
    """DivX-style packed B-frames (as DivX 5 and XviD wrote AVIs; the reverse of FFmpeg's
    ``mpeg4_unpack_bframes``): each reference frame's chunk also holds the first B-frame that
    follows it in decode order, every further B-frame moves one chunk earlier, and an N-VOP
    fills the chunk left over; the user data says ``DivX503b1393p`` (``p``: packed)."""
    import av

    def vop_type(data: bytes) -> int:  # 0 I, 1 P, 2 B, 3 S
        return data[data.rfind(b"\0\0\1\xb6") + 4] >> 6

    def divx(data: bytes) -> bytes:  # the encoder's user data becomes DivX's
        at = data.find(b"\0\0\1\xb2")
        end = data.find(b"\0\0\1", at + 4)
        return data if at < 0 else data[:at] + b"\0\0\1\xb2DivX503b1393p" + data[end:]

    with av.open(str(src)) as source:
        stream = source.streams.video[0]
        packets = [(bytes(p), p.is_keyframe) for p in source.demux(stream) if p.size]
        n_vop = _n_vop(_vop_time_increment_bits(packets[0][0]))
        chunks, i = [], 0
        while i < len(packets):
            j = i + 1
            while j < len(packets) and vop_type(packets[j][0]) == 2:
                j += 1
            bs = [data for data, _ in packets[i + 1:j]]
            chunks.append((packets[i][0] + (bs[0] if bs else b""), packets[i][1]))
            chunks += [(data, False) for data in bs[1:]] + ([(n_vop, False)] if bs else [])
            i = j
        assert len(chunks) == len(packets) and any(vop_type(c) == 2 for c, _ in chunks)
        with av.open(str(dst), "w", format="avi") as out:
            packed = out.add_stream_from_template(stream)
            packed.codec_context.extradata = divx(stream.codec_context.extradata)
            packed.codec_tag = "DX50"
            for k, (data, key) in enumerate(chunks):
                packet = av.Packet(divx(data) if k == 0 else data)
                packet.stream, packet.time_base = packed, 1 / stream.average_rate
                packet.pts = packet.dts = k
                packet.is_keyframe = key
                out.mux(packet)


AVI_FRAMES = 60


@pytest.fixture(scope="module")
def avi_b_frames(tmp_path_factory, dh) -> dict:
    """AVIs with B-frames, 64x48 at 30 fps, 60 frames (AVI stores no presentation times):
    H.264 with 3 B-frames (pyramid, as x264 encodes by default: NTU RGB+D's layout) and with
    8 in a row, and MPEG-4 Part 2 with 2 B-frames, packed DivX-style."""
    root = tmp_path_factory.mktemp("avi")
    frames = dh.synth_frames(AVI_FRAMES, seed=7)

    def encode(name: str, *args: str) -> Path:
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-s", "64x48", "-r", "30", "-i", "-", *args,
                        "-pix_fmt", "yuv420p", str(root / name)],
                       input=frames.tobytes(), check=True)
        return root / name

    fixed = "scenecut=0:b-adapt=0"  # every group of pictures the same: I/P, then the B-frames
    h264 = encode("h264.avi", "-c:v", "libx264", "-crf", "12", "-bf", "3", "-x264-params", fixed)
    h264_8 = encode("h264_8b.avi", "-c:v", "libx264", "-crf", "12", "-bf", "8",
                    "-x264-params", fixed + ":b-pyramid=none")
    mpeg4 = encode("mpeg4.avi", "-c:v", "mpeg4", "-q:v", "2", "-bf", "2")
    packed = root / "mpeg4_packed.avi"
    _pack_b_frames(mpeg4, packed)
    return {"root": root, "frames": frames, "h264": h264, "h264_8b": h264_8, "mpeg4": mpeg4,
            "mpeg4_packed": packed}


def _nearest_source(decoded: np.ndarray, source: np.ndarray) -> list[int]:
    """For each decoded frame, the number of the source frame it is closest to."""
    d = decoded.reshape(len(decoded), 1, -1).astype(np.float32)
    s = source.reshape(1, len(source), -1).astype(np.float32)
    return np.abs(d - s).mean(-1).argmin(1).tolist()


def test_avi_b_frame_fixtures_have_timestamps_out_of_presentation_order(avi_b_frames):
    """What the decoding layer faces: PyAV's frames of these AVIs come out in presentation
    order with timestamps that are not (decode-order stamps: 1, 4, 3, 5, 2, ...), and the
    packed one is what DivX wrote (two VOPs in a chunk, N-VOPs), FFmpeg's ``mpeg4_unpack_
    bframes`` turning it back into one VOP a packet."""
    import av

    for name in ("h264", "h264_8b", "mpeg4_packed"):
        with av.open(str(avi_b_frames[name])) as c:
            stamps = [f.pts for f in c.decode(video=0)]
        assert len(stamps) == AVI_FRAMES and sorted(stamps) != stamps, name
        assert sorted(stamps) == list(range(stamps[0], stamps[0] + AVI_FRAMES)), name
    with av.open(str(avi_b_frames["mpeg4_packed"])) as c:
        chunks = [bytes(p) for p in c.demux(video=0) if p.size]
    assert b"DivX503b1393p" in chunks[0]
    vops = [chunk.count(b"\0\0\1\xb6") for chunk in chunks]
    # I, P with the first B-frame after it, the second B-frame, an N-VOP (a few bytes), ...
    assert vops[:7] == [1, 2, 1, 1, 2, 1, 1] and vops.count(2) > 15
    assert sum(len(chunk) < 8 for chunk in chunks) == vops.count(2)
    unpacked = avi_b_frames["root"] / "unpacked.avi"
    _ffmpeg("-i", str(avi_b_frames["mpeg4_packed"]), "-c", "copy", "-bsf:v",
            "mpeg4_unpack_bframes", str(unpacked))
    with av.open(str(unpacked)) as c:
        assert [bytes(p).count(b"\0\0\1\xb6") for p in c.demux(video=0) if p.size] == \
            [1] * AVI_FRAMES


@pytest.mark.parametrize("force_pyav", [False, True])
@pytest.mark.parametrize("name", ["h264", "h264_8b", "mpeg4", "mpeg4_packed"])
def test_avi_with_b_frames_decodes_as_ffmpeg_does(avi_b_frames, name, force_pyav):
    """Every frame ffmpeg shows, once, pixel for pixel, in presentation order (the source's
    frames 0..59, each nearest its own), 1/30 s apart, with no warning: decord where it is
    right, PyAV (which 1080p videos such as NTU RGB+D's get) re-timing the decode-order
    stamps. Packed B-frames go to PyAV (decord's FFmpeg says they are there)."""
    path = avi_b_frames[name]
    reference = _ffmpeg_display_frames(path)
    assert len(reference) == AVI_FRAMES
    assert _nearest_source(reference, avi_b_frames["frames"]) == list(range(AVI_FRAMES))
    reader = VideoReader(path, force_pyav=force_pyav)
    got: list[np.ndarray] = []
    numbers: list[int] = []
    times: list[float] = []

    def keep(chunk) -> None:
        got.append(chunk.frames)
        numbers.extend(chunk.numbers)
        times.extend(chunk.times)

    report = reader.decode(keep)
    np.testing.assert_array_equal(np.concatenate(got), reference)
    assert numbers == list(range(AVI_FRAMES))
    np.testing.assert_allclose(times, np.arange(AVI_FRAMES) / 30, atol=1e-9)
    assert report.problem() is None and report.frames_retimed == 0
    assert report.decoder == ("pyav" if force_pyav or name == "mpeg4_packed" else "decord")
    assert reader.info.num_frames == AVI_FRAMES and reader.info.fps == pytest.approx(30.0)
    # every=2 and fps=10 select by frame number and by time, as on any constant-rate video
    assert reader.info.select(every=2) == list(range(0, AVI_FRAMES, 2))
    picked: list[int] = []
    reader.decode(lambda c: picked.extend(c.numbers), fps=10.0)
    assert picked == list(range(0, AVI_FRAMES, 3))


def test_timestamps_further_out_of_order_than_the_window_keep_every_frame(avi_b_frames,
                                                                          monkeypatch):
    """8 B-frames in a row against a 2-frame reorder window (what a 4K frame's memory bound
    leaves): every frame is still kept once, in order, times increasing (here at most one
    frame late); the frames the window could not place are timed 1/rate after the one
    before, said in the log, and not a warning."""
    monkeypatch.setattr(decode, "REORDER_WINDOW", 2)
    path = avi_b_frames["h264_8b"]
    reader = VideoReader(path, force_pyav=True)
    got: list[np.ndarray] = []
    times: list[float] = []
    report = reader.decode(lambda c: (got.append(c.frames), times.extend(c.times)))
    np.testing.assert_array_equal(np.concatenate(got), _ffmpeg_display_frames(path))
    assert np.all(np.diff(times) > 0)
    assert np.abs(np.array(times) - np.arange(AVI_FRAMES) / 30).max() <= 1 / 30 + 1e-9
    assert report.frames_retimed > 0 and report.problem() is None
    assert f"timestamps: {report.frames_retimed} frames not after the frame shown before " \
           "(out of order beyond the 2-frame window, or repeated): timed 1/rate after it" \
           in report.log


def test_prepare_stores_every_frame_of_an_avi_with_b_frames(tmp_path, dh, avi_b_frames,
                                                            monkeypatch):
    """``vcorr prepare`` on the AVIs through PyAV (as for 1080p, the NTU RGB+D case): all 60
    frames stored, in order, no warning, 30 fps."""
    monkeypatch.setattr(decode, "DECORD_MAX_PIXELS", 0)
    names = ("h264", "h264_8b", "mpeg4_packed")
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label,split,id\n" + "".join(
        f"{avi_b_frames[n].name},a,train,{n}\n" for n in names))
    out = tmp_path / "out"
    r = dh.run_prepare(out, "list", ann, avi_b_frames["root"], short_side=0, codec="raw")
    assert r.videos == 3 and r.failures == 0 and r.warnings == 0
    for row in dh.read_csv(out / "index.csv"):
        assert int(row["num_frames"]) == AVI_FRAMES, row["id"]
        assert float(row["source_fps"]) == pytest.approx(30.0)
        stored = dh.stored_frames(out, row)
        reference = _ffmpeg_display_frames(avi_b_frames[row["id"]])
        np.testing.assert_array_equal(stored, reference)


# --------------------------------------------------------------------------- damage
def _nal_units(data: bytes, pos: int, size: int, length_size: int) -> list[tuple[int, int]]:
    """(file offset, length) of each NAL unit of the AVCC packet ``data[pos:pos + size]``,
    where every unit follows its length as a ``length_size``-byte big-endian number."""
    units, at, end = [], pos, pos + size
    while at < end:
        n = int.from_bytes(data[at:at + length_size], "big")
        units.append((at + length_size, n))
        at += length_size + n
    assert at == end, f"the NAL lengths of the packet at byte {pos} overrun its {size} bytes"
    return units


def _avcc_packets(path: Path) -> tuple[int, list[tuple[int, int, int, bool]]]:
    """The NAL length size of an H.264 mp4 (from its avcC record) and its video packets in
    decode order: (pts, file offset, size, key frame)."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        avcc = stream.codec_context.extradata
        assert stream.codec_context.name == "h264" and avcc and avcc[0] == 1, \
            f"{path}: not H.264 with length-prefixed (AVCC) NAL units"
        packets = [(p.pts, p.pos, p.size, p.is_keyframe) for p in c.demux(stream) if p.size]
    return (avcc[4] & 3) + 1, packets


def _pyav_decode(path: Path) -> dict:
    """What PyAV's decoder itself says about ``path``, on one thread as the decoding layer
    runs it: every output frame (pts, marked corrupt, RGB pixels) in output order, the pts
    of the frames marked corrupt (error-concealed), the packets it rejected, and FFmpeg's
    messages at warning level or worse."""
    import av
    import av.logging

    frames, rejected = [], 0
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture() as logs, av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.codec_context.thread_count = 1
            for packet in c.demux(stream):  # ends with an empty packet: flushes the decoder
                try:
                    out = stream.decode(packet)
                except av.error.FFmpegError:
                    rejected += 1
                    continue
                frames += [(f.pts, f.is_corrupt, f.to_ndarray(format="rgb24")) for f in out]
    finally:
        av.logging.set_level(level)
    return {"frames": frames, "rejected": rejected,
            "corrupt": [pts for pts, bad, _ in frames if bad],
            "messages": [f"[{name}] {text.strip()}" for _, name, text in logs]}


def _reference_slices(path: Path) -> list[tuple[int, tuple[int, int]]]:
    """(pts, NAL unit) of the slices of an H.264 mp4's reference frames (nal_ref_idc > 0:
    later frames predict from them, so damage spreads) other than key frames, over 64 bytes,
    the packets nearest the middle of the video first."""
    data = path.read_bytes()
    length_size, packets = _avcc_packets(path)
    return [(pts, unit) for _, pts, unit in sorted(
        (abs(i - len(packets) // 2), pts, unit)
        for i, (pts, pos, size, _) in enumerate(packets)
        for unit in _nal_units(data, pos, size, length_size)
        if data[unit[0]] & 0x1F == 1 and data[unit[0]] & 0x60 and unit[1] > 64)]


def _damage_one_slice(data: bytes, nal: tuple[int, int], seed: int) -> tuple[bytes, int, int]:
    """``data`` with random bytes over the last three quarters of one slice NAL unit's
    payload, and the overwritten range: the length fields and the NAL header stay intact,
    and so do the slice header and first macroblocks, so the decoder starts the slice, runs
    into the damage and conceals it (a damaged length field or slice header makes it reject
    the packet: a different damage)."""
    start, n = nal
    lo, hi = start + 1 + n // 4, start + n  # 1: the NAL header byte of slice types 1 and 5
    out = bytearray(data)
    out[lo:hi] = np.random.default_rng(seed).integers(0, 256, hi - lo, np.uint8).tobytes()
    return bytes(out), lo, hi


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict:
    """A clean 4 s H.264 video (100 frames, one GOP, index at the front), a copy with one
    slice in the middle damaged, and one cut at 60% of its bytes.

    The damage does not depend on how the encoder laid out its packets: the packet's NAL units
    are parsed, only the payload of one slice of a reference frame is overwritten, and the
    fixture keeps the first such damage that PyAV's decoder reports (frames marked corrupt
    and error messages, every frame still decoded, no packet rejected). Random bytes can by
    chance decode without the decoder noticing, or be concealed without a message, hence up
    to 8 tries (slices nearest the middle first); the fixture fails if the decoder reports
    none of them."""
    root = tmp_path_factory.mktemp("damaged")
    clean = root / "clean.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-vf",
            "noise=alls=20:allf=t", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "250",
            "-movflags", "+faststart", str(clean))
    data = clean.read_bytes()
    reference = _pyav_decode(clean)
    assert (len(reference["frames"]) == 100 and not reference["corrupt"]
            and not reference["rejected"]), f"{clean}: the clean video does not decode cleanly"
    corrupt = root / "corrupt.mp4"
    tried = []
    for pts, unit in _reference_slices(clean)[:8]:
        damaged_data, lo, hi = _damage_one_slice(data, unit, seed=len(tried))
        corrupt.write_bytes(damaged_data)
        got = _pyav_decode(corrupt)
        tried.append(f"pts {pts}: {len(got['frames'])} frames, {len(got['corrupt'])} corrupt, "
                     f"{got['rejected']} packets rejected, {len(got['messages'])} messages")
        if (got["corrupt"] and got["messages"] and len(got["frames"]) == 100
                and not got["rejected"]):
            break
    else:
        pytest.fail("no damaged slice that PyAV's decoder reports as damaged (frames marked "
                    "corrupt and error messages, all 100 frames decoded, no packet rejected): "
                    + "; ".join(tried))
    (root / "truncated.mp4").write_bytes(data[:int(len(data) * 0.6)])
    (root / "ann.csv").write_text("path,label,split,id\nclean.mp4,a,train,clean\n"
                                  "corrupt.mp4,a,train,corrupt\n"
                                  "truncated.mp4,a,train,truncated\n")
    return {"root": root, "damaged_pts": pts, "damaged_bytes": (lo, hi)}


def test_damaged_fixture_is_damage_the_decoder_reports(damaged):
    """The fixture against PyAV's decoder itself: the clean video decodes without errors or
    messages; the corrupt one differs only inside one slice's payload (every NAL length field
    intact), decodes all 100 frames with messages from the H.264 decoder, the damaged frame
    marked corrupt and unlike the clean one, every frame decoded before it unmarked and
    identical to the clean one."""
    root = damaged["root"]
    clean, corrupt = (root / "clean.mp4").read_bytes(), (root / "corrupt.mp4").read_bytes()
    lo, hi = damaged["damaged_bytes"]
    assert len(clean) == len(corrupt) and clean[:lo] == corrupt[:lo]
    assert clean[hi:] == corrupt[hi:] and clean[lo:hi] != corrupt[lo:hi]
    size, packets = _avcc_packets(root / "corrupt.mp4")
    assert (size, packets) == _avcc_packets(root / "clean.mp4")
    for _, pos, n, _ in packets:  # the same NAL layout: no length field was touched
        assert _nal_units(corrupt, pos, n, size) == _nal_units(clean, pos, n, size)
    ref, got = _pyav_decode(root / "clean.mp4"), _pyav_decode(root / "corrupt.mp4")
    assert ref["corrupt"] == [] and ref["rejected"] == 0 and len(ref["frames"]) == 100
    assert ref["messages"] == []
    assert got["rejected"] == 0 and len(got["frames"]) == 100
    assert any(m.startswith("[h264] ") for m in got["messages"]), got["messages"]
    hit = damaged["damaged_pts"]
    assert hit in got["corrupt"]
    clean_frames = {pts: rgb for pts, _, rgb in ref["frames"]}
    assert not np.array_equal({p: a for p, _, a in got["frames"]}[hit], clean_frames[hit])
    # frames decoded before the damaged packet (decode order; output is display order)
    k = [pts for pts, *_ in packets].index(hit)
    before = {pts for pts, *_ in packets[:k]}
    assert len(before) >= 30
    for pts, marked, rgb in got["frames"]:
        if pts in before:
            assert not marked and np.array_equal(rgb, clean_frames[pts]), pts


def test_damaged_videos_keep_what_decodes_and_say_so(tmp_path, dh, damaged):
    out = tmp_path / "out"
    r = dh.run_prepare(out, "list", damaged["root"] / "ann.csv", damaged["root"],
                       short_side=0, codec="raw")
    assert r.videos == 3 and r.failures == 0 and r.warnings == 2
    rows = {x["id"]: x for x in dh.read_csv(out / "index.csv")}
    warns = {w["id"]: w["warning"] for w in dh.read_csv(out / "warnings.csv")}
    assert set(warns) == {"corrupt", "truncated"}
    # damage in the middle: every frame is there, and every damaged one is counted -- the
    # frame the decoder marks and those predicted from it up to the next key frame (one GOP
    # here), checked against the clean video
    assert rows["corrupt"]["num_frames"] == "100"
    m = re.fullmatch(r"(\d+) frames? decoded with errors; (\d+) frames predicted from damaged "
                     r"frames \(up to the next key frame\)", warns["corrupt"])
    assert m, warns["corrupt"]
    clean = VideoReader(damaged["root"] / "clean.mp4").read(range(100))
    stored = dh.stored_frames(out, rows["corrupt"])
    visibly_damaged = sum(dh.psnr(a, b) < 30 for a, b in zip(stored, clean))
    assert 0 < visibly_damaged <= int(m[1]) + int(m[2])
    # cut at the end: the frames before the cut, and where the stream ends
    m = re.fullmatch(r"decoded (\d+) of 100 frames; (.*; )?stream ends at (\d+\.\d\d) s of "
                     r"4\.00 s", warns["truncated"])
    assert m, warns["truncated"]
    assert int(rows["truncated"]["num_frames"]) == int(m[1]) < 100
    # B-frames just before the cut may be lost while a later frame decoded
    assert int(m[1]) / 25 <= float(m[3]) < 4.0
    # the frames well before the cut are the source's, in order
    ref = _ffmpeg_display_frames(damaged["root"] / "clean.mp4", 40)
    stored = dh.stored_frames(out, rows["truncated"])[:40]
    assert min(dh.psnr(a, b) for a, b in zip(stored, ref)) > 35
    s = __import__("vcorr.pipelines.data.inspect", fromlist=["summarize"]).summarize(out)
    assert s["warnings"] == 2


@pytest.fixture(scope="module")
def bframe_damage(tmp_path_factory, dh) -> dict:
    """A clean 4 s H.264 video with B-frames (crf 30, ``-bf 2``: frames decoded after a
    reference frame are shown before it) and two copies with one slice of a reference frame
    damaged, as in ``damaged`` (nearest the middle first, up to 8 tries):

    * ``silent``: PyAV's decoder marks a frame corrupt (it concealed the damage) but says
      nothing at warning level or worse, nor rejects a packet;
    * ``bframes``: a damage the decoder marks, where frames shown *before* the marked one
      differ visibly (PSNR < 30 dB) from the clean video: B-frames predicted from it.

    Every damage that FFmpeg reports is one of the two kinds or both; some damages decode
    without any sign (the random bytes parse as valid data) and are skipped."""
    root = tmp_path_factory.mktemp("bframes")
    clean = root / "clean.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-vf",
            "noise=alls=20:allf=t", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "250",
            "-crf", "30", "-bf", "2", "-movflags", "+faststart", str(clean))
    data = clean.read_bytes()
    reference = _pyav_decode(clean)
    assert len(reference["frames"]) == 100 and not reference["corrupt"]
    found: dict = {"root": root, "clean": clean}
    tried = []
    for seed, (pts, unit) in enumerate(_reference_slices(clean)[:8]):
        path = root / f"damage{seed}.mp4"
        path.write_bytes(_damage_one_slice(data, unit, seed=seed)[0])
        got = _pyav_decode(path)
        shown = [p for p, *_ in got["frames"]]
        visible = [dh.psnr(a, b) < 30 for (_, _, a), (_, _, b)
                   in zip(got["frames"], reference["frames"])]
        tried.append(f"pts {pts}: {len(got['corrupt'])} corrupt, {len(got['messages'])} "
                     f"messages, {sum(visible)} visibly damaged")
        if not got["corrupt"] or got["rejected"] or len(shown) != 100:
            continue
        if not got["messages"]:
            found.setdefault("silent", path)
        if any(visible[:shown.index(got["corrupt"][0])]):
            found.setdefault("bframes", path)
        if "silent" in found and "bframes" in found:
            return found
    pytest.fail(f"found only {sorted(found)} of silent and bframes damage: " + "; ".join(tried))


def _visibly_damaged(path: Path, clean: Path) -> int:
    """Frames of ``path`` (through the layer, on its default path) below 30 dB PSNR against
    the same frames of the clean video: damage anyone would see."""
    from conftest import psnr

    got, ref = VideoReader(path).read(range(100)), VideoReader(clean).read(range(100))
    return sum(psnr(a, b) < 30 for a, b in zip(got, ref))


def test_damage_concealed_without_a_message_is_reported_on_the_fast_path(bframe_damage):
    """FFmpeg conceals the damage and marks the frame corrupt, but says nothing an ERROR-level
    log shows: decord (which hides the corrupt flag) must not pass the file as clean. The
    clean file still takes the fast path."""
    clean = VideoReader(bframe_damage["clean"])
    clean.read(range(100))
    assert clean.decord_ok and clean.report.decoder == "decord"
    assert clean.report.problem() is None and clean.report.log == []
    reader = VideoReader(bframe_damage["silent"])
    assert reader.decord_ok  # nothing in the container says it is damaged
    reader.read(range(100))
    rep = reader.report
    assert rep.problem() is not None and rep.frames_corrupt >= 1
    assert any("concealing" in line for line in rep.log), rep.log
    visible = _visibly_damaged(bframe_damage["silent"], bframe_damage["clean"])
    assert 0 < visible <= rep.frames_corrupt + rep.frames_after_damage


@pytest.mark.parametrize("force_pyav", [False, True])
def test_b_frames_shown_before_a_damaged_frame_are_counted(bframe_damage, force_pyav):
    """B-frames decoded after a damaged reference frame but shown before it predict from it:
    the damaged-frame count covers every frame that differs visibly from the clean video."""
    reader = VideoReader(bframe_damage["bframes"], force_pyav=force_pyav)
    reader.read(range(100))
    rep = reader.report
    visible = _visibly_damaged(bframe_damage["bframes"], bframe_damage["clean"])
    assert rep.frames_corrupt >= 1 and 0 < visible <= rep.frames_corrupt + rep.frames_after_damage


def test_damage_spreads_in_decode_order_up_to_the_key_frames():
    """A hand-made stream: I0 P3 b1 b2 P6 b4 b5 P9 b7 b8, then an open-GOP key frame I12 whose
    leading frames b10 b11 predict from before it, P15 b13 b14, a second key frame I18, a
    rejected packet, P21. P6 is marked corrupt: b4 b5 (shown before it, decoded after) and
    P9 b7 b8 are damaged; so are b10 b11 (shown before I12), not P15 b13 b14 (after I12); and
    P21, decoded after the rejected packet."""
    from vcorr.pipelines.data.decode import DecodedFrame, count_damage

    layout = [(0, True), (3, False), (1, False), (2, False), (6, False), (4, False),
              (5, False), (9, False), (7, False), (8, False), (12, True), (10, False),
              (11, False), (15, False), (13, False), (14, False), (18, True), (16, False),
              (17, False), (None, False), (21, False)]
    frames = [DecodedFrame(pos, n, n == 6, key) for pos, (n, key) in enumerate(layout)
              if n is not None]
    rejected = [pos for pos, (n, _) in enumerate(layout) if n is None]
    # output (presentation) order must not matter
    frames.sort(key=lambda f: f.number)
    assert count_damage(frames, rejected) == (1, 5 + 2 + 1)
    assert count_damage(frames) == (1, 7)
    assert count_damage([f for f in frames if f.number != 6]) == (0, 0)


def test_strict_turns_warnings_into_failures(tmp_path, dh, damaged):
    out = tmp_path / "out"
    r = dh.run_prepare(out, "list", damaged["root"] / "ann.csv", damaged["root"],
                       short_side=0, strict=True)
    assert r.videos == 1 and r.warnings == 0 and r.failures == 2
    for f in dh.read_csv(out / "failures.csv"):
        assert f["reason"].startswith("damaged video: ") and f["reason"].endswith("(--strict)")


def test_decoder_messages_go_to_the_log_not_the_terminal(tmp_path, damaged):
    """decord (whose FFmpeg prints on stderr) and PyAV both see the damaged files, in this
    process and in worker processes: stderr stays clean, prepare.log has every message."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "vcorr.cli.main", "prepare", "--format", "list",
                           "--annotations", str(damaged["root"] / "ann.csv"),
                           "--root", str(damaged["root"]), "--out", str(out),
                           "--workers", "2", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "2 warnings" in proc.stdout
    log = (out / "prepare.log").read_text()
    assert re.search(r"^\[corrupt\] .*h264", log, re.M)
    assert re.search(r"^\[truncated\] ", log, re.M)
    assert "[clean]" not in log


# --------------------------------------------------------------------------- memory
def test_large_frames_are_decoded_a_few_at_a_time(tmp_path, monkeypatch):
    """No chunk holds more than CHUNK_BYTES of full-size frames (a 4K video at 24.9 MB a frame
    is decoded two frames at a time), on both decoders."""
    path = tmp_path / "hd.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x480:rate=10:duration=1", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    monkeypatch.setattr(decode, "CHUNK_BYTES", 3 * 640 * 480 * 3)
    for force_pyav in (False, True):
        sizes: list[int] = []
        reader = VideoReader(path, force_pyav=force_pyav)
        report = reader.decode(lambda c: sizes.append(len(c.numbers)))
        assert report.decoder == ("pyav" if force_pyav else "decord")
        assert sum(sizes) == 10 and max(sizes) == 3


# --------------------------------------------------------------------------- file locking
def test_shards_are_read_without_hdf5_file_locking(tmp_path, list_prepared):
    """On NFS/Lustre HDF5's locks fail; readers open shards without them. Shown here by
    reading while another process holds the shard open for writing, which a locking reader
    cannot (it fails with 'unable to lock file')."""
    from vcorr.pipelines.data.inspect import read_index
    from vcorr.pipelines.data.shards import ShardReader, read_shard_tables

    row = read_index(list_prepared)[0]
    shard = tmp_path / row["shard"]
    shard.write_bytes((list_prepared / "shards" / row["shard"]).read_bytes())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
         "print('open', flush=True); time.sleep(60)", str(shard)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(OSError, match="lock"):
            h5py.File(shard, "r")  # the default: locking
        assert read_shard_tables(shard).manifest
        reader = ShardReader(tmp_path)
        assert len(reader.read_encoded(row["shard"], row["id"], [0, 1])) == 2
        reader.close()
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- benchmarks
def test_bench_prepare_runs_both_sides_on_the_same_frames(tmp_path, dh):
    """The benchmark times prepare and ffmpeg on the same kept frames (it refuses to compare
    otherwise) and records the figures."""
    import json

    from click.testing import CliRunner

    from vcorr.cli.main import cli

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", dh.synth_frames(12, seed=1), fps=12.0)
    write_video(videos / "b.mp4", dh.synth_frames(9, seed=2), fps=12.0)
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "prepare", str(videos), "--workers", "1",
                                 "--every", "2", "--short-side", "32", "--repeats", "1",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["videos"] == 2 and res["frames_kept"] == 6 + 5
    assert set(res["seconds"]) == {"prepare_workers_1", "ffmpeg_parallel_1"}
    assert all(v > 0 for v in res["bytes_per_frame"].values())
    assert "prepare vs ffmpeg" in r.output


def test_bench_loader_decodes_the_source_through_the_decoding_layer(list_prepared):
    from vcorr.pipelines.bench.loader import bench_loader

    r = bench_loader(list_prepared, clips=4, frames=4, repeats=1)
    assert r["decord_clips_per_s"] > 0 and r["shard_clips_per_s"] > 0


def test_inspect_names_classes_left_without_videos(tmp_path, dh, damaged):
    """A class whose every video failed still has a model output: inspect says so."""
    from vcorr.pipelines.data.inspect import summarize

    ann = tmp_path / "ann.csv"
    ann.write_text("path,label,split,id\nclean.mp4,a,train,clean\nnot_there.mp4,b,train,gone\n")
    out = tmp_path / "out"
    dh.run_prepare(out, "list", ann, damaged["root"], short_side=32)
    s = summarize(out)
    assert s["num_classes"] == 2 and s["classes_without_videos"] == ["b"]


def test_visualize_reads_files_through_the_layer_and_says_when_one_is_damaged(damaged):
    from vcorr.pipelines.visualize.clip import read_clip

    clean = read_clip(damaged["root"] / "clean.mp4", 8, 2, "dense")
    assert clean.warning is None and clean.frames.shape == (8, 120, 160, 3)
    hurt = read_clip(damaged["root"] / "corrupt.mp4", 8, 2, "dense")
    assert hurt.warning and "decoded with errors" in hurt.warning
