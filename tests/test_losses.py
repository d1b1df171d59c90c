"""Losses checked against values worked out by hand with ``math`` (not with the torch code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pairdistill.losses import ContrastiveLoss, ListwiseKDLoss, PairDistillLoss, PairwiseKLLoss

T = lambda rows, **kw: torch.tensor(rows, dtype=torch.float64, **kw)  # noqa: E731
IDX = lambda rows: torch.tensor(rows, dtype=torch.long)                # noqa: E731


# --- plain-python references -------------------------------------------------------------------

def softmax(xs, tau=1.0):
    es = [math.exp(x / tau) for x in xs]
    z = sum(es)
    return [e / z for e in es]


def kl(p, q):
    """KL(p || q) with 0 log 0 = 0."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def pair_kl(p, si, sj, tau=1.0):
    q = sigmoid((si - sj) / tau)
    return kl([p, 1 - p], [q, 1 - q])


def close(t, x, tol=1e-10):
    return abs(float(torch.as_tensor(t).detach()) - x) < tol


# --- ContrastiveLoss ---------------------------------------------------------------------------

def test_contrastive_2x3():
    s = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    loss = ContrastiveLoss()(T(s), IDX([0, 2]))
    ce0 = -(1.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    ce1 = -(2.0 - math.log(math.exp(0.5) + math.exp(-1) + math.exp(2)))
    assert close(loss, (ce0 + ce1) / 2)


def test_contrastive_default_positive_is_column_zero():
    s = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    ce = [-math.log(softmax(r)[0]) for r in s]
    assert close(ContrastiveLoss()(T(s)), sum(ce) / 2)


def test_contrastive_mask_excludes_padding():
    s = [[1.0, 2.0, 50.0]]
    mask = torch.tensor([[True, True, False]])
    assert close(ContrastiveLoss()(T(s), IDX([0]), mask), -math.log(softmax([1.0, 2.0])[0]))


# --- ListwiseKDLoss ----------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_1x3(tau):
    s, t = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0]
    expected = kl(softmax(t, tau), softmax(s, tau))
    assert close(ListwiseKDLoss(tau)(T([s]), T([t])), expected)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_2x3_batchmean(tau):
    s = [[1.0, 2.0, 0.0], [-1.0, 0.5, 3.0]]
    t = [[2.0, 0.0, 1.0], [0.0, 0.0, 4.0]]
    expected = (kl(softmax(t[0], tau), softmax(s[0], tau))
                + kl(softmax(t[1], tau), softmax(s[1], tau))) / 2
    assert close(ListwiseKDLoss(tau)(T(s), T(t)), expected)


def test_kd_identical_scores_is_zero():
    s = [[1.0, 2.0, 0.0]]
    assert close(ListwiseKDLoss()(T(s), T(s)), 0.0)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_mask(tau):
    # row 0: third slot is padding (its scores are junk and must not matter)
    s = [[1.0, 2.0, 1e4], [-1.0, 0.5, 3.0]]
    t = [[2.0, 0.0, -1e4], [0.0, 0.0, 4.0]]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    expected = (kl(softmax(t[0][:2], tau), softmax(s[0][:2], tau))
                + kl(softmax(t[1], tau), softmax(s[1], tau))) / 2
    student = T(s, requires_grad=True)
    loss = ListwiseKDLoss(tau)(student, T(t), mask)
    assert close(loss, expected)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0, 2] == 0


def test_kd_gradient_sign():
    # student prefers doc 1, teacher doc 0: descent must raise s0 and lower s1
    student = T([[0.0, 1.0]], requires_grad=True)
    ListwiseKDLoss()(student, T([[1.0, 0.0]])).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


# --- PairwiseKLLoss ----------------------------------------------------------------------------

STUDENT = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
PAIRS = [[0, 0, 1], [0, 1, 2], [1, 0, 1], [1, 2, 0]]
PROBS = [0.8, 0.0, 1.0, 0.3]


def _expected_pairs(tau):
    return [pair_kl(p, STUDENT[b][i], STUDENT[b][j], tau) for (b, i, j), p in zip(PAIRS, PROBS)]


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_pairwise_kl_mean_and_sum(tau):
    per_pair = _expected_pairs(tau)
    mean = PairwiseKLLoss(tau)(T(STUDENT), IDX(PAIRS), T(PROBS))
    total = PairwiseKLLoss(tau, reduction="sum")(T(STUDENT), IDX(PAIRS), T(PROBS))
    assert close(mean, sum(per_pair) / len(per_pair))
    assert close(total, sum(per_pair))


def test_pairwise_kl_endpoints_by_hand():
    # p = 1: KL = -log q; p = 0: KL = -log(1 - q)
    s = [[3.0, 1.0]]
    tau = 2.0
    q = 1 / (1 + math.exp(-(3.0 - 1.0) / tau))
    one = PairwiseKLLoss(tau)(T(s), IDX([[0, 0, 1]]), T([1.0]))
    zero = PairwiseKLLoss(tau)(T(s), IDX([[0, 0, 1]]), T([0.0]))
    assert close(one, -math.log(q))
    assert close(zero, -math.log(1 - q))


def test_pairwise_kl_is_bce_minus_entropy():
    tau = 1.5
    s = T(STUDENT)
    idx = IDX(PAIRS)
    p = T(PROBS)
    diff = (s[idx[:, 0], idx[:, 1]] - s[idx[:, 0], idx[:, 2]]) / tau
    bce = F.binary_cross_entropy_with_logits(diff, p, reduction="none")
    entropy = T([-(x * math.log(x) if x > 0 else 0) - ((1 - x) * math.log(1 - x) if x < 1 else 0)
                 for x in PROBS])
    loss = PairwiseKLLoss(tau, reduction="sum")(s, idx, p)
    assert close(loss, float((bce - entropy).sum()))


def test_pairwise_kl_is_two_way_softmax_kl():
    # q = softmax([s_i, s_j] / tau)[0]
    tau = 2.0
    for (b, i, j), p in zip(PAIRS, PROBS):
        q = softmax([STUDENT[b][i], STUDENT[b][j]], tau)
        one = PairwiseKLLoss(tau)(T(STUDENT), IDX([[b, i, j]]), T([p]))
        assert close(one, kl([p, 1 - p], q))


def test_pairwise_kl_zero_when_student_matches():
    s = [[math.log(4.0), 0.0]]            # sigmoid(log 4) = 0.8
    assert close(PairwiseKLLoss()(T(s), IDX([[0, 0, 1]]), T([0.8])), 0.0)


def test_pairwise_kl_stable_on_extreme_scores():
    student = T([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = PairwiseKLLoss()(student, IDX([[0, 0, 1], [0, 1, 0], [0, 0, 2]]), T([1.0, 0.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert close(loss, (0.0 + 0.0 + 200.0) / 3, tol=1e-8)


def test_pairwise_kl_float32_extremes():
    student = torch.tensor([[80.0, -80.0]], requires_grad=True)
    loss = PairwiseKLLoss()(student, IDX([[0, 1, 0]]), torch.tensor([1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert abs(loss.item() - 160.0) < 1e-3


def test_pairwise_kl_no_pairs():
    student = T(STUDENT, requires_grad=True)
    for red in ("mean", "sum"):
        loss = PairwiseKLLoss(reduction=red)(student, torch.zeros((0, 3), dtype=torch.long),
                                             torch.zeros(0, dtype=torch.float64))
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert (student.grad == 0).all()


def test_pairwise_kl_gradient_flows():
    student = T(STUDENT, requires_grad=True)
    loss = PairwiseKLLoss(2.0)(student, IDX(PAIRS), T(PROBS))
    loss.backward()
    g = student.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # d/ds_i KL = (q - p) / tau / P for a single pair
    s1 = T([[1.0, 0.0]], requires_grad=True)
    PairwiseKLLoss(2.0)(s1, IDX([[0, 0, 1]]), T([0.8])).backward()
    q = sigmoid(0.5)
    assert close(s1.grad[0, 0], (q - 0.8) / 2.0) and close(s1.grad[0, 1], -(q - 0.8) / 2.0)


def test_pairwise_kl_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        PairwiseKLLoss(reduction="none")
    with pytest.raises(ValueError, match="temperature"):
        PairwiseKLLoss(temperature=0.0)
    with pytest.raises(ValueError, match=r"\(P, 3\)"):
        PairwiseKLLoss()(T(STUDENT), IDX([[0, 1]]), T([0.5]))
    with pytest.raises(ValueError, match="teacher_prob"):
        PairwiseKLLoss()(T(STUDENT), IDX([[0, 0, 1]]), T([0.5, 0.5]))


def test_pairwise_kl_optimisation_recovers_teacher_probs():
    torch.manual_seed(0)
    target = [2.0, 1.0, -0.5, 0.0]                 # consistent teacher: p = sigmoid(t_i - t_j)
    pairs = [[0, i, j] for i in range(4) for j in range(4) if i != j]
    probs = [sigmoid(target[i] - target[j]) for _, i, j in pairs]
    s = torch.zeros((1, 4), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.05)
    loss_fn = PairwiseKLLoss()
    for _ in range(1500):
        opt.zero_grad()
        loss = loss_fn(s, IDX(pairs), T(probs))
        loss.backward()
        opt.step()
    assert loss.item() < 1e-6
    for (_, i, j), p in zip(pairs, probs):
        assert abs(sigmoid((s[0, i] - s[0, j]).item()) - p) < 1e-3


# --- PairDistillLoss ---------------------------------------------------------------------------

TEACHER = [[2.0, 0.0, 1.0], [0.0, 0.0, 4.0]]


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_combined_with_labels(tau):
    fn = PairDistillLoss(lambda_kd=0.7, lambda_pair=3.0, temperature=tau)
    student = T(STUDENT, requires_grad=True)
    out = fn(student, T(TEACHER), IDX(PAIRS), T(PROBS), positive_index=IDX([0, 1]))
    cl = (-math.log(softmax(STUDENT[0])[0]) - math.log(softmax(STUDENT[1])[1])) / 2
    kd = (kl(softmax(TEACHER[0], tau), softmax(STUDENT[0], tau))
          + kl(softmax(TEACHER[1], tau), softmax(STUDENT[1], tau))) / 2
    pair = sum(_expected_pairs(tau)) / len(PAIRS)
    assert close(out["loss_cl"], cl) and close(out["loss_kd"], kd) and close(out["loss_pair"], pair)
    assert close(out["loss"], cl + 0.7 * kd + 3.0 * pair)
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()


def test_combined_without_labels():
    student = T(STUDENT)
    args = (student, T(TEACHER), IDX(PAIRS), T(PROBS))
    kd = (kl(softmax(TEACHER[0]), softmax(STUDENT[0]))
          + kl(softmax(TEACHER[1]), softmax(STUDENT[1]))) / 2
    pair = sum(_expected_pairs(1.0)) / len(PAIRS)
    # no positive_index given
    out = PairDistillLoss()(*args)
    assert float(out["loss_cl"]) == 0.0
    assert close(out["loss"], 1.0 * kd + 3.0 * pair)
    # use_labels=False ignores a given positive_index
    out2 = PairDistillLoss(use_labels=False)(*args, positive_index=IDX([0, 1]))
    assert float(out2["loss_cl"]) == 0.0
    assert close(out2["loss"], out["loss"])
    assert set(out) == {"loss", "loss_cl", "loss_kd", "loss_pair"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())


def test_combined_mask_reaches_cl_and_kd():
    s = [[1.0, 2.0, 1e4], [-1.0, 0.5, 3.0]]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = PairDistillLoss(lambda_kd=1.0, lambda_pair=0.0)(
        T(s), T(TEACHER), torch.zeros((0, 3), dtype=torch.long), T([]),
        positive_index=IDX([0, 2]), mask=mask)
    cl = (-math.log(softmax(s[0][:2])[0]) - math.log(softmax(s[1])[2])) / 2
    kd = (kl(softmax(TEACHER[0][:2]), softmax(s[0][:2])) + kl(softmax(TEACHER[1]), softmax(s[1]))) / 2
    assert close(out["loss_cl"], cl) and close(out["loss_kd"], kd)
    assert close(out["loss"], cl + kd)


def test_kd_mask_float32_and_fully_padded_row():
    student = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    loss = ListwiseKDLoss()(student, teacher, mask)
    loss.backward()
    expected = kl(softmax([2.0, 1.0]), softmax([1.0, 0.0])) / 2   # padded row contributes 0
    assert abs(float(loss.detach()) - expected) < 1e-6
    assert torch.isfinite(student.grad).all()
    assert (student.grad[~mask] == 0).all()


def test_combined_loss_uses_in_batch_scores_for_the_contrastive_term():
    # 2 queries x 2 passages; wide scores: each query against all 4 passages of the batch
    student = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    wide = torch.tensor([[2.0, 0.0, 3.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    targets = torch.tensor([0, 2])  # own positives: column 0 and column 2*1 + 0
    loss = PairDistillLoss(lambda_kd=0.0, lambda_pair=0.0)
    parts = loss(student, student, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0),
                 positive_index=targets, contrastive_scores=wide)
    lse0 = math.log(math.exp(2) + math.exp(0) + math.exp(3) + math.exp(1))
    lse1 = math.log(2 * math.exp(0.5) + 2 * math.exp(1.0))
    expected = ((lse0 - 2.0) + (lse1 - 1.0)) / 2
    assert parts["loss_cl"].item() == pytest.approx(expected, rel=1e-6)


# --- unlabelled queries (positive_index = -1) ----------------------------------------------------

MIXED_S = [[1.0, 2.0, 0.0], [0.3, -0.7, 1.5], [-1.0, 0.5, 3.0]]
MIXED_T = [[2.0, 0.0, 1.0], [1.0, 2.0, 0.0], [0.0, 0.0, 4.0]]
MIXED_POS = [1, -1, 0]                       # row 1 is an unlabelled query
MIXED_PAIRS = [[0, 0, 1], [1, 0, 2], [1, 2, 1], [2, 1, 0]]
MIXED_PROBS = [0.7, 0.2, 0.9, 0.4]


def test_contrastive_averages_over_labelled_rows_only():
    loss = ContrastiveLoss()(T(MIXED_S), IDX(MIXED_POS))
    ce0 = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.0)))
    ce2 = -(-1.0 - math.log(math.exp(-1.0) + math.exp(0.5) + math.exp(3.0)))
    assert close(loss, (ce0 + ce2) / 2)  # / 2 labelled rows, not / 3


def test_contrastive_with_no_labelled_row_is_zero_and_attached():
    student = T(MIXED_S, requires_grad=True)
    loss = ContrastiveLoss()(student, IDX([-1, -1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (student.grad == 0).all()


def test_contrastive_unlabelled_row_gets_no_gradient_and_mask_still_applies():
    student = T([[1.0, 2.0, 50.0], [4.0, 0.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = ContrastiveLoss()(student, IDX([0, -1]), mask)
    assert close(loss, -math.log(softmax([1.0, 2.0])[0]))
    loss.backward()
    assert (student.grad[1] == 0).all() and student.grad[0, 2] == 0 and torch.isfinite(student.grad).all()


def test_contrastive_rejects_bad_positive_index():
    with pytest.raises(ValueError, match="positive_index"):
        ContrastiveLoss()(T(MIXED_S), IDX([0, -2, 1]))
    with pytest.raises(ValueError, match="positive_index"):
        ContrastiveLoss()(T(MIXED_S), IDX([0, 3, 1]))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_combined_mixes_labelled_and_unlabelled_rows(tau):
    fn = PairDistillLoss(lambda_kd=0.5, lambda_pair=2.0, temperature=tau)
    student = T(MIXED_S, requires_grad=True)
    out = fn(student, T(MIXED_T), IDX(MIXED_PAIRS), T(MIXED_PROBS), positive_index=IDX(MIXED_POS))
    # by hand: L_CL over the 2 labelled rows; L_KD over all 3 rows; L_pair over all 4 pairs
    cl = (-math.log(softmax(MIXED_S[0])[1]) - math.log(softmax(MIXED_S[2])[0])) / 2
    kd = sum(kl(softmax(t, tau), softmax(s, tau)) for s, t in zip(MIXED_S, MIXED_T)) / 3
    pair = sum(pair_kl(p, MIXED_S[b][i], MIXED_S[b][j], tau)
               for (b, i, j), p in zip(MIXED_PAIRS, MIXED_PROBS)) / 4
    assert close(out["loss_cl"], cl) and close(out["loss_kd"], kd) and close(out["loss_pair"], pair)
    assert close(out["loss"], cl + 0.5 * kd + 2.0 * pair)
    # the unlabelled row is trained by KD and the pairs only: its gradient is the zero-shot loss's
    out["loss"].backward()
    zs_student = T(MIXED_S, requires_grad=True)
    PairDistillLoss(0.5, 2.0, tau, use_labels=False)(
        zs_student, T(MIXED_T), IDX(MIXED_PAIRS), T(MIXED_PROBS))["loss"].backward()
    assert torch.allclose(student.grad[1], zs_student.grad[1], atol=1e-12, rtol=0)
    assert not torch.allclose(student.grad[0], zs_student.grad[0])


def test_combined_all_unlabelled_batch_is_the_zero_shot_loss():
    args = (T(MIXED_S), T(MIXED_T), IDX(MIXED_PAIRS), T(MIXED_PROBS))
    out = PairDistillLoss()(*args, positive_index=IDX([-1, -1, -1]))
    assert float(out["loss_cl"]) == 0.0
    assert close(out["loss"], PairDistillLoss(use_labels=False)(*args)["loss"])


def test_combined_in_batch_negatives_skip_unlabelled_rows():
    from pairdistill.train import in_batch_positive

    # 3 queries x 2 passages; wide: each query against all 6 passages of the batch
    student = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.5, -0.5]], dtype=torch.float64)
    wide = T([[2.0, 0.0, 3.0, 1.0, 0.0, 0.0],
              [0.5, 4.0, 1.0, 1.0, 2.0, 0.0],
              [1.0, 1.0, 0.0, 2.0, 0.5, -0.5]])
    targets = in_batch_positive(IDX([0, -1, 1]), nway=2)
    assert targets.tolist() == [0, -1, 5]  # not column 1 (query 0's passage) for the unlabelled query
    parts = PairDistillLoss(lambda_kd=0.0, lambda_pair=0.0)(
        student, student, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
        positive_index=targets, contrastive_scores=wide)
    lse0 = math.log(math.exp(2) + 2 * math.exp(0) + math.exp(3) + math.exp(1) + math.exp(0))
    lse2 = math.log(2 * math.exp(1) + math.exp(0) + math.exp(2) + math.exp(0.5) + math.exp(-0.5))
    expected = ((lse0 - 2.0) + (lse2 - (-0.5))) / 2
    assert close(parts["loss_cl"], expected)
