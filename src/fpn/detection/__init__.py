"""The detectors on top of the pyramid: the shared trunk, Faster R-CNN (anchors, RPN, RoI heads), checkpoints."""

from fpn.detection.anchors import AnchorGenerator
from fpn.detection.base import PyramidDetector
from fpn.detection.build import DETECTOR_CLASSES, build_detector
from fpn.detection.checkpoint import load_detector, save_detector
from fpn.detection.faster_rcnn import FasterRCNN
from fpn.detection.fcos import FCOS
from fpn.detection.retinanet import RetinaNet
from fpn.detection.roi_heads import RoIHeads
from fpn.detection.rpn import RegionProposalNetwork
from fpn.detection.transform import DetectionTransform

__all__ = [
    "DETECTOR_CLASSES",
    "FCOS",
    "AnchorGenerator",
    "DetectionTransform",
    "FasterRCNN",
    "PyramidDetector",
    "RegionProposalNetwork",
    "RetinaNet",
    "RoIHeads",
    "build_detector",
    "load_detector",
    "save_detector",
]
