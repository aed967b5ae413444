"""Detection datasets: COCO, Pascal VOC and YOLO readers, the dataset YAML, conversion between the formats, a
built-in synthetic set, augmentation.

Every dataset yields ``(image, target)`` pairs as described in :mod:`fpn.data.dataset` and can export its
ground truth in COCO format for evaluation. Use :func:`load_dataset` with a dataset YAML or an Ultralytics
data.yaml (see :mod:`fpn.data.spec`) or the built-in name ``"synthetic"``; :func:`convert` writes a dataset
in another format (:mod:`fpn.data.convert`).
"""

from __future__ import annotations

from fpn.data.augment import RandomHorizontalFlip, hflip
from fpn.data.coco import CocoDataset, read_json, write_coco, write_json
from fpn.data.convert import Conversion, convert
from fpn.data.dataset import DetectionDataset, ImageRecord, Target, Transform, collate
from fpn.data.images import (
    IMAGE_EXTENSIONS,
    image_size,
    is_image_file,
    list_images,
    load_image,
    open_image,
    pil_to_tensor,
    tensor_to_pil,
)
from fpn.data.spec import (
    DatasetSpec,
    SplitSpec,
    cache_dir,
    dataset_names,
    load_dataset,
    load_spec,
    resolve_data,
    strict_loading,
)
from fpn.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from fpn.data.synthetic import (
    SyntheticConfig,
    make_synthetic,
    render_image,
    size_buckets,
    size_histogram,
    synthetic_stats,
)
from fpn.data.validate import BoxReport, clean_boxes
from fpn.data.voc import VOC_CLASSES, VocDataset, VocSample, write_voc
from fpn.data.yolo import YoloDataset
from fpn.data.yolo_labels import YoloLabelError, label_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "BoxReport",
    "CocoDataset",
    "Conversion",
    "DatasetSpec",
    "DetectionDataset",
    "ImageRecord",
    "RandomHorizontalFlip",
    "SplitSpec",
    "SyntheticConfig",
    "Target",
    "Transform",
    "VocDataset",
    "VocSample",
    "YoloDataset",
    "YoloLabelError",
    "cache_dir",
    "clean_boxes",
    "collate",
    "convert",
    "dataset_names",
    "hflip",
    "image_size",
    "is_image_file",
    "label_path",
    "list_images",
    "load_dataset",
    "load_image",
    "load_spec",
    "make_synthetic",
    "open_image",
    "pil_to_tensor",
    "read_json",
    "render_image",
    "resolve_data",
    "size_buckets",
    "size_histogram",
    "strict_loading",
    "synthetic_stats",
    "tensor_to_pil",
    "write_coco",
    "write_json",
    "write_voc",
]
