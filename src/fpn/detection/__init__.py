"""The detector on top of the pyramid: anchors, RPN, RoI heads, input transform, Faster R-CNN, checkpoints."""

from fpn.detection.anchors import AnchorGenerator
from fpn.detection.checkpoint import load_detector, save_detector
from fpn.detection.faster_rcnn import FasterRCNN
from fpn.detection.roi_heads import RoIHeads
from fpn.detection.rpn import RegionProposalNetwork
from fpn.detection.transform import DetectionTransform

__all__ = [
    "AnchorGenerator",
    "DetectionTransform",
    "FasterRCNN",
    "RegionProposalNetwork",
    "RoIHeads",
    "load_detector",
    "save_detector",
]
