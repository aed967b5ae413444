"""Named model presets: plain functions returning a :class:`~fpn.config.ModelConfig`.

* ``r50-fpn``: exactly torchvision's ``fasterrcnn_resnet50_fpn`` (frozen BN, 800/1333, COCO's 91 slots);
  its checkpoint loads into this preset.
* ``r18-fpn``: ResNet-18 with the paper's FPN, frozen BN, for ImageNet-initialised fine-tuning.
* ``small-fpn`` / ``tiny-fpn``: narrow ResNet-18s with GroupNorm that train from scratch on a CPU in
  minutes, on images of about 320 px, with anchors from 16 px for small objects;
* ``nano-fpn``: tiny-fpn with a 48-channel pyramid (and so RPN and RoI-head input): YOLOv8n's latency class
  on a CPU (hence the name), for when the latency budget is tight;
* ``micro-fpn``: smaller still (96 px images), for smoke tests of a set-up.
* ``fcos-r50``: exactly torchvision's ``fcos_resnet50_fpn`` (FCOS on P3-P7, frozen BN of eps 1e-5, 800/1333,
  COCO's 91 slots); its checkpoint loads into this preset.
* ``tiny-fcos``: FCOS on tiny-fpn's narrow GroupNorm ResNet-18, P3-P6, for training from scratch on a CPU.
* ``retinanet-r50``: exactly torchvision's ``retinanet_resnet50_fpn`` (v1: RetinaNet on P3-P7, 9 anchors per
  cell, frozen BN, 800/1333, COCO's 91 slots); its checkpoint loads into this preset (with BN eps 0).
* ``tiny-retinanet``: RetinaNet on tiny-fpn's trunk, P3-P7, anchors from 12 px, GroupNorm in its 2-conv subnets,
  for training from scratch on a CPU.

Every preset can run any pyramid design: ``preset("tiny-fpn", design="hierarchy")``.
"""

from __future__ import annotations

from collections.abc import Callable

from fpn.config import (
    AnchorConfig,
    BackboneConfig,
    FCOSConfig,
    ModelConfig,
    PyramidConfig,
    RetinaNetConfig,
    RoIHeadsConfig,
    RPNConfig,
    TransformConfig,
)
from fpn.errors import ConfigError

# torchvision's 91 COCO slots: label i is COCO category id i; "N/A" marks ids COCO does not use.
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant N/A stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe N/A backpack umbrella N/A N/A "
    "handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle N/A wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed N/A dining_table N/A N/A toilet N/A tv laptop mouse "
    "remote keyboard cell_phone microwave oven toaster sink refrigerator N/A book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
)
COCO_CLASSES = [name.replace("_", " ") for name in COCO_NAMES.split()]


def r50_fpn() -> ModelConfig:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (box AP 37.0 on COCO with its checkpoint)."""
    return ModelConfig(class_names=list(COCO_CLASSES), backbone=BackboneConfig(depth=50, norm="frozen_bn"))


def r18_fpn() -> ModelConfig:
    return ModelConfig(class_names=list(COCO_CLASSES), backbone=BackboneConfig(depth=18, norm="frozen_bn"))


def _cpu_preset(width: int, channels: int, representation: int) -> ModelConfig:
    return ModelConfig(
        class_names=["object"],
        backbone=BackboneConfig(depth=18, width=width, norm="gn", trainable_stages=5),
        pyramid=PyramidConfig(channels=channels, norm="gn", test_scales=[256, 320, 416]),
        anchors=AnchorConfig(sizes=[16, 32, 64, 128, 256]),
        # 150 proposals at test time, as torchvision's 320 px mobile Faster R-CNN keeps: on the synthetic set,
        # the same AP as 300 (the box head's cost halves; 100 lose recall, 50 AP), measured in
        # benchmarks/results/proposals_2026-12-03.md. Dense scenes may want more: --set rpn.post_nms_top_n_test=300.
        rpn=RPNConfig(
            pre_nms_top_n_train=1000, post_nms_top_n_train=500, pre_nms_top_n_test=500, post_nms_top_n_test=150
        ),
        # Images here are ~2.5x smaller than COCO's 800 px, so objects are too: a canonical size of 112
        # (instead of ImageNet's 224) spreads RoIs over P2..P5 as the paper's rule does on COCO.
        roi_heads=RoIHeadsConfig(representation_size=representation, batch_size_per_image=128, canonical_size=112),
        transform=TransformConfig(min_size=[288, 320, 352], max_size=544),
    )


def small_fpn() -> ModelConfig:
    return _cpu_preset(width=32, channels=128, representation=512)


def tiny_fpn() -> ModelConfig:
    return _cpu_preset(width=16, channels=64, representation=256)


def nano_fpn() -> ModelConfig:
    """tiny-fpn's trunk with 48 channels instead of 64 in the pyramid (so in the RPN and the pooled RoIs too).

    At ~320 px the pyramid's and the RPN's convolutions cost tiny-fpn more time than its backbone; a width of
    48 cuts their multiply-adds to 56%. It trains as many iterations per CPU minute as tiny-fpn (the step is
    not bound by those layers); against YOLOv8n: ``benchmarks/yolo_compare.py --model nano-fpn``.
    """
    return _cpu_preset(width=16, channels=48, representation=256)


def micro_fpn() -> ModelConfig:
    """A smoke-test size: checks a set-up (data, pipeline, CLI) end to end in seconds; learns little."""
    config = _cpu_preset(width=8, channels=32, representation=64)
    config.transform = TransformConfig(min_size=[96], max_size=128)
    config.rpn = RPNConfig(
        pre_nms_top_n_train=200, post_nms_top_n_train=100, pre_nms_top_n_test=100, post_nms_top_n_test=50
    )
    config.roi_heads.batch_size_per_image = 64
    config.roi_heads.detections_per_image = 30
    return config


def retinanet_r50() -> ModelConfig:
    """torchvision's ``retinanet_resnet50_fpn`` (v1): C3-C5 into the FPN, P6 and P7 by stride-2 convs of P5,
    9 anchors per cell, COCO's 91 outputs per anchor (box AP 36.4 on COCO with its checkpoint)."""
    return ModelConfig(
        class_names=list(COCO_CLASSES),
        detector="retinanet",
        backbone=BackboneConfig(depth=50, norm="frozen_bn"),
        pyramid=PyramidConfig(finest="c3", extra="p6p7-p5"),
    )


def fcos_r50() -> ModelConfig:
    """torchvision's ``fcos_resnet50_fpn``: C3-C5 into the FPN, P6 and P7 by stride-2 convs of P5, 91 outputs.

    torchvision runs its COCO checkpoint with FrozenBatchNorm's default eps, 1e-5 (unlike Faster R-CNN's, it
    calls no ``overwrite_eps``).
    """
    return ModelConfig(
        class_names=list(COCO_CLASSES),
        detector="fcos",
        backbone=BackboneConfig(depth=50, norm="frozen_bn", bn_eps=1e-5),
        pyramid=PyramidConfig(finest="c3", extra="p6p7-p5"),
    )


def tiny_fcos() -> ModelConfig:
    """FCOS on tiny-fpn's trunk, for CPU training from scratch on ~320 px images.

    P3-P6 (P6 subsampled from P5): at 320 px a P7 map is 3x3 and no object reaches its range. Objects here are
    ~2.5x smaller than COCO's at 800 px, so the levels' ranges of max(l, t, r, b) are halved (2-4 strides
    instead of 4-8): P3 up to 32 px, P4 32-64, P5 64-128, P6 from 128.
    """
    config = _cpu_preset(width=16, channels=64, representation=256)
    config.detector = "fcos"
    config.pyramid.finest = "c3"
    config.pyramid.extra = "pool"
    config.fcos = FCOSConfig(size_range_scale=0.5)
    return config


def tiny_retinanet() -> ModelConfig:
    """RetinaNet on tiny-fpn's trunk (narrow GroupNorm ResNet-18), P3-P7, for CPU training from scratch.

    The synthetic set's objects are 8-224 px at ~320 px, so the anchors start at 12 px (P3: 12, 15, 19 px ...
    P7: 192, 241, 304 px); GroupNorm in the two 2-conv subnets (``head_norm: gn``), as in the trunk, for training
    from scratch; 100 detections per image (the set has at most a few dozen objects per image).
    """
    config = _cpu_preset(width=16, channels=64, representation=256)
    config.detector = "retinanet"
    config.pyramid.finest = "c3"
    config.pyramid.extra = "p6p7-p5"
    config.anchors = AnchorConfig(sizes=[12, 24, 48, 96, 192])
    config.retinanet = RetinaNetConfig(num_convs=2, head_norm="gn", detections_per_image=100)
    return config


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "r50-fpn": r50_fpn,
    "r18-fpn": r18_fpn,
    "small-fpn": small_fpn,
    "tiny-fpn": tiny_fpn,
    "nano-fpn": nano_fpn,
    "micro-fpn": micro_fpn,
    "fcos-r50": fcos_r50,
    "tiny-fcos": tiny_fcos,
    "retinanet-r50": retinanet_r50,
    "tiny-retinanet": tiny_retinanet,
}


def preset(name: str, *, design: str | None = None) -> ModelConfig:
    """The named preset's config, optionally with another pyramid design."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(PRESETS)}")
    config = PRESETS[name]()
    if design is not None:
        config.pyramid.design = design
    return config
