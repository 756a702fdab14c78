"""The shard format: metadata parsing and member names."""

from __future__ import annotations

import json

import pytest

from flowception.pipelines import schema


def test_meta_round_trip_with_optional_fields():
    meta = schema.SampleMeta(12.5, 9, 32, 48, "src", caption="a cat", label=3)
    assert schema.parse_meta(meta.to_json()) == meta
    bare = schema.SampleMeta(10.0, 4, 8, 8, "src")
    assert "label" not in json.loads(bare.to_json())
    assert schema.parse_meta(bare.to_json()).label is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"fps": 10, "num_frames": 4, "height": 8, "width": 8}', "'source'"),
        (b'{"fps": 10, "num_frames": "4", "height": 8, "width": 8, "source": "s"}', "num_frames"),
        (b'{"fps": 10, "num_frames": 0, "height": 8, "width": 8, "source": "s"}', "num_frames"),
        (
            b'{"fps": 10, "num_frames": 4, "height": 8, "width": 8, "source": "s", "label": true}',
            "label",
        ),
    ],
)
def test_bad_meta_names_the_problem(raw, message):
    with pytest.raises(ValueError, match=message):
        schema.parse_meta(raw)


def test_member_names():
    assert schema.member_name("abc_01", "mp4") == "abc_01.mp4"
    assert schema.split_member("abc_01.mp4") == ("abc_01", "mp4")
    assert schema.split_member("./dir/abc.tar.gz") == ("dir/abc", "tar.gz")
    assert schema.split_member("noext") is None
    with pytest.raises(ValueError):
        schema.member_name("a.b", "mp4")
    assert schema.shard_name(12) == "shard-000012.tar"
