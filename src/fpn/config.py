"""Typed configuration: dataclasses in, YAML out, and back.

Configuration is data and construction is plain Python: ``FasterRCNN(ModelConfig(...))``. There is no
registry of strings beyond the few design and norm names listed here. A config round-trips through YAML
(:func:`to_yaml` / :func:`from_dict`) and is saved inside every checkpoint, so a checkpoint alone
rebuilds its model. Unknown keys and wrongly typed values raise :class:`~fpn.errors.ConfigError`
naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fpn.errors import ConfigError

DESIGNS = ("fpn", "single-map", "hierarchy", "top-down-only", "finest-only", "image-pyramid")
#: The detectors over the pyramid: two-stage (RPN + RoI heads) and the one-stage dense heads on P3-P7.
DETECTORS = ("faster-rcnn", "retinanet", "fcos")
NORMS = ("frozen_bn", "bn", "gn")


@dataclass
class BackboneConfig:
    """The bottom-up pathway: a ResNet whose stage outputs are C2..C5."""

    depth: int = 50  # 18, 34, 50 or 101
    width: int = 64  # channels of the stem; 64 is torchvision's ResNet, 16 or 32 make narrow CPU variants
    norm: str = "frozen_bn"  # frozen_bn (default with pretrained weights), bn, or gn (training from scratch)
    trainable_stages: int = 3  # how many of (layer4, layer3, layer2, layer1, stem) train, from the top; 0..5
    bn_eps: float = 1e-5  # frozen_bn / bn epsilon; torchvision's COCO Faster R-CNN checkpoint runs with 0.0
    weights: str | None = None  # ImageNet checkpoint: a path, or a URL fetched through torch.hub


@dataclass
class PyramidConfig:
    """Which of the paper's designs (Figure 1) turns C2..C5 into prediction maps, and its width."""

    design: str = "fpn"  # one of DESIGNS
    channels: int = 256  # d in the paper
    finest: str = "c2"  # the finest bottom-up map read: c2 (Faster R-CNN: P2..), c3 (RetinaNet, FCOS: P3..)
    source: str = "c5"  # single-map / image-pyramid only: predict from c5, or c4 (the paper's stronger baseline)
    extra: str = "pool"  # extra coarse levels: none, pool (P6 = stride-2 subsample of P5), p6p7-c5, p6p7-p5
    norm: str = "none"  # none or gn: optional normalisation inside the pyramid's convolutions
    test_scales: list[int] = field(default_factory=lambda: [480, 640, 800])  # image-pyramid: shorter sides


@dataclass
class AnchorConfig:
    """Anchor sizes spread over the prediction levels, one size per level when sizes match levels."""

    sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])


@dataclass
class RPNConfig:
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_thresh: float = 0.0
    min_size: float = 1e-3


@dataclass
class RoIHeadsConfig:
    pooler_size: int = 7
    sampling_ratio: int = 2
    canonical_size: int = 224  # the paper's k0 = 4 is assigned to RoIs of this size (ImageNet's input size)
    canonical_level: int = 4
    representation_size: int = 1024
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class RetinaNetConfig:
    """RetinaNet's dense head and its inference (Lin et al., 2017; torchvision's defaults)."""

    num_convs: int = 4  # 3x3 conv + ReLU layers of each subnet (classification, box regression)
    head_norm: str = "none"  # none (torchvision's v1 head) or gn: GroupNorm after each subnet conv (from scratch)
    prior_prob: float = 0.01  # the classifier's bias starts at -log((1 - p) / p): every anchor "background"
    scales_per_octave: int = 3  # anchors per size: size * 2^(i / 3), i = 0, 1, 2 (x 3 aspect ratios = 9)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    score_thresh: float = 0.05
    topk_candidates: int = 1000  # per level, before NMS
    nms_thresh: float = 0.5
    detections_per_image: int = 300


@dataclass
class FCOSConfig:
    """FCOS's anchor-free head (Tian et al., 2019; torchvision's defaults)."""

    num_convs: int = 4  # 3x3 conv + GroupNorm + ReLU layers of each tower
    prior_prob: float = 0.01
    center_sampling_radius: float = 1.5  # positives lie within radius * stride of a box's centre
    # Level ranges of max(l, t, r, b) are (4, 8) x stride (the finest open below, the coarsest above); this
    # scales them: 1 is torchvision's, a preset for small images may shift objects onto finer levels.
    size_range_scale: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    score_thresh: float = 0.2
    topk_candidates: int = 1000  # per level, before NMS
    nms_thresh: float = 0.6
    detections_per_image: int = 100


@dataclass
class TransformConfig:
    min_size: list[int] = field(default_factory=lambda: [800])  # shorter side; several = multi-scale training
    max_size: int = 1333  # longer side at most
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    """Everything needed to rebuild a detector; saved inside every checkpoint."""

    class_names: list[str] = field(default_factory=list)  # label i+1 is class_names[i]; 0 is background
    category_ids: list[int] | None = None  # the dataset's id for each name (COCO ids); default 1..K
    detector: str = "faster-rcnn"  # one of DETECTORS: which head reads the pyramid's levels
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)  # faster-rcnn's second stage
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)  # read only when detector is retinanet
    fcos: FCOSConfig = field(default_factory=FCOSConfig)  # read only when detector is fcos
    transform: TransformConfig = field(default_factory=TransformConfig)

    @property
    def num_classes(self) -> int:
        """Classes including background, as the box predictor's output size."""
        return len(self.class_names) + 1

    def category_id(self, label: int) -> int:
        """The dataset's category id of a (1-based) label."""
        return self.category_ids[label - 1] if self.category_ids else label

    def validate(self) -> None:
        """Reject settings no model can be built from, naming the key."""
        _one_of("detector", self.detector, DETECTORS)
        _one_of("pyramid.design", self.pyramid.design, DESIGNS)
        _one_of("pyramid.finest", self.pyramid.finest, ("c2", "c3", "c4", "c5"))
        _one_of("backbone.norm", self.backbone.norm, NORMS)
        _one_of("backbone.depth", self.backbone.depth, (18, 34, 50, 101))
        _one_of("pyramid.source", self.pyramid.source, ("c4", "c5"))
        _one_of("pyramid.extra", self.pyramid.extra, ("none", "pool", "p6p7-c5", "p6p7-p5"))
        _one_of("pyramid.norm", self.pyramid.norm, ("none", "gn"))
        _one_of("retinanet.head_norm", self.retinanet.head_norm, ("none", "gn"))
        if not 0 <= self.backbone.trainable_stages <= 5:
            raise ConfigError(f"backbone.trainable_stages must be 0..5, got {self.backbone.trainable_stages}")
        if not self.class_names:
            raise ConfigError("class_names is empty: a detector needs at least one class")
        if self.category_ids is not None and len(self.category_ids) != len(self.class_names):
            raise ConfigError(
                f"category_ids has {len(self.category_ids)} entries but class_names has {len(self.class_names)}"
            )
        if not self.anchors.sizes or not self.anchors.aspect_ratios:
            raise ConfigError("anchors.sizes and anchors.aspect_ratios must not be empty")


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


# ----------------------------------------------------------------------------------------------- YAML


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (YAML-safe) of a config dataclass."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types by name.

    ``where`` names the file (or source) for error messages; missing keys keep their defaults.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown config key '{prefix}{key}' (known: {', '.join(fields)})")
        kwargs[key] = _convert(hints[key], value, where=where, key=f"{prefix}{key}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, *, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where=where, key=key)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]  # "min_size=640" on the command line means [640]
        return [_convert(args[0], v, where=where, key=f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: '{key}' must be {hint.__name__}, got {value!r}")
        return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str], *, where: str = "command line") -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in place, and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} is not of the form key=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{where}: unknown config key '{dotted}'")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{where}: unknown config key '{dotted}'")
        node[parts[-1]] = parse_value(raw)
    return data


def parse_value(raw: str) -> Any:
    """A command-line value as YAML, except that numbers YAML 1.1 reads as strings (``1e-5``) are numbers."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O and syntax problems into one-line ConfigErrors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
