"""The RPN's proposals and losses against the plain recipe (decode every anchor, encode every anchor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fpn.config import RPNConfig
from fpn.detection.rpn import RegionProposalNetwork, RPNHead, flatten_level
from fpn.levels import level
from fpn.ops import BoxCoder, Matcher, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

IMAGE_SIZES = [(60, 90), (64, 80)]
PADDED = (64, 96)


def make_rpn(pre_n: int = 40, post_n: int = 20) -> RegionProposalNetwork:
    config = RPNConfig(
        pre_nms_top_n_train=pre_n, post_nms_top_n_train=post_n, pre_nms_top_n_test=pre_n, post_nms_top_n_test=post_n
    )
    levels = [level("p2", 8), level("p3", 8)]
    return RegionProposalNetwork(levels, [16, 32], [0.5, 1.0, 2.0], config)


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rpn = make_rpn()
    anchors, per_level = rpn.anchor_generator(PADDED, {"p2": (16, 24), "p3": (8, 12)})
    total = len(anchors)
    deltas = torch.randn(2, total, 4, generator=generator) * 0.5
    objectness = torch.randn(2, total, generator=generator)
    return rpn, anchors, per_level, deltas, objectness


def plain_filter(rpn, anchors, per_level, deltas, objectness):
    """The textbook order: decode every anchor, then top-n per level, clip, filter, NMS per level, top-n."""
    cfg = rpn.config
    proposals = BoxCoder().decode(deltas.reshape(-1, 4), anchors.repeat(2, 1)).view(2, -1, 4)
    level_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(per_level)])
    out = []
    for image in range(2):
        idx = torch.cat(
            [
                chunk.topk(min(cfg.pre_nms_top_n_train, len(chunk))).indices + start
                for chunk, start in zip(objectness[image].split(per_level), [0, per_level[0]])
            ]
        )
        boxes = clip_boxes_to_image(proposals[image, idx], IMAGE_SIZES[image])
        scores, levels = torch.sigmoid(objectness[image, idx]), level_ids[idx]
        keep = remove_small_boxes(boxes, cfg.min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, cfg.nms_thresh, max_keep=cfg.post_nms_top_n_train)
        out.append((boxes[keep], scores[keep], levels[keep]))
    return out


def test_proposals_equal_decoding_every_anchor_first():
    rpn, anchors, per_level, deltas, objectness = inputs()
    rpn.train()
    boxes, scores, levels = rpn.filter_proposals(deltas, anchors, objectness, IMAGE_SIZES, per_level)
    for image, (want_boxes, want_scores, want_levels) in enumerate(
        plain_filter(rpn, anchors, per_level, deltas, objectness)
    ):
        assert len(boxes[image]) > 5
        torch.testing.assert_close(boxes[image], want_boxes, rtol=0, atol=1e-5)
        torch.testing.assert_close(scores[image], want_scores, rtol=0, atol=0)
        assert torch.equal(levels[image], want_levels)


def plain_losses(rpn, objectness, deltas, anchors, targets):
    """torchvision's recipe: labels and regression targets for every anchor, then the sampled ones."""
    labels, regression = [], []
    for target in targets:
        matched = rpn.matcher(box_iou(target["boxes"], anchors))
        label = (matched >= 0).float()
        label[matched == Matcher.BELOW_LOW_THRESHOLD] = 0.0
        label[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
        labels.append(label)
        regression.append(BoxCoder().encode(target["boxes"][matched.clamp(min=0)], anchors))
    pos_masks, neg_masks = rpn.sampler(labels)
    pos = torch.where(torch.cat(pos_masks))[0]
    sampled = torch.where(torch.cat(pos_masks) | torch.cat(neg_masks))[0]
    box = F.smooth_l1_loss(deltas.reshape(-1, 4)[pos], torch.cat(regression)[pos], beta=1 / 9, reduction="sum")
    return (
        F.binary_cross_entropy_with_logits(objectness.reshape(-1)[sampled], torch.cat(labels)[sampled]),
        box / sampled.numel(),
    )


def test_losses_equal_encoding_every_anchor():
    rpn, anchors, _, deltas, objectness = inputs(seed=1)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 80.0, 50.0]])},
        {"boxes": torch.tensor([[10.0, 12.0, 26.0, 30.0]])},
    ]
    torch.manual_seed(3)
    losses = rpn.losses(objectness, deltas, anchors, targets)
    torch.manual_seed(3)
    want_objectness, want_box = plain_losses(rpn, objectness, deltas, anchors, targets)
    assert want_box > 0
    torch.testing.assert_close(losses["loss_objectness"], want_objectness, rtol=0, atol=0)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], want_box, rtol=1e-6, atol=0)


def test_losses_with_an_image_without_boxes():
    rpn, anchors, _, deltas, objectness = inputs(seed=2)
    deltas.requires_grad_(True)
    targets = [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.tensor([[10.0, 12.0, 26.0, 30.0]])}]
    losses = rpn.losses(objectness, deltas, anchors, targets)
    assert torch.isfinite(losses["loss_rpn_box_reg"]) and losses["loss_rpn_box_reg"] > 0
    losses["loss_rpn_box_reg"].backward()
    # Only the second image's anchors (the positives) get a box gradient.
    assert deltas.grad[0].abs().sum() == 0 and deltas.grad[1].abs().sum() > 0


def test_inference_outputs_of_all_levels_at_once_equal_the_per_level_convolutions():
    """Inference runs the two 1x1 convolutions as one product over every level's cells (flat_outputs); it must
    give the per-level convolutions' values in the anchor generator's order, channels-last or not, batched."""
    torch.manual_seed(0)
    head = RPNHead(16, 3).eval()
    for layer in (head.conv, head.cls_logits, head.bbox_pred):
        torch.nn.init.normal_(layer.weight, std=0.1)
        torch.nn.init.normal_(layer.bias, std=0.1)
    maps = [torch.randn(2, 16, size, size + 3) for size in (20, 10, 5)]
    with torch.inference_mode():
        expected = [head(m) for m in maps]
        logits = torch.cat([flatten_level(lg, 1) for lg, _ in expected], dim=1).squeeze(-1)
        deltas = torch.cat([flatten_level(dl, 4) for _, dl in expected], dim=1)
        for layout in (torch.contiguous_format, torch.channels_last):
            flat_logits, flat_deltas = head.flat_outputs([m.contiguous(memory_format=layout) for m in maps])
            torch.testing.assert_close(flat_logits, logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(flat_deltas, deltas, rtol=1e-5, atol=1e-6)
