"""Pictures of what the model sees and finds: detections (by class or by pyramid level), feature maps."""

from fpn.viz.draw import LEVEL_COLOURS, draw_detections
from fpn.viz.save import save_picture

__all__ = ["LEVEL_COLOURS", "draw_detections", "save_picture"]
