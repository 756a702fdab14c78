"""Typed, frozen, validated configuration of the network and of the method.

``ModelConfig`` describes the DiT backbone (spec section 7), ``MethodConfig`` the
training law and sampler (spec sections 3-10). Both round-trip through
``to_dict()`` / ``from_dict()`` (MLflow params, Ray ``train_loop_config``) and
reject unknown keys and invalid values with a ``ValueError`` naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from flowception.config import Config

Method = Literal["flowception", "full_sequence", "autoregressive"]
Task = Literal["unconditional", "image_to_video", "interpolation", "continuation"]
AttentionBackend = Literal["auto", "flash", "sdpa", "cpu", "dense"]


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name}={value!r}: must be > 0")


# --------------------------------------------------------------------------- #
#                                   Model                                     #
# --------------------------------------------------------------------------- #


class ModelConfig(Config):
    """The DiT backbone with per-frame conditioning (spec section 7)."""

    in_channels: int = 1
    """Channels ``C`` of one frame (pixels or latents); the input has ``2C`` (context stream)."""
    frame_size: tuple[int, int] = (32, 32)
    """``(H, W)`` of one frame; must be divisible by ``patch_size``."""
    patch_size: int = 4
    """Spatial patch size ``p``."""
    width: int = 64
    """Transformer width ``D``."""
    depth: int = 2
    """Number of transformer blocks."""
    heads: int = 2
    """Attention heads; ``D / heads`` must be even and split across 3 rotary axes."""
    mlp_ratio: float = 4.0
    """Hidden size of the MLP relative to ``D``."""
    num_classes: int = 0
    """Class-conditional when > 0 (labels in ``[0, num_classes)``); a learned null embedding is added."""
    rate_head: Literal["exp", "softplus"] = "exp"
    """Positive map of the rate head's output ``l`` (spec E16)."""
    attention_backend: AttentionBackend = "auto"
    """``auto``: flash-attn varlen on CUDA if installed, else SDPA; exact per-segment SDPA on CPU."""
    attention: Literal["bidirectional", "causal"] = "bidirectional"
    """Frame-level attention pattern within a video (``causal`` for the AR baseline)."""
    window: int | None = None
    """Local attention: a frame attends to frames whose visible rank differs by at most this."""
    qk_norm: bool = True
    """RMS-normalise queries and keys (stabilises training)."""
    rope_theta: float = 10000.0
    """Base of the rotary embedding frequencies."""
    context_stream: Literal["context_frames", "nearest_context"] = "context_frames"
    """What the context stream (spec section 7) holds. ``context_frames``: each context
    frame's clean value at its own position, zeros elsewhere. ``nearest_context``: every
    frame also gets the nearest context frame at or left of it in its video as passive
    context (spec section 10), so a frame can copy the context without attention."""

    pseudo_fields = {"size": "a size from the registry (MODEL_SIZES), overridden by the other keys"}
    infra_fields = frozenset({"attention_backend"})

    @model_validator(mode="before")
    @classmethod
    def _expand_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and "size" in data:
            data = dict(data)
            size = data.pop("size")
            if size not in MODEL_SIZES:
                raise ValueError(f"model.size={size!r}: expected one of {sorted(MODEL_SIZES)}")
            data = {**MODEL_SIZES[size], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        _positive(self, "in_channels", "patch_size", "width", "depth", "heads", "mlp_ratio")
        if any(s <= 0 for s in self.frame_size):
            raise ValueError(f"ModelConfig.frame_size={self.frame_size!r}: expected (H, W) > 0")
        h, w = self.frame_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"ModelConfig.frame_size={self.frame_size!r}: not divisible by "
                f"patch_size={self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"ModelConfig.width={self.width}: not divisible by heads={self.heads}")
        if (self.width // self.heads) % 2:
            raise ValueError(
                f"ModelConfig.heads={self.heads}: head dim {self.width // self.heads} must be even"
            )
        if self.num_classes < 0:
            raise ValueError(f"ModelConfig.num_classes={self.num_classes}: must be >= 0")
        if self.window is not None and self.window < 0:
            raise ValueError(f"ModelConfig.window={self.window}: must be >= 0 or None")
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def tokens_per_frame(self) -> int:
        """``N``: patch tokens plus the rate token."""
        h, w = self.frame_size
        return (h // self.patch_size) * (w // self.patch_size) + 1


# Size registry, named after width (spec section 7); "xl-1536" is the paper's main model.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(depth=2, width=32, heads=2),
    "s-64": dict(depth=4, width=64, heads=4),
    "s-128": dict(depth=6, width=128, heads=4),
    "s-256": dict(depth=6, width=256, heads=4),  # the demo's (configs/demo-latent-cpu.yaml)
    "b-384": dict(depth=12, width=384, heads=6),
    "l-768": dict(depth=24, width=768, heads=12),
    "xl-1152": dict(depth=28, width=1152, heads=16),
    "xl-1536": dict(depth=38, width=1536, heads=24),
}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """A ``ModelConfig`` from the size registry, with field overrides."""
    if size not in MODEL_SIZES:
        raise ValueError(f"model size {size!r}: expected one of {sorted(MODEL_SIZES)}")
    return ModelConfig(**{**MODEL_SIZES[size], **overrides})


# --------------------------------------------------------------------------- #
#                                   Method                                    #
# --------------------------------------------------------------------------- #


class MethodConfig(Config):
    """Training law and sampler of Flowception and of the two baselines (spec sections 3-10)."""

    method: Method = "flowception"
    """``flowception``, or a baseline on the same backbone (spec section 10)."""
    task: Task = "unconditional"
    """Which frames are context frames in training and sampling (spec section 10)."""
    n_start: int = 2
    """Start frames ``n_s`` (spec section 4 step 1); 0 only with context frames."""
    n_start_context: int | None = None
    """``n_s`` of the videos that have context frames, in training and sampling alike (None:
    ``n_start``). 0 grows them from their context by insertions alone, so every generated
    frame descends from a context frame; rows trained without context (``uncond_prob``) and
    unconditional sampling keep ``n_start``. Without start frames the rejection of spec 4
    step 5 fires whenever ``tau_g`` falls below every delay, which E8w does not correct."""
    tau_g_law: Literal["bounded", "bounded_logit_normal", "uniform02"] = "bounded"
    """Global time law: E8 (default, the official code's) or E9 (the paper's ``U[0, 2]``)."""
    tau_g_weighting: bool = True
    """E8w: weight each video's loss terms by ``tau_max / mean(tau_max)`` so the weighted law at
    fixed ``tau_g`` is exactly E4-E7's (short videos); ignored for ``bounded_logit_normal``."""
    tau_g_stratified: bool = False
    """Draw a batch's ``B`` global times from ``B`` strata of the uniform (``u_b = (pi_b +
    U_b) / B``, ``pi`` a random permutation) before E8/E9's map: each video's ``tau_g`` keeps
    its law, the batch's spread of visible frames shrinks, so ranks with a fixed frame
    budget do closer amounts of work a step and wait less for each other."""
    time_shift: float = 1.0
    """``s`` of the time warp E3; 1 = off."""
    context_noise: float = 0.1
    """Context frames are ``(1 - c) x1 + c eps`` in training (spec section 4 step 6)."""
    interp_context_prob: float = 0.1
    """Interpolation training: probability that an inner frame is a keyframe."""
    uncond_prob: float = 0.0
    """With context tasks: probability that a training video has no context frames, so the
    same network also learns unconditional generation (0 = the spec's pure task)."""
    continuation_frames: int = 2
    """Continuation: the first ``c`` frames are context."""
    w_ins: float = 1.0
    """Weight of the insertion loss (spec E15)."""
    cond_drop_prob: float = 0.1
    """Training drops the condition (and i2v context stream) with this probability (spec 9)."""
    # -- sampling --
    num_steps: int = 50
    """``K = 1/h``: sampler steps per unit of time."""
    max_frames: int = 32
    """Length cap of sampled videos (spec section 8 step 7)."""
    num_frames: int = 16
    """Length generated by the fixed-length baselines."""
    insertion: Literal["bernoulli", "poisson"] = "bernoulli"
    """Insertion probability: E19 clipped rate, or its Poisson variant."""
    insertion_rule: Literal["learned", "left_to_right", "hierarchical", "random"] = "learned"
    """Learned rates (E19) or a prescribed order (E25)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance on velocity (E20); 1 = off."""
    insertion_guidance: float = 1.0
    """Geometric insertion guidance ``s_ins`` (E21); 1 = off."""

    def start_frames(self, with_context: bool) -> int:
        """``n_s`` of a video with or without context frames (training law and sampler)."""
        if with_context and self.n_start_context is not None:
            return self.n_start_context
        return self.n_start

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        _positive(self, "num_steps", "max_frames", "num_frames", "time_shift")
        if self.n_start < 0:
            raise ValueError(f"MethodConfig.n_start={self.n_start}: must be >= 0")
        if self.n_start_context is not None and self.n_start_context < 0:
            raise ValueError(f"MethodConfig.n_start_context={self.n_start_context}: must be >= 0")
        if self.n_start == 0 and self.task in ("unconditional",) and self.method == "flowception":
            raise ValueError(
                "MethodConfig.n_start=0: allowed only with context frames (task != unconditional)"
            )
        if self.n_start > 0 and self.task == "interpolation" and self.method == "flowception":
            raise ValueError(
                f"MethodConfig.n_start={self.n_start}: task 'interpolation' trains and samples "
                "from its keyframes alone (spec 4.1, 8); set method.n_start=0"
            )
        for name in ("context_noise", "interp_context_prob", "cond_drop_prob", "uncond_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MethodConfig.{name}={value!r}: must be in [0, 1]")
        if self.uncond_prob > 0 and self.n_start < 1:
            raise ValueError(
                f"MethodConfig.uncond_prob={self.uncond_prob}: needs n_start >= 1 "
                "(videos without context start from noise frames)"
            )
        if self.w_ins < 0:
            raise ValueError(f"MethodConfig.w_ins={self.w_ins}: must be >= 0")
        if self.continuation_frames < 1:
            raise ValueError(
                f"MethodConfig.continuation_frames={self.continuation_frames}: must be >= 1"
            )
        return self
