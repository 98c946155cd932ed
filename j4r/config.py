"""Frozen configs for every component, parsed from YAML/CLI in this one place.

Each component gets one frozen dataclass (like nanoGPT's ``GPTConfig``): the network
(:class:`NetConfig`), the rain synthesiser (:class:`RainConfig`), clip synthesis
(:class:`ClipConfig`) and training (:class:`TrainConfig`). Presets are plain dicts so that a
YAML file or ``--set key=value`` overrides can be layered on top and the result saved as JSON
beside a checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class NetConfig:
    """J4R-Net size. ``paper`` matches the authors' released model (64 channels, ~0.8 M params)."""

    channels: int = 64  # feature width of every sub-net
    rnet_blocks: int = 3  # residual pairs in R-Net (streak removal)
    cnet_blocks: int = 2  # residual pairs in C-Net (occlusion fill from memory)
    jrc_blocks: int = 2  # residual pairs in JRC-Net (joint reconstruction)
    dnet_layers: int = 2  # 3x3 conv layers in D-Net before the 2-class α head
    rain_gate: bool = False  # beyond the paper: change only pixels a learned gate opens
    rain_presence: bool = False  # beyond the paper: leave frames judged rain-free alone
    presence_smoothing: float = 0.0  # share of the past in the presence logit's running average
    # P(rain) -> share of the change a frame gets: 0 up to lo (left bit for bit), 1 from hi,
    # linear between; (0, 1) applies P(rain) itself.
    presence_ramp: tuple[float, float] = (0.0, 1.0)
    # The presence head also sees, per pixel, how much of the local change was already there a
    # frame ago (a pole the camera pans over) and how much is new (rain falls): two memory
    # channels more.
    presence_persistence: bool = False
    # Beyond the paper: where the network changed the luma, chroma drawn from the neighbours it
    # left alone instead of passed through (rain greys colour; j4r.color.fill_chroma). Not a
    # weight: it only changes how the luma output is turned back into RGB.
    chroma_fill: bool = False
    # Beyond the paper: R-Net also sees the recurrent memory from before the frame, so a
    # structure that was already there can be told from a streak that is new (j4r.arch.RNet).
    rnet_memory: bool = False
    # Beyond the paper: R-Net also sees its features four times coarser, through dilated convs
    # (about 60 px instead of 20), to tell long streaks from texture (j4r.arch.ContextBranch).
    rnet_context: bool = False
    # Beyond the paper: a frame-level estimate of a downpour's haze, undone before the presence
    # scale (j4r.arch.VeilHead; needs rain_presence). Fitted on a frozen network: derain fit-veil.
    veil_head: bool = False


@dataclass(frozen=True)
class RainConfig:
    """Hybrid rain model ``O = (1 − α)(B + S) + α A``. Densities are per 10k pixels."""

    name: str = "light"
    # Layers of additive streaks: (density per 10k px, length px (lo, hi), width σ px,
    # intensity (lo, hi)). Far layers are dense, thin, short and faint; near ones sparse and bold.
    layers: tuple[tuple[float, tuple[float, float], float, tuple[float, float]], ...] = (
        (20.0, (6.0, 16.0), 0.5, (0.12, 0.30)),
        (8.0, (12.0, 28.0), 0.8, (0.25, 0.45)),
        (2.0, (22.0, 44.0), 1.1, (0.30, 0.55)),
    )
    angle_deg: tuple[float, float] = (-20.0, 20.0)  # wind: streak angle from vertical, per clip
    angle_jitter_deg: float = 3.0  # per-streak spread around the clip's angle
    sharp_lines: float = 0.0  # density of 1-px hard line streaks (heavy rain)
    sparkle: float = 0.0  # fraction of pixels with isolated bright sparkles
    occlusion: float = 0.0  # target fraction of pixels with α = 1
    reliance: tuple[float, float] = (0.78, 0.98)  # A: light scattered by opaque drops
    veil: float = 0.0  # haze of the rain volume: O <- (1 - v) O + v L, L a bright veil level
    lens_drops: float = 0.0  # defocused drops stuck on the lens, per 10k px (α = 1 inside)
    # Photometric streaks: the share of each streak's strength m that blends the background
    # toward the light a drop refracts (B + m (L - B)) instead of adding to it (B + m):
    # over a bright sky such a streak barely shows or is darker, as real rain is.
    photometric: float = 0.0
    refracted_light: tuple[float, float] = (0.6, 1.0)  # L, drawn per clip
    # Falling drops: 0 draws new drops in every frame (a drop falls far past its streak between
    # frames); above 0 the same drops persist and move down their streak's axis by this many
    # streak lengths per frame, wrapping round, so rain is a coherent sheet in motion.
    fall: float = 0.0
    flat_ends: bool = False  # streaks of even strength with hard ends instead of a soft taper


RAIN_PRESETS: dict[str, dict[str, Any]] = {
    "light": {"name": "light"},
    "heavy": {
        "name": "heavy",
        "layers": (
            (30.0, (10.0, 24.0), 0.6, (0.25, 0.45)),
            (14.0, (20.0, 40.0), 0.9, (0.35, 0.60)),
            (5.0, (34.0, 60.0), 1.3, (0.45, 0.75)),
        ),
        "sharp_lines": 2.5,
        "sparkle": 0.004,
        "occlusion": 0.03,
    },
}


@dataclass(frozen=True)
class ClipConfig:
    """Training clips: crops of clean content moved by a simulated camera.

    Beyond the paper's recipe (32 px patches, rain on every clip, only the camera moves), the
    defaults teach the network to leave things alone: patches large enough to see a pole or a
    window row in context, rain-free clips whose target is the input, thin bright structures
    and text drawn into the scene, objects that move on their own, night exposures, and rain
    whose style is randomised per clip (:func:`j4r.rain.random_rain_config`).
    """

    frames: int = 7
    size: int = 96
    max_shift_px: float = 2.0  # per-frame pan speed bound
    max_zoom: float = 0.006  # per-frame relative zoom bound
    max_rotate_deg: float = 0.25  # per-frame rotation bound
    still_fraction: float = 0.15  # clips with no camera motion at all
    rain_mix: tuple[float, float] = (0.5, 0.5)  # sampling weights of the (light, heavy) presets
    clean_fraction: float = 0.2  # rain-free clips: the target is the input
    preset_fraction: float = 0.3  # rainy clips with a fixed preset; the rest randomised rain
    structure_probability: float = 0.5  # poles, wires, fences, window grids, text in the scene
    sprite_probability: float = 0.5  # 1-3 objects moving independently of the camera
    night_fraction: float = 0.12  # dark exposures (gamma, low gain)
    photometric_probability: float = 0.0  # randomised rain with photometric streaks
    falling_probability: float = 0.0  # randomised rain whose drops persist and fall across frames
    downpour_probability: float = 0.0  # randomised rain made a downpour (dense long sheets, haze)
    faint_probability: float = 0.0  # randomised rain with its streaks at 25-60 % strength
    # A veil only where the rain is dense enough to make one (a downpour's haze); lighter
    # randomised rain keeps its streaks and drops but loses the faint veil it may draw.
    veil_in_downpours_only: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Two-stage schedule of the paper: single-frame pre-training, then recurrent fine-tuning."""

    stage1_steps: int = 3000
    stage2_steps: int = 3000
    batch_size: int = 16
    lr_start: float = 1e-3
    lr_end: float = 1e-5
    trunk_lr_scale: float = 0.01  # pre-trained trunk learns 100x slower in stage 2
    lambda_detect: float = 1e-3
    lambda_rect: float = 1e-4
    lambda_removal: float = 1e-4
    lambda_gate: float = 1e-2  # rain-gate mask loss (networks with ``rain_gate`` only)
    gate_threshold: float = 0.01  # luma change that counts as "touched by rain"
    gate_lr_scale: float = 1.0  # stage 2: the rain gate's learning rate relative to lr
    # Stage 2: R-Net's view of the memory (net.rnet_memory), relative to lr: it starts at zero
    # in a trained network and at the base rate barely moves in a fine-tune.
    rnet_memory_lr_scale: float = 1.0
    rnet_context_lr_scale: float = 1.0  # the same for R-Net's coarse view (net.rnet_context)
    # Stage 2: the squared change on pixels rain did not touch, averaged over those pixels
    # alone, so a frame mostly covered by rain still pays in full for what it changes between
    # the streaks (0 = off, as in rounds 1-8).
    lambda_keep: float = 0.0
    # The joint term's error: "mse" (the paper's), "charbonnier" (a smooth L1, which weighs
    # small errors, faint rain left or texture changed, more and large ones less) or "psnr"
    # (each frame's log MSE: every frame counts by its decibels; j4r.losses.joint_error).
    joint_loss: str = "mse"
    # Stage 2, joint term (MSE only): each rainy frame weighted 1e-3 / MSE(rainy, clean) (1 at
    # 30 dB, more for fainter rain, less for heavier), clamped to this range; (1, 1) = off
    # (j4r.losses.rain_strength_weights).
    rain_weight_range: tuple[float, float] = (1.0, 1.0)
    # With the weights on: rescale the weighted joint term each step to the plain MSE's value
    # (a constant per step), so the weights move the pull between frames, not the joint
    # term's weight against the keep and gate losses (round 15's arm G lost that balance).
    rain_weight_keep_scale: bool = False
    lambda_presence: float = 1e-2  # rain-presence loss (networks with ``rain_presence`` only)
    presence_threshold_db: float = 40.0  # a frame whose rain costs more PSNR than this is rainy
    presence_lr_scale: float = 1.0  # stage 2: the presence head's learning rate relative to lr
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16: autocast dtype of forward and backward
    log_every: int = 25
    checkpoint_every_s: float = 120.0
    clip: ClipConfig = field(default_factory=ClipConfig)

    def __post_init__(self) -> None:
        lo, hi = self.rain_weight_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"rain_weight_range must satisfy 0 < lo <= 1 <= hi, not {(lo, hi)}")
        if (lo, hi) != (1.0, 1.0) and self.joint_loss != "mse":
            raise ValueError("rain_weight_range weighs the MSE joint term: set joint_loss=mse")
        if self.rain_weight_keep_scale and (lo, hi) == (1.0, 1.0):
            raise ValueError("rain_weight_keep_scale rescales the weights: set rain_weight_range")
        if self.joint_loss not in JOINT_LOSSES:
            raise ValueError(f"joint_loss must be one of {JOINT_LOSSES}, not {self.joint_loss!r}")


JOINT_LOSSES = ("mse", "charbonnier", "psnr")


NET_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Trains to a useful quality on 2 CPU cores within an hour.
    "small": {"channels": 24, "rnet_blocks": 2, "cnet_blocks": 2, "jrc_blocks": 1},
    # Unit tests only: seconds per step.
    "tiny": {"channels": 8, "rnet_blocks": 1, "cnet_blocks": 1, "jrc_blocks": 1, "dnet_layers": 1},
}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"stage1_steps": 60000, "stage2_steps": 40000, "batch_size": 64},
    "small": {},
    "tiny": {"stage1_steps": 4, "stage2_steps": 4, "batch_size": 2, "log_every": 1},
}


def _coerce(value: Any, example: Any) -> Any:
    """Turn YAML/JSON lists back into the tuples a frozen dataclass default uses."""
    if isinstance(example, tuple) and isinstance(value, list | tuple):
        inner = example[0] if example else None
        return tuple(_coerce(v, inner) for v in value)
    if isinstance(example, float) and isinstance(value, int | str) and not isinstance(value, bool):
        # YAML 1.1 reads "2e-4" (no dot) as a string; a float field means a float.
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    return value


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build a (possibly nested) frozen config from a dict, rejecting unknown keys loudly."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(fields)}")
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = from_dict(type(current), value)
        else:
            kwargs[name] = _coerce(value, current)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def net_config(preset: str = "small", **overrides: Any) -> NetConfig:
    if preset not in NET_PRESETS:
        raise ValueError(f"unknown net preset {preset!r}; choose one of {sorted(NET_PRESETS)}")
    return from_dict(NetConfig, {**NET_PRESETS[preset], **overrides})


def rain_config(preset: str) -> RainConfig:
    if preset not in RAIN_PRESETS:
        raise ValueError(f"unknown rain preset {preset!r}; choose one of {sorted(RAIN_PRESETS)}")
    return from_dict(RainConfig, RAIN_PRESETS[preset])


def train_config(preset: str = "small", **overrides: Any) -> TrainConfig:
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown train preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    return from_dict(TrainConfig, {**TRAIN_PRESETS[preset], **overrides})


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["batch_size=8", "clip.size=48"]`` -> nested dict; values parsed as YAML scalars."""
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"override {pair!r} is not KEY=VALUE")
        node = result
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(raw)
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data
