"""Training on VAE latents end to end, on the real components: a tiny real diffusers image
VAE (random weights, ``save_pretrained``), ``data encode`` into moto S3, 2 Ray Train
workers on the latent shards with a worker killed and resumed, ``flowception eval`` on
decoded pixels, the VAE recorded in MLflow and in the checkpoints, and each mismatch an
error before any work starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from flowception.cluster import checkpoint
from flowception.cluster.config import load_config
from flowception.cluster.launch import launch
from flowception.pipelines import schema
from flowception.pipelines.decode import encode_mp4
from flowception.pipelines.encode import EncodeJob, run_encode
from flowception.pipelines.latents import save_random_vae, vae_sha256
from flowception.pipelines.shards import ShardWriter
from flowception.pipelines.sources import moving_mnist

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
STEPS = 4
TIMING = {"steps_per_s", "time_per_step_s", "visible_tokens_per_s", "mfu_cpu", "train_flops"}
# train_flops: a cumulative count whose resume is tested with pixels (tests/cluster/test_train_ray.py)


def _pixels(out: Path, n: int, seed: int) -> Path:
    with ShardWriter(str(out), max_samples=5, meta={"size": 16}) as w:
        for clip in moving_mnist(n, size=16, min_frames=2, max_frames=6, seed=seed):
            t, h, wd, _ = clip.frames.shape
            meta = schema.SampleMeta(clip.fps, t, h, wd, clip.source, label=clip.label)
            w.add(clip.key, encode_mp4(clip.frames, clip.fps), meta)
    return out


@pytest.fixture(scope="module")
def latents(tmp_path_factory, s3_endpoint, mlflow_server, ray_local):
    """S3 first (its environment must exist before Ray's workers start), then encode."""
    import s3fs

    root = tmp_path_factory.mktemp("latent-run")
    vae = save_random_vae("image", str(root / "vae"))
    bucket = f"s3://lat-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket[5:])
    for split, n, seed in (("train", 10, 0), ("test", 4, 1)):
        src = _pixels(root / "pixels" / split, n, seed)
        job = EncodeJob(src=str(src), out=f"{bucket}/lat/{split}", vae_dir=vae, size=16,
                        s3_endpoint=s3_endpoint)  # fmt: skip
        run_encode(job, actors=1)
    return {"root": root, "vae": vae, "shards": f"{bucket}/lat/train", "s3": s3_endpoint,
            "mlflow": mlflow_server}  # fmt: skip


def _cfg(lat, name: str, *extra: str):
    return load_config(
        ROOT / "configs/latent-cpu.yaml",
        [
            f"data.shards={lat['shards']}", f"data.vae_dir={lat['vae']}",
            "model.frame_size=[8, 8]", "data.num_frames=6", "data.frame_budget=12",
            "data.max_batch_size=4", "data.epochs=3", f"steps={STEPS}", "optim.warmup_steps=1",
            "checkpoint.every_steps=2", "checkpoint.keep=null", "tracking.log_every=1",
            f"tracking.sample_every={STEPS}", "tracking.num_samples=1", "tracking.sample_steps=2",
            "method.max_frames=6", f"tracking.tracking_uri={lat['mlflow']}",
            "tracking.experiment=test-latents", "cluster.max_failures=1",
            f"cluster.storage_path={lat['root'] / 'runs'}", f"cluster.name={name}", *extra,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_a(latents):
    return launch(_cfg(latents, "a"))


def test_latent_run_records_its_vae_and_logs_decoded_samples(run_a, latents, tmp_path):
    import mlflow
    from PIL import Image

    sha = vae_sha256(latents["vae"])
    client = mlflow.MlflowClient(latents["mlflow"])
    run = client.get_run(run_a.mlflow_run_id)
    assert run.data.params["data.vae"] == "image"
    assert run.data.params["data.vae_sha256"] == sha
    steps = [s for s, _ in checkpoint.list_checkpoints(run_a.run_uri)]
    assert steps == [2, 4]
    saved = yaml.safe_load(
        (Path(run_a.run_uri) / checkpoint.step_dir_name(4) / "config.yaml").read_text()
    )
    assert saved["data"]["vae_sha256"] == sha and saved["model"]["in_channels"] == 4
    art = client.download_artifacts(run_a.mlflow_run_id, "samples/step_0000004", str(tmp_path))
    gifs = sorted(Path(art).glob("*.gif"))
    assert gifs and Image.open(gifs[0]).size == (16, 16)  # 8x8 latents decoded to 16x16 pixels
    assert "sample_video_length_mean" in run.data.metrics


def test_killed_worker_resumes_latent_run_with_the_same_metrics(run_a, latents, tmp_path):
    import mlflow

    marker = tmp_path / "fired"
    b = launch(_cfg(latents, "b"), worker_env={"FLOWCEPTION_FAULT": f"step:3:1:{marker}"})
    assert marker.exists()  # rank 1 died after step 3, the group restarted from step 2
    client = mlflow.MlflowClient(latents["mlflow"])
    keys = {k for k in client.get_run(run_a.mlflow_run_id).data.metrics
            if k not in TIMING and not k.startswith("system/")}  # fmt: skip
    assert {"loss", "loss_velocity", "loss_insertion", "data/samples"} <= keys

    def history(run_id: str, key: str) -> dict[int, float]:
        rows = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        return {m.step: m.value for m in rows}

    for key in sorted(keys):
        assert history(b.mlflow_run_id, key) == history(run_a.mlflow_run_id, key), key


def test_eval_decodes_latents_and_refuses_another_vae(run_a, latents, i3d_weights, tmp_path):
    import mlflow

    from flowception.eval.job import load_job_config, run_eval

    ckpt = f"{run_a.run_uri}/{checkpoint.step_dir_name(STEPS)}"
    overrides = [
        f"eval.detector={i3d_weights}", "eval.metrics=[length, temporal_flickering]",
        "num_videos=2", "batch_size=2", f"output_dir={tmp_path / 'eval'}",
        f"endpoint_url={latents['s3']}", "sampler.num_steps=2",
    ]  # fmt: skip
    other = save_random_vae("image", str(tmp_path / "other-vae"), seed=5)
    with pytest.raises(ValueError, match=r"vae_dir=.*other-vae: VAE sha256 .* is not the one"):
        run_eval(load_job_config(ckpt, [*overrides, f"vae_dir={other}"]))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        run_eval(load_job_config(ckpt, [*overrides, f"vae_dir={tmp_path / 'none'}"]))
    assert not (tmp_path / "eval").exists()  # refused before any work

    result = run_eval(load_job_config(ckpt, overrides))
    assert result.params["vae.sha256"] == vae_sha256(latents["vae"])
    assert {"length/mean_generated", "length_latent/mean_generated"} <= set(result.metrics)
    # image VAE: one latent frame per video frame, so both laws agree
    assert result.metrics["length/mean_data"] == result.metrics["length_latent/mean_data"]
    from PIL import Image

    gif = sorted((result.output_dir / "videos").glob("*.gif"))[0]
    assert Image.open(gif).size == (16, 16)  # pixels, decoded before the I3D stage
    child = mlflow.MlflowClient(latents["mlflow"]).get_run(result.mlflow_run_id)
    assert child.data.params["vae.sha256"] == vae_sha256(latents["vae"])


def test_mismatches_fail_before_any_work(latents, tmp_path):
    cases = [
        (["model.in_channels=1"], ValueError, "model.in_channels=1: .* latents with 4 channels"),
        (["model.frame_size=[16, 16]"], ValueError, r"model.frame_size=\[16, 16\]: .* 8x8"),
        ([f"data.vae_dir={tmp_path / 'missing'}"], FileNotFoundError, "no config.json"),
        (["data.vae=video"], ValueError, "holds latents of an 'image' VAE"),
    ]
    for extra, error, message in cases:
        cfg = _cfg(latents, f"bad-{len(extra[0])}", *extra)
        with pytest.raises(error, match=message):
            launch(cfg)
        assert not (latents["root"] / "runs" / cfg.run_name()).exists()


def test_video_vae_latents_train_and_evaluate_in_both_frame_counts(latents, i3d_weights, tmp_path):
    """The video VAE (``AutoencoderKLLTXVideo``, temporal compression 2) on the same path:
    encode into S3, 2 Ray Train workers on its latents, eval decodes them; the length law is
    reported in latent frames and in video frames, related by ``T = 1 + 2 (T' - 1)``."""
    from PIL import Image

    from flowception.eval.job import load_job_config, run_eval

    vae = save_random_vae("video", str(tmp_path / "vae-video"))
    bucket = latents["shards"].rsplit("/lat/", 1)[0]
    shards = {}
    for split, n, seed in (("train", 10, 2), ("test", 4, 3)):
        src = tmp_path / "pixels" / split
        with ShardWriter(str(src), max_samples=5, meta={"size": 16}) as w:
            for clip in moving_mnist(n, size=16, min_frames=5, max_frames=9, seed=seed):
                t, h, wd, _ = clip.frames.shape
                meta = schema.SampleMeta(clip.fps, t, h, wd, clip.source, label=clip.label)
                w.add(clip.key, encode_mp4(clip.frames, clip.fps), meta)
        job = EncodeJob(src=str(src), out=f"{bucket}/vlat/{split}", vae_dir=vae,
                        vae_kind="video", size=16, s3_endpoint=latents["s3"])  # fmt: skip
        run_encode(job, actors=1)
        shards[split] = job.out
    lat = {**latents, "shards": shards["train"], "vae": vae}
    run = launch(_cfg(lat, "video", "data.vae=video", "model.frame_size=[4, 4]",
                      "model.patch_size=2", "data.num_frames=5", "method.max_frames=5",
                      "cluster.max_failures=0"))  # fmt: skip
    assert [s for s, _ in checkpoint.list_checkpoints(run.run_uri)] == [2, 4]
    ckpt = f"{run.run_uri}/{checkpoint.step_dir_name(STEPS)}"
    result = run_eval(load_job_config(ckpt, [
        f"eval.detector={i3d_weights}", "eval.metrics=[length, temporal_flickering]",
        "num_videos=2", "batch_size=2", f"output_dir={tmp_path / 'eval'}",
        f"endpoint_url={latents['s3']}", "sampler.num_steps=2", f"shards={shards['test']}",
    ]))  # fmt: skip
    m = result.metrics
    assert m["length_latent/mean_data"] >= 3  # 5-9 video frames -> 3-5 latent frames
    for side in ("generated", "data"):
        video, latent = m[f"length/mean_{side}"], m[f"length_latent/mean_{side}"]
        assert video == pytest.approx(1 + 2 * (latent - 1)), side
    gif = sorted((result.output_dir / "videos").glob("*.gif"))[0]
    with Image.open(gif) as im:
        assert im.size == (16, 16)  # 4x4 latents decoded to 16x16 pixels
        assert im.n_frames % 2 == 1  # 1 + 2 (T' - 1) video frames
