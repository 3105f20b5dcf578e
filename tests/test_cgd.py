import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipdef.defenses import cgd


def test_label_nll_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    want = [-(2 - np.log(np.exp(2) + 1 + np.exp(-1))), np.log(3)]
    assert np.allclose(cgd.label_nll(logits, [0, 2]).numpy(), want, atol=1e-6)


def test_rank_normalise():
    r = cgd.rank_normalise([0.3, -1.0, 5.0, 0.3])
    assert np.allclose(r, [0.5, 0.25, 1.0, 0.75])  # ranks 2, 1, 4, 3 (tie broken by position) over N = 4
    assert r.min() > 0 and r.max() == 1.0
    with pytest.raises(ValueError, match="non-empty 1-D"):
        cgd.rank_normalise([])


def test_split_on_constructed_scores():
    # 10 samples: ranks 0.1 … 1.0
    r_clip = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.95])
    r_susp = np.array([0.05, 0.5, 0.5, 0.15, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    s = cgd.split(r_clip, r_susp, sigma1=0.2, sigma2=0.1)
    # poisoned: r_clip > 0.9 (index 9) or r_susp < 0.1 (index 0)
    assert np.flatnonzero(s.poisoned).tolist() == [0, 9]
    # clean: r_clip ≤ 0.8 and r_susp ≥ 0.2 → indices 1,2,4,5,6,7 (3 has r_susp 0.15; 8 has r_clip 0.85)
    assert np.flatnonzero(s.clean).tolist() == [1, 2, 4, 5, 6, 7]
    assert np.flatnonzero(s.ignored).tolist() == [3, 8]
    q = s.quality(is_poisoned=np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool))
    assert q["split_poison_precision"] == 1.0 and q["split_poison_recall"] == 1.0
    assert q["split_clean_purity"] == 1.0 and q["split_clean_fraction"] == 0.6


@pytest.mark.parametrize("s1,s2,msg", [(0.0, 0.1, "sigma1 must lie in"), (1.2, 0.1, "sigma1 must lie in"),
                                       (0.2, -0.1, "sigma2 must lie in"), (0.1, 0.2, "must not exceed")])
def test_bad_thresholds(s1, s2, msg):
    with pytest.raises(ValueError, match=msg):
        cgd.split([0.5], [0.5], sigma1=s1, sigma2=s2)


def test_class_balancing():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    s = cgd.Split(clean=np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=bool),
                  poisoned=np.array([0, 0, 0, 0, 0, 1, 0, 1, 0, 0], dtype=bool))
    order = cgd.class_balanced_epoch(s, labels, np.random.default_rng(0))
    clean_part = order[np.isin(order, np.flatnonzero(s.clean))]
    counts = np.bincount(labels[clean_part], minlength=3)
    assert counts.tolist() == [4, 4, 4]  # classes 1 and 2 oversampled up to class 0's four clean samples
    assert sorted(order[~np.isin(order, np.flatnonzero(s.clean))].tolist()) == [5, 7, 8, 9]
    with pytest.raises(ValueError, match="no clean sample"):
        cgd.class_balanced_epoch(cgd.Split(np.zeros(3, bool), np.ones(3, bool)), [0, 1, 2], np.random.default_rng())


def test_unlearning_loss_by_hand():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    clip_logits = torch.tensor([[0.3, 0.1], [0.2, 0.25], [0.0, 0.9]])
    clean = torch.tensor([True, False, False])
    poisoned = torch.tensor([False, True, True])
    T, a, b = 3.0, 5e-4, 0.025
    loss, logs = cgd.unlearning_loss(student, labels, clip_logits, clean, poisoned, T, a, b)

    def softmax(v):
        e = np.exp(np.asarray(v) - np.max(v))
        return e / e.sum()

    ce = -np.log(softmax([2.0, 0.0])[0])
    kls = []
    for s_row, c_row in (([0.0, 1.0], [0.2, 0.25]), ([1.0, 1.0], [0.0, 0.9])):
        p, q = softmax(np.array(c_row) / T), softmax(np.array(s_row) / T)
        kls.append(np.sum(p * np.log(p / q)))
    kl = np.mean(kls) * T ** 2
    repel = np.mean([np.log(softmax([0.0, 1.0])[1] + 1e-6), np.log(softmax([1.0, 1.0])[0] + 1e-6)])
    assert loss.item() == pytest.approx(ce + a * kl + b * repel, rel=1e-5)
    assert logs["kl_poisoned"] == pytest.approx(kl, rel=1e-5) and logs["repel"] == pytest.approx(repel, rel=1e-5)


def test_kl_temperature_scaling():
    """The T² factor keeps the KL term's gradient magnitude comparable across temperatures (Hinton et al.)."""
    torch.manual_seed(0)
    student = torch.randn(64, 10, requires_grad=True)
    teacher = torch.randn(64, 10)
    labels = torch.zeros(64, dtype=torch.long)
    clean, poisoned = torch.zeros(64, dtype=torch.bool), torch.ones(64, dtype=torch.bool)
    grads = []
    for T in (2.0, 8.0):
        loss, _ = cgd.unlearning_loss(student, labels, teacher, clean, poisoned, T, alpha=1.0, beta=0.0)
        (g,) = torch.autograd.grad(loss, student)
        grads.append(g.norm().item())
    assert 0.25 < grads[0] / grads[1] < 4  # without T² they would differ by about (8/2)² = 16
    loss, _ = cgd.unlearning_loss(student, labels, teacher, clean, poisoned, 4.0, alpha=1.0, beta=0.0)
    manual = F.kl_div(F.log_softmax(student / 4, 1), F.softmax(teacher / 4, 1), reduction="batchmean") * 16
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_repel_term_pushes_label_probability_down():
    student = torch.zeros(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    loss, _ = cgd.unlearning_loss(student, labels, torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool),
                                  torch.ones(4, dtype=torch.bool), alpha=0.0, beta=1.0)
    loss.backward()
    with torch.no_grad():
        stepped = student - 1.0 * student.grad
    p_before = F.softmax(student, 1).gather(1, labels.view(-1, 1))
    p_after = F.softmax(stepped, 1).gather(1, labels.view(-1, 1))
    assert (p_after < p_before).all()


def test_early_stopping_follows_the_codes_rule():
    stop = cgd.EarlyStopping(tolerance=1.0)
    # epoch 1 is kept whatever it costs; 0.5-point dips continue; a 1.5-point fall below the best (52 %) stops
    assert [stop(a) for a in (0.50, 0.52, 0.515, 0.505)] == [False, False, False, True]
    assert stop.best == 0.52
    assert cgd.EarlyStopping(tolerance=float("inf"))(0.1) is False
