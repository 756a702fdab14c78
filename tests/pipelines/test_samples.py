"""Tolerant tar scan, grouping by key, clip plan and seeded orders."""

from __future__ import annotations

import subprocess
from collections import Counter

import numpy as np
import pytest

from flowception.pipelines.samples import plan_clip, read_samples, sample_rng, scan_tar, shard_order

from .conftest import meta_json, tar_bytes, tiny_mp4


def _good(n: int) -> list[tuple[str, bytes]]:
    members = []
    for i in range(n):
        members += [(f"k{i}.json", meta_json()), (f"k{i}.mp4", tiny_mp4(frames=2 + i))]
    return members


def test_groups_members_by_key_in_tar_order():
    samples = read_samples(tar_bytes(_good(3)))
    assert [s.key for s in samples] == ["k0", "k1", "k2"]
    assert all(s.skip is None and set(s.parts) == {"json", "mp4"} for s in samples)
    assert samples[1].meta.num_frames == 4


def test_gnu_tar_archive_with_dot_prefix(tmp_path):
    for name, data in _good(2):
        (tmp_path / name).write_bytes(data)
    out = tmp_path.parent / f"{tmp_path.name}.tar"
    subprocess.run(["tar", "--sort=name", "-C", str(tmp_path), "-cf", str(out), "."], check=True)
    samples = read_samples(out.read_bytes())
    assert [s.key for s in samples] == ["k0", "k1"]
    assert samples[0].parts["mp4"] == dict(_good(2))["k0.mp4"]


def test_each_bad_sample_gets_its_reason_and_good_ones_survive():
    members = _good(1)
    members += [("nojson.mp4", tiny_mp4())]
    members += [("novideo.json", meta_json())]
    members += [("badjson.json", b'{"fps": 1}'), ("badjson.mp4", tiny_mp4())]
    members += [("notjson.json", b"\x00\x01"), ("notjson.mp4", tiny_mp4())]
    members += [(n.replace("k0", "k9"), d) for n, d in _good(1)]
    members += [("k0.txt", b"again")]  # k0 again, after its run ended
    samples = read_samples(tar_bytes(members))
    assert [(s.key, s.skip) for s in samples] == [
        ("k0", None),
        ("nojson", "missing_json"),
        ("novideo", "missing_video"),
        ("badjson", "bad_json"),
        ("notjson", "bad_json"),
        ("k9", None),
        ("k0", "duplicate_key"),
    ]
    skips = Counter(s.skip for s in samples)
    assert skips == Counter(
        {None: 2, "missing_json": 1, "missing_video": 1, "bad_json": 2, "duplicate_key": 1}
    )
    assert [s.key for s in samples if s.skip is None] == ["k0", "k9"]


def test_truncated_archive_keeps_the_samples_before_the_cut():
    data = tar_bytes(_good(3))
    cut = data.index(b"k2.mp4") + 512 + 100  # inside k2.mp4's data
    samples = read_samples(data[:cut])
    assert [(s.key, s.skip) for s in samples] == [("k0", None), ("k1", None), ("k2", "truncated")]


def test_damaged_header_resyncs_to_the_next_member():
    data = bytearray(tar_bytes(_good(3)))
    at = data.index(b"k1.json")
    data[at : at + 512] = b"\xff" * 512  # k1.json's header is garbage now
    samples = read_samples(bytes(data))
    kinds = [(s.key.split("@")[0], s.skip) for s in samples]
    assert ("k0", None) in kinds and ("k2", None) in kinds
    assert ("?", "corrupt_tar") in kinds and ("k1", "missing_json") in kinds


def test_shortened_member_misaligns_headers_and_still_resyncs():
    data = tar_bytes(_good(4))
    at = data.index(b"k1.mp4") + 512  # start of k1.mp4's data
    broken = data[: at + 10] + data[at + 300 :]  # 290 bytes gone: every later header moved
    samples = read_samples(broken)
    # k1.mp4 now swallows k2.json's header (k1 will fail to decode, k2 has no json);
    # the scan finds k2.mp4's header off the 512-byte grid, and k3 is whole again.
    by_key = {s.key: s.skip for s in samples if "@" not in s.key}
    assert by_key["k0"] is None and by_key["k3"] is None
    assert by_key["k2"] == "missing_json"


def test_garbage_file_is_one_corrupt_record():
    samples = read_samples(b"x" * 3000)
    assert [s.skip for s in samples] == ["corrupt_tar"]
    assert list(scan_tar(bytes(2048))) == []  # an empty archive is fine


@pytest.mark.parametrize(
    ("total", "kw", "expect"),
    [
        (10, dict(max_frames=4, min_frames=2, stride=1), (0, 4)),
        (10, dict(max_frames=8, min_frames=2, stride=2), (0, 5)),
        (3, dict(max_frames=8, min_frames=2, stride=1), (0, 3)),
        (3, dict(max_frames=8, min_frames=2, stride=3), None),
        (0, dict(max_frames=8, min_frames=1, stride=1), None),
    ],
)
def test_plan_clip_lengths(total, kw, expect):
    assert plan_clip(total, random_start=False, **kw) == expect


def test_random_start_is_uniform_over_valid_offsets_and_seeded():
    starts = Counter()
    for i in range(2000):
        start, length = plan_clip(
            10,
            max_frames=3,
            min_frames=1,
            stride=2,
            random_start=True,
            rng=sample_rng(0, 0, str(i)),
        )
        assert length == 3 and start + (length - 1) * 2 <= 9
        starts[start] += 1
    assert set(starts) == {0, 1, 2, 3, 4, 5}
    assert min(starts.values()) > 250  # ~333 each
    a = plan_clip(
        10, max_frames=3, min_frames=1, stride=1, random_start=True, rng=sample_rng(1, 2, "k")
    )
    b = plan_clip(
        10, max_frames=3, min_frames=1, stride=1, random_start=True, rng=sample_rng(1, 2, "k")
    )
    assert a == b


def test_shard_order_is_a_seeded_permutation():
    a = shard_order(50, seed=3, epoch=1, salt="s", shuffle=True)
    assert sorted(a) == list(range(50))
    assert a == shard_order(50, seed=3, epoch=1, salt="s", shuffle=True)
    assert a != shard_order(50, seed=3, epoch=2, salt="s", shuffle=True)
    assert shard_order(5, seed=3, epoch=1, salt="s", shuffle=False) == [0, 1, 2, 3, 4]
    assert not np.array_equal(a, sorted(a))
