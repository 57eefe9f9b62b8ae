"""Task losses shared by the demo zoo's training and compression (pruning importance, distillation).

Captions: masked token cross-entropy and the per-token softmax KD. Detection: the DETR-style set loss
the demo detector is trained with (each object matched to one patch, Hungarian on
``2 * focal + 5 * L1 + 2 * (1 - GIoU)``; a sigmoid focal loss of every patch against every query)
against the box labels of shape scenes, and the sigmoid-head KD. Any detector with the adapter
contract (OWL-ViT, OWLv2) gets the same losses.

This module imports torch; the task objects import it inside their methods.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from edgevlp.data import COLOURS, SHAPES
from edgevlp.data.vocab import CATEGORIES, HELDOUT_PAIRS

__all__ = ["TRAIN_PHRASES", "QUERIES", "masked_token_ce", "caption_kd", "bernoulli_kl", "box_cxcywh_to_xyxy",
           "generalized_iou", "focal_loss", "set_loss", "detection_targets"]

#: Phrases that occur in train/val/test (the held-out pairs never do).
TRAIN_PHRASES: tuple[str, ...] = tuple(p for p in CATEGORIES if tuple(p.split()) not in HELDOUT_PAIRS)
#: The queries a detector is trained on with shape scenes: every training phrase (the negatives of each
#: object) plus the one-word colour and shape queries (positive for every object of that colour / shape).
QUERIES: tuple[str, ...] = (*TRAIN_PHRASES, *COLOURS, *SHAPES)
W_FOCAL, W_L1, W_GIOU = 2.0, 5.0, 2.0


# ------------------------------------------------------------------------------------- captions
def masked_token_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (batch, T, vocab)`` against ``targets (batch, T)`` over the
    tokens where ``mask`` is 1."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def caption_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) per token, averaged over the tokens where ``mask`` is 1."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                  reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * t ** 2


# ------------------------------------------------------------------------------------ detection
def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T))) * T^2 (sigmoid class heads)."""
    t, s = teacher_logits / temperature, student_logits / temperature
    p = torch.sigmoid(t)
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temperature ** 2


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes ``a`` (n, 4) and ``b`` (m, 4) -> (n, m)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union.clamp(min=1e-9)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Element-wise sigmoid focal loss."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss


def set_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, Any]]
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """The DETR-style set loss of predictions for the :data:`QUERIES` against :func:`detection_targets`."""
    from scipy.optimize import linear_sum_assignment

    cls_target = torch.zeros_like(logits)
    src_boxes, tgt_boxes = [], []
    with torch.no_grad():
        prob = logits.sigmoid()
        pred_xyxy = box_cxcywh_to_xyxy(boxes)
    for i, t in enumerate(targets):
        k = len(t["boxes"])
        if k == 0:
            continue
        tgt_xyxy = t["boxes"]
        tgt_cxcywh = torch.cat([(tgt_xyxy[:, :2] + tgt_xyxy[:, 2:]) / 2, tgt_xyxy[:, 2:] - tgt_xyxy[:, :2]], -1)
        with torch.no_grad():
            pr = prob[i][:, t["phrase"]]  # (patches, k)
            pos_cost = 0.25 * (1 - pr) ** 2 * -(pr + 1e-8).log()
            neg_cost = 0.75 * pr ** 2 * -(1 - pr + 1e-8).log()
            cost = (W_FOCAL * (pos_cost - neg_cost) + W_L1 * torch.cdist(boxes[i].detach(), tgt_cxcywh, p=1)
                    - W_GIOU * generalized_iou(pred_xyxy[i], tgt_xyxy))
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
        for r, c in zip(rows.tolist(), cols.tolist()):
            cls_target[i, r, t["pos"][c]] = 1.0
            src_boxes.append(boxes[i, r])
            tgt_boxes.append(tgt_cxcywh[c])
    n_obj = max(len(src_boxes), 1)
    loss_cls = focal_loss(logits, cls_target).sum() / n_obj
    if src_boxes:
        sb, tb = torch.stack(src_boxes), torch.stack(tgt_boxes)
        loss_l1 = F.l1_loss(sb, tb, reduction="sum") / n_obj
        loss_giou = (1 - torch.diag(generalized_iou(box_cxcywh_to_xyxy(sb), box_cxcywh_to_xyxy(tb)))).sum() / n_obj
    else:
        loss_l1 = loss_giou = logits.sum() * 0
    loss = W_FOCAL * loss_cls + W_L1 * loss_l1 + W_GIOU * loss_giou
    return loss, {"cls": round(float(loss_cls.detach()), 4), "l1": round(float(loss_l1.detach()), 4),
                  "giou": round(float(loss_giou.detach()), 4)}


def detection_targets(scenes: list[Any], size: int) -> list[dict[str, Any]]:
    """Per scene: boxes (xyxy in [0, 1]), the phrase query of each object and its positive queries
    (phrase, colour word, shape word), as indices into :data:`QUERIES`."""
    index = {q: i for i, q in enumerate(QUERIES)}
    targets = []
    for s in scenes:
        boxes = torch.tensor([o.box_xyxy for o in s.objects], dtype=torch.float32).reshape(-1, 4) / float(size)
        pos = [[index[o.phrase], index[o.colour], index[o.shape]] for o in s.objects]
        targets.append({"boxes": boxes, "phrase": torch.tensor([p[0] for p in pos]), "pos": pos})
    return targets
