"""Sample videos as files for MLflow: one animated GIF or MP4 per video."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from torch import Tensor


def to_uint8(video: Tensor) -> np.ndarray:
    """``[F, C, H, W]`` in ``[-1, 1]`` -> ``uint8 [F, H, W, 3]`` (grey repeated to RGB)."""
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()  # (F, C, H, W)
    frames = frames.permute(0, 2, 3, 1).cpu().numpy()  # (F, H, W, C)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)  # (F, H, W, 3)
    return frames[..., :3]


def write_video(
    video: Tensor, path: Path, fmt: Literal["gif", "mp4"] = "gif", fps: int = 4
) -> Path:
    """Write one ``[F, C, H, W]`` video in ``[-1, 1]``; returns the path (with suffix)."""
    frames = to_uint8(video)
    path = path.with_suffix(f".{fmt}")
    if fmt == "gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    else:
        import av

        pad = [(0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)]
        frames = np.pad(frames, pad)  # yuv420p needs even sizes
        with av.open(str(path), "w") as out:
            stream = out.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = (
                frames.shape[2],
                frames.shape[1],
                "yuv420p",
            )
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return path
