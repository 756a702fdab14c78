"""The extractor as a Ray Data ``map_batches`` actor on the shared local Ray cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowception.eval.i3d import I3DFeatureExtractor


@pytest.mark.slow
def test_map_batches_actor_matches_direct_call(ray_local, i3d_weights: Path):
    import ray.data

    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (4, 16, 48, 48, 3), dtype=np.uint8)
    ds = ray.data.from_items([{"key": f"v{i}", "video": v} for i, v in enumerate(videos)])
    out = ds.map_batches(
        I3DFeatureExtractor,
        fn_constructor_kwargs={"weights": str(i3d_weights), "size": 64},
        batch_size=2,
        batch_format="numpy",
        concurrency=1,
    ).take_all()
    got = {row["key"]: row["features"] for row in out}
    direct = I3DFeatureExtractor(i3d_weights, size=64, batch_size=2).features(videos)
    assert sorted(got) == ["v0", "v1", "v2", "v3"]
    for i in range(4):
        assert got[f"v{i}"].shape == (400,)
        np.testing.assert_allclose(got[f"v{i}"], direct[i], rtol=1e-4, atol=1e-3)
