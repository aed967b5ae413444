"""The pyramid designs of the paper's Figure 1, selectable by name, all of the form ``features -> features``.

==================  =====================================================  ==============================
name                Figure 1 / Table 1                                     module
==================  =====================================================  ==============================
``image-pyramid``   (a) featurized image pyramid (test-time, several        :mod:`fpn.detection.image_pyramid`
                    scales of the ``single-map`` model)
``single-map``      (b) single feature map (C5, or C4)                      :mod:`fpn.pyramids.single_map`
``hierarchy``       (c) pyramidal feature hierarchy, "bottom-up pyramid"    :mod:`fpn.pyramids.hierarchy`
``fpn``             (d) Feature Pyramid Network                             :mod:`fpn.pyramids.fpn`
``top-down-only``   Table 1 (e): top-down pathway without laterals          :mod:`fpn.pyramids.fpn`
``finest-only``     Table 1 (f): FPN, predicting from P2 only               :mod:`fpn.pyramids.fpn`
==================  =====================================================  ==============================
"""

from __future__ import annotations

from collections.abc import Sequence

from fpn.config import PyramidConfig
from fpn.levels import Level, check_levels
from fpn.pyramids.base import Pyramid
from fpn.pyramids.fpn import FPN, top_down
from fpn.pyramids.hierarchy import Hierarchy
from fpn.pyramids.single_map import SingleMap

__all__ = ["FPN", "Hierarchy", "Pyramid", "SingleMap", "build_pyramid", "top_down"]


def build_pyramid(config: PyramidConfig, in_levels: Sequence[Level]) -> Pyramid:
    """The design ``config.design`` on the backbone's ``in_levels`` (``c2..c5``), its output levels checked.

    The design reads the levels from ``config.finest`` up (``c3..c5`` for RetinaNet and FCOS, whose P3-P7
    have no P2: at stride 4 a dense head would cost more than the rest of the detector).
    """
    names = [lv.name for lv in in_levels]
    if config.finest not in names:
        raise ValueError(f"pyramid.finest {config.finest!r} is not among the backbone's levels {names}")
    in_levels = list(in_levels)[names.index(config.finest) :]
    d, norm = config.channels, config.norm
    design = config.design
    if design in ("single-map", "image-pyramid"):
        pyramid: Pyramid = SingleMap(in_levels, d, source=config.source, norm=norm)
    elif design == "hierarchy":
        pyramid = Hierarchy(in_levels, d, extra=config.extra, norm=norm)
    elif design == "fpn":
        pyramid = FPN(in_levels, d, extra=config.extra, norm=norm)
    elif design == "top-down-only":
        pyramid = FPN(in_levels, d, extra=config.extra, norm=norm, laterals=False)
    elif design == "finest-only":
        pyramid = FPN(in_levels, d, extra="none", norm=norm, outputs=(f"p{in_levels[0].index}",))
    else:
        raise ValueError(f"unknown pyramid design {design!r}")
    check_levels(list(pyramid.levels), consumer=f"pyramid '{design}'", channels=d)
    return pyramid
