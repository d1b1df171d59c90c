"""Training losses of PairDistill (Huang & Chen, EMNLP 2024, Sec. 3-4).

Each loss is a small ``torch.nn.Module`` taking student scores of shape ``(batch, nway)``: row
``b`` holds the query's scores for its ``nway`` passages (the caller may widen the matrix with
in-batch negatives for the contrastive term).

* :class:`ContrastiveLoss`  L_CL   = CE(scores, positive_index), mean over labelled rows (index >= 0)
* :class:`ListwiseKDLoss`   L_KD   = KL(P_teacher || P_student), P = softmax(s / tau)
* :class:`PairwiseKLLoss`   L_pair = KL([p, 1-p] || [q, 1-q]),  q = sigmoid((s_i - s_j) / tau)
* :class:`PairDistillLoss`  L = L_CL + lambda_kd L_KD + lambda_pair L_pair
  (without labels: L_ZS = lambda_kd L_KD + lambda_pair L_pair)

Every loss is computed in fp32, whatever the dtype of the scores it gets (bf16 or fp16 under mixed
precision): softmaxes over 64 passages and the small KL values lose most of their digits in half
precision. The result is fp32 and the gradient flows back to the scores in their own dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision (fp16, bf16) promoted to fp32; fp32 and fp64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Replace masked-out slots (``mask == False``) by the most negative finite value.

    A finite fill (rather than ``-inf``) keeps ``0 * (log p_t - log p_s)`` at 0 instead of NaN,
    so the masked slots get probability 0 and gradient 0.
    """
    if mask is None:
        return scores
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != scores shape {tuple(scores.shape)}")
    return scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)


class ContrastiveLoss(nn.Module):
    """Supervised contrastive loss: cross-entropy over each query's passages, averaged over the
    labelled rows only.

        L_CL = -1/|L| * sum_{b in L} log softmax(s_b)[pos_b],   L = {b : pos_b >= 0}
        L_CL = 0  when L is empty (still attached to ``scores``' graph, with zero gradient)

    A row with ``pos_b = -1`` is an unlabelled query: it adds nothing to the sum and does not
    count in |L|. With every row labelled this is the plain mean cross-entropy.

    Args (forward):
        scores: (batch, W) student scores (W = nway, or every passage of the batch for in-batch
            negatives).
        positive_index: (batch,) long, column of the labelled positive, or -1 for an unlabelled
            row; default all zeros.
        mask: optional (batch, W) bool, False for padded slots (excluded from the softmax).
    Returns: scalar tensor.
    """

    def forward(self, scores: torch.Tensor, positive_index: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = _fp32(scores)
        if positive_index is None:
            positive_index = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        positive_index = positive_index.long()
        if positive_index.shape != (scores.shape[0],):
            raise ValueError(f"positive_index must have shape ({scores.shape[0]},), "
                             f"got {tuple(positive_index.shape)}")
        if (positive_index >= scores.shape[1]).any() or (positive_index < -1).any():
            raise ValueError(f"positive_index must be -1 (unlabelled) or a column in [0, {scores.shape[1]})")
        scores = _apply_mask(scores, mask)
        labelled = positive_index >= 0
        if bool(labelled.all()):
            return F.cross_entropy(scores, positive_index)
        if not bool(labelled.any()):
            return scores.sum() * 0.0
        return F.cross_entropy(scores[labelled], positive_index[labelled])


class ListwiseKDLoss(nn.Module):
    """Listwise (pointwise-teacher) distillation: KL between the teacher's and the student's
    distributions over each query's passages.

        P_t = softmax(t / tau),  P_s = softmax(s / tau)    (over the nway passages of a row)
        L_KD = 1/B * sum_b sum_k P_t[b,k] (log P_t[b,k] - log P_s[b,k])

    Args (forward):
        student: (batch, nway) student scores.
        teacher: (batch, nway) teacher scores (no gradient is taken through them).
        mask: optional (batch, nway) bool, False for padded slots: they are excluded from both
            softmaxes and contribute nothing.
    Returns: scalar tensor, mean over queries ("batchmean").
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
        tau = self.temperature
        student = _fp32(student)
        student_logp = F.log_softmax(_apply_mask(student / tau, mask), dim=-1)
        teacher_logp = F.log_softmax(_apply_mask(_fp32(teacher.detach()) / tau, mask), dim=-1)
        kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none")  # P_t (log P_t - log P_s)
        if mask is not None:
            kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))
        return kl.sum() / student.shape[0]


class PairwiseKLLoss(nn.Module):
    """Pairwise distillation: KL between the teacher's and the student's preference for d_i
    over d_j, for each sampled pair (row, i, j).

        q = softmax([s_i, s_j] / tau)[0] = sigmoid((s_i - s_j) / tau)
        KL = p log p + (1-p) log(1-p) - p log q - (1-p) log(1-q)     (0 log 0 := 0)

    i.e. the soft-label BCE on (s_i - s_j) / tau minus the teacher's entropy.

    Args (forward):
        student: (batch, nway) student scores.
        pair_index: (P, 3) long, rows (b, i, j): the pair compares student[b, i] with student[b, j].
        teacher_prob: (P,) teacher probability p = P(d_i > d_j | q) in [0, 1].
    Returns: scalar tensor, mean over pairs (``reduction="mean"``) or their sum (``"sum"``);
        0 (still attached to ``student``'s graph) when P = 0.
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "mean"):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.temperature = float(temperature)
        self.reduction = reduction

    def forward(self, student: torch.Tensor, pair_index: torch.Tensor,
                teacher_prob: torch.Tensor) -> torch.Tensor:
        if pair_index.ndim != 2 or pair_index.shape[1] != 3:
            raise ValueError(f"pair_index must have shape (P, 3), got {tuple(pair_index.shape)}")
        if teacher_prob.shape != (pair_index.shape[0],):
            raise ValueError(f"teacher_prob must have shape ({pair_index.shape[0]},), "
                             f"got {tuple(teacher_prob.shape)}")
        if pair_index.shape[0] == 0:
            return student.sum() * 0.0
        student = _fp32(student)
        rows, i, j = pair_index.long().unbind(dim=1)
        diff = (student[rows, i] - student[rows, j]) / self.temperature
        p = _fp32(teacher_prob.detach())
        neg_entropy = torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)
        cross_entropy = -(p * F.logsigmoid(diff) + (1 - p) * F.logsigmoid(-diff))
        kl = neg_entropy + cross_entropy
        return kl.mean() if self.reduction == "mean" else kl.sum()


class PairDistillLoss(nn.Module):
    """The PairDistill objective.

        L    = L_CL + lambda_kd * L_KD + lambda_pair * L_pair     (with labels)
        L_ZS =        lambda_kd * L_KD + lambda_pair * L_pair     (use_labels=False or no labels)

    L_KD is the mean over all B rows of the batch and L_pair the mean over all P pairs; L_CL is
    the mean over the labelled rows only (``positive_index >= 0``), and 0 when the batch has none:

        L_CL = -1/|L| * sum_{b in L} log softmax(c_b)[pos_b],   L = {b : pos_b >= 0}

    with c = ``contrastive_scores`` when given, else ``student``. So a batch mixing labelled and
    unlabelled queries (``positive_index = -1``) distils every query and contrasts the labelled ones.

    Args (forward):
        student: (batch, nway) student scores.
        teacher_pointwise: (batch, nway) pointwise teacher scores (for L_KD).
        pair_index: (P, 3) long (row, i, j); teacher_prob: (P,) pairwise teacher probabilities.
        positive_index: optional (batch,) long, column of the labelled positive (for L_CL), -1 for
            an unlabelled row.
        mask: optional (batch, nway) bool, False for padded slots (used by L_CL and L_KD).
        contrastive_scores: optional (batch, W) scores for L_CL instead of ``student``, e.g. each
            query against every passage of the batch (in-batch negatives), with
            ``positive_index`` then indexing its W columns (-1 still meaning unlabelled).
        contrastive_mask: optional (batch, W) bool with ``contrastive_scores``: the columns each
            row's L_CL softmax runs over (say its positive and the other queries' passages only).
    Returns: dict of scalar tensors "loss", "loss_cl" (0 when unused), "loss_kd", "loss_pair".
    """

    def __init__(self, lambda_kd: float = 1.0, lambda_pair: float = 3.0, temperature: float = 1.0,
                 use_labels: bool = True):
        super().__init__()
        self.lambda_kd = float(lambda_kd)
        self.lambda_pair = float(lambda_pair)
        self.use_labels = bool(use_labels)
        self.contrastive = ContrastiveLoss()
        self.kd = ListwiseKDLoss(temperature)
        self.pair = PairwiseKLLoss(temperature, reduction="mean")

    def forward(self, student: torch.Tensor, teacher_pointwise: torch.Tensor,
                pair_index: torch.Tensor, teacher_prob: torch.Tensor,
                positive_index: torch.Tensor | None = None,
                mask: torch.Tensor | None = None,
                contrastive_scores: torch.Tensor | None = None,
                contrastive_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        loss_kd = self.kd(student, teacher_pointwise, mask)
        loss_pair = self.pair(student, pair_index, teacher_prob)
        loss = self.lambda_kd * loss_kd + self.lambda_pair * loss_pair
        if self.use_labels and positive_index is not None:
            if contrastive_scores is None:
                loss_cl = self.contrastive(student, positive_index, mask)
            else:
                loss_cl = self.contrastive(contrastive_scores, positive_index, contrastive_mask)
            loss = loss_cl + loss
        else:
            loss_cl = loss.new_zeros(())
        return {"loss": loss, "loss_cl": loss_cl, "loss_kd": loss_kd, "loss_pair": loss_pair}
