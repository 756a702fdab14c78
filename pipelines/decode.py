"""MP4 in and out with PyAV, and the frame geometry (centre crop, resize).

Frames are ``uint8 [T, H, W, C]`` everywhere in this module. MP4s are yuv420p
(H.264 through libx264 when FFmpeg has it, else MPEG-4 part 2); a grayscale video
is written from its single channel (neutral chroma) and decoded back to one
channel as the luma plane, so ``C = 1`` survives the round trip.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

_CODECS = ("libx264", "mpeg4")


class DecodeError(ValueError):
    """The bytes are not a video PyAV can decode (garbage, truncated, no video stream)."""


def _codec() -> str:
    import av

    for name in _CODECS:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"PyAV's FFmpeg has none of the encoders {_CODECS}")


def encode_mp4(frames: np.ndarray, fps: float, *, quality: int = 12) -> bytes:
    """Encode frames into an in-memory MP4.

    Args:
        frames: ``uint8 [T, H, W, C]`` with ``C`` in ``{1, 3}`` and even ``H, W``.
        fps: frames per second written in the container.
        quality: CRF (libx264) or qscale (mpeg4); lower is better, 0-51.

    Returns:
        The MP4 file as bytes.
    """
    import av

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(
            f"frames: expected uint8 [T, H, W, 1|3], got {frames.dtype} {frames.shape}"
        )
    t, h, w, c = frames.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"frames: need T > 0 and even H, W for yuv420p, got {frames.shape}")
    codec = _codec()
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(quality), "preset": "veryfast"}
        else:
            stream.codec_context.qscale = max(1, quality // 4)
        fmt = "gray" if c == 1 else "rgb24"
        for frame in frames:
            image = frame[..., 0] if c == 1 else frame  # (H, W) or (H, W, 3)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(
    data: bytes,
    *,
    channels: int = 3,
    start: int = 0,
    stride: int = 1,
    max_frames: int | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Decode frames ``start, start + stride, ...`` (at most ``max_frames``) of an MP4.

    Decoding stops as soon as the clip is complete, so a short clip from a long
    video costs only its prefix.

    Args:
        data: the MP4 (or any container FFmpeg reads) as bytes.
        channels: 1 (luma) or 3 (RGB).
        start: index of the first frame kept.
        stride: keep every ``stride``-th frame from ``start``.
        max_frames: stop after this many kept frames (``None``: to the end).
        threads: FFmpeg decoding threads.

    Returns:
        ``uint8 [T, H, W, channels]``; ``T`` may be 0 if the video ends before ``start``.

    Raises:
        DecodeError: the bytes are not a decodable video.
    """
    import av

    fmt = "gray" if channels == 1 else "rgb24"
    kept: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            stream.thread_count = threads
            for i, frame in enumerate(container.decode(stream)):
                if i >= start and (i - start) % stride == 0:
                    kept.append(to_array(frame, fmt))  # (H, W) or (H, W, 3)
                    if max_frames is not None and len(kept) >= max_frames:
                        break
    except (av.FFmpegError, av.error.InvalidDataError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from None
    if not kept:
        return np.zeros((0, 0, 0, channels), dtype=np.uint8)
    video = np.stack(kept)  # (T, H, W) or (T, H, W, 3)
    if channels == 1:
        video = video[..., None]  # (T, H, W, 1)
    return video


def to_array(frame, fmt: str) -> np.ndarray:
    """One decoded frame as ``fmt`` (``gray``: ``(H, W)``, ``rgb24``: ``(H, W, 3)``).

    One swscale thread: left to itself, PyAV's reformatter starts its own threads for
    every frame it converts and joins them after, which cost 4x the decode itself: 9.3
    against 2.1 ms a 16-frame 64x64 clip on this machine, the same pixels either way
    (``benchmarks/decode_probe.py``). Readers run in parallel processes, so a frame has
    no use for more than one thread.
    """
    return frame.to_ndarray(format=fmt, threads=1)


def centre_crop_resize(video: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop each frame to a square and resize it to ``size x size``.

    Args:
        video: ``uint8 [T, H, W, C]``.
        size: output side.

    Returns:
        ``uint8 [T, size, size, C]`` (the input itself when it already has that size).
    """
    import cv2

    t, h, w, c = video.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    video = video[:, top : top + side, left : left + side]  # (T, side, side, C)
    if side == size:
        return np.ascontiguousarray(video)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    out = np.empty((t, size, size, c), dtype=np.uint8)
    for i in range(t):
        frame = cv2.resize(video[i], (size, size), interpolation=interp)
        out[i] = frame.reshape(size, size, c)
    return out
