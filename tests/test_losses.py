"""The contrastive losses against values worked out by hand (numpy loops or closed forms), and their gradients."""

import math

import numpy as np
import pytest
import torch

from clipdef.losses import CleanerCLIPLoss, cleanclip_loss, cleanerclip_loss, clip_loss


def normalised(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def t(array) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64)


def cross_entropy_of_row(logits, target: int) -> float:
    """−log softmax(logits)[target], written out."""
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


def mean_row_cross_entropy(anchors, candidates, scale) -> float:
    """Mean over anchors i of −log softmax_j(scale · ⟨a_i, c_j⟩)[i]."""
    losses = []
    for i, anchor in enumerate(anchors):
        logits = [scale * float(np.dot(anchor, c)) for c in candidates]
        losses.append(cross_entropy_of_row(logits, i))
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------------------------
# CLIP and CleanCLIP
# ---------------------------------------------------------------------------------------------------------------

def test_clip_loss_closed_form_on_orthogonal_pairs():
    # Logits are the identity, so every row's loss is −log(e / (e + 1)) = log(1 + e⁻¹).
    eye = t(np.eye(2))
    assert clip_loss(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_clip_loss_matches_hand_computation_on_three_pairs():
    rng = np.random.default_rng(0)
    images, texts = normalised(rng.normal(size=(3, 4))), normalised(rng.normal(size=(3, 4)))
    scale = 10.0
    expected = 0.5 * (mean_row_cross_entropy(images, texts, scale) + mean_row_cross_entropy(texts, images, scale))
    assert clip_loss(t(images), t(texts), scale).item() == pytest.approx(expected, rel=1e-9)


def test_cleanclip_loss_closed_form():
    # I Tᵀ = T T̃ᵀ = identity → log(1 + e⁻¹) per row; I Ĩᵀ = [[0, 1], [1, 0]] → the diagonal loses: log(1 + e).
    eye = t(np.eye(2))
    swapped = t(np.eye(2)[::-1].copy())
    expected = 2.0 * math.log(1 + math.exp(-1)) + 0.5 * 0.5 * (math.log(1 + math.e) + math.log(1 + math.exp(-1)))
    got = cleanclip_loss(eye, eye, swapped, eye, 1.0, clip_weight=2.0, inmodal_weight=0.5)
    assert got.item() == pytest.approx(expected)


def test_cleanclip_loss_matches_hand_computation_on_three_pairs():
    rng = np.random.default_rng(1)
    images, texts, aug_images, aug_texts = (normalised(rng.normal(size=(3, 5))) for _ in range(4))
    scale = 5.0
    clip_part = 0.5 * (mean_row_cross_entropy(images, texts, scale) + mean_row_cross_entropy(texts, images, scale))
    # In-modal terms are one-directional: originals are the rows, augmented views the columns.
    in_modal = 0.5 * (mean_row_cross_entropy(images, aug_images, scale)
                      + mean_row_cross_entropy(texts, aug_texts, scale))
    got = cleanclip_loss(t(images), t(texts), t(aug_images), t(aug_texts), scale)
    assert got.item() == pytest.approx(clip_part + in_modal, rel=1e-9)


def test_cleanclip_loss_rejects_mismatched_shapes():
    a, b = torch.zeros(3, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="same"):
        cleanclip_loss(a, a, b, a, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# CleanerCLIP
# ---------------------------------------------------------------------------------------------------------------

def hand_cleanerclip(images, positives, negatives, tau_pos, tau_neg) -> tuple[float, float]:
    """Both directional parts, one anchor at a time: matching pairs over τ_pos, the rest over τ_neg."""
    s = len(images)
    image_rows, text_rows = [], []
    for i in range(s):
        logits = [float(np.dot(images[i], positives[j])) / (tau_pos if j == i else tau_neg) for j in range(s)]
        logits += [float(np.dot(images[i], n)) / tau_neg for n in negatives[i]]
        image_rows.append(cross_entropy_of_row(logits, i))
        logits = [float(np.dot(positives[i], images[j])) / (tau_pos if j == i else tau_neg) for j in range(s)]
        text_rows.append(cross_entropy_of_row(logits, i))
    return sum(image_rows) / s, sum(text_rows) / s


def test_cleanerclip_closed_form_on_a_tiny_batch():
    # Images are e1, e2 and match their positives exactly; image 1's counterfactual has cosine 0.6 with it,
    # image 2's is orthogonal to it. Row by row:
    #   image 1: −log e^{1/τp} / (e^{1/τp} + e^{0} + e^{0.6/τn}),  image 2: −log e^{1/τp} / (e^{1/τp} + 1 + 1)
    #   text i:  −log e^{1/τp} / (e^{1/τp} + e^{0})
    tau_pos, tau_neg = 0.5, 0.25
    images = t([[1.0, 0.0], [0.0, 1.0]])
    negatives = t([[0.6, 0.8], [1.0, 0.0]])
    a = math.exp(1 / tau_pos)
    image_part = 0.5 * (-math.log(a / (a + 1 + math.exp(0.6 / tau_neg))) - math.log(a / (a + 2)))
    text_part = -math.log(a / (a + 1))
    got = cleanerclip_loss(images, images, negatives, tau_pos=tau_pos, tau_neg=tau_neg)
    assert isinstance(got, CleanerCLIPLoss)
    assert got.image_anchored.item() == pytest.approx(image_part)
    assert got.text_anchored.item() == pytest.approx(text_part)
    assert got.total.item() == pytest.approx(0.5 * (image_part + text_part))


@pytest.mark.parametrize("n_negatives", [1, 3])
def test_cleanerclip_matches_hand_computation(n_negatives):
    rng = np.random.default_rng(2)
    images, positives = normalised(rng.normal(size=(3, 6))), normalised(rng.normal(size=(3, 6)))
    negatives = normalised(rng.normal(size=(3, n_negatives, 6)))
    image_part, text_part = hand_cleanerclip(images, positives, negatives, 0.3, 0.1)
    neg_input = t(negatives[:, 0]) if n_negatives == 1 else t(negatives)  # (S, d) means one each
    got = cleanerclip_loss(t(images), t(positives), neg_input, tau_pos=0.3, tau_neg=0.1)
    assert got.image_anchored.item() == pytest.approx(image_part, rel=1e-9)
    assert got.text_anchored.item() == pytest.approx(text_part, rel=1e-9)
    assert set(got.as_dict()) == {"total", "image_anchored", "text_anchored"}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).item()


def test_one_sgd_step_on_the_image_moves_it_towards_the_positive_and_away_from_the_negative():
    generator = torch.Generator().manual_seed(0)
    images, positives, negatives = (torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=-1)
                                    for _ in range(3))
    images.requires_grad_(True)
    cleanerclip_loss(images, positives, negatives).total.backward()
    stepped = (images - 0.05 * images.grad).detach()
    for i in range(4):
        assert cosine(stepped[i], negatives[i]) < cosine(images[i].detach(), negatives[i])
        assert cosine(stepped[i], positives[i]) > cosine(images[i].detach(), positives[i])


def test_lower_negative_temperature_weighs_hard_negatives_more():
    # The counterfactual is nearly as close to the image as the factual sub-caption: a hard negative.
    images = t(normalised([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    positives = t(normalised([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]]))
    negatives = t(normalised([[0.8, 0.3, 0.0], [0.3, 0.8, 0.0]]))
    losses = [cleanerclip_loss(images, positives, negatives, tau_pos=0.3, tau_neg=tau).total.item()
              for tau in (0.1, 0.3, 1.0)]
    assert losses[0] > losses[1] > losses[2]


def test_equal_temperatures_give_a_plain_infonce_with_extra_negatives():
    rng = np.random.default_rng(3)
    images, positives, negatives = (normalised(rng.normal(size=(3, 4))) for _ in range(3))
    tau = 0.2
    image_part = mean_row_cross_entropy_with_negatives(images, positives, negatives, 1 / tau)
    text_part = mean_row_cross_entropy(positives, images, 1 / tau)
    got = cleanerclip_loss(t(images), t(positives), t(negatives), tau_pos=tau, tau_neg=tau)
    assert got.total.item() == pytest.approx(0.5 * (image_part + text_part), rel=1e-9)


def mean_row_cross_entropy_with_negatives(anchors, candidates, negatives, scale) -> float:
    losses = []
    for i, anchor in enumerate(anchors):
        logits = [scale * float(np.dot(anchor, c)) for c in candidates] + [scale * float(np.dot(anchor, negatives[i]))]
        losses.append(cross_entropy_of_row(logits, i))
    return sum(losses) / len(losses)


def test_cleanerclip_with_a_single_sample_is_finite():
    x = t(normalised([[1.0, 2.0]]))
    got = cleanerclip_loss(x, x, t(normalised([[2.0, -1.0]])))
    assert torch.isfinite(got.total)
    assert got.text_anchored.item() == pytest.approx(0.0)  # its own image is the only candidate


@pytest.mark.parametrize("images, positives, negatives, message", [
    (torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(3, 4), "pos_text_emb"),
    (torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 5), "neg_text_emb"),
    (torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, 2, 4), "neg_text_emb"),
    (torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 0, 4), "at least one"),
    (torch.zeros(4), torch.zeros(4), torch.zeros(4), "pos_text_emb"),
    (torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4), "at least one sample"),
])
def test_cleanerclip_shape_errors_say_what_is_wrong(images, positives, negatives, message):
    with pytest.raises(ValueError, match=message):
        cleanerclip_loss(images, positives, negatives)


@pytest.mark.parametrize("tau_pos, tau_neg", [(0.0, 0.3), (0.3, -1.0)])
def test_cleanerclip_rejects_non_positive_temperatures(tau_pos, tau_neg):
    x = torch.eye(2)
    with pytest.raises(ValueError, match="temperatures"):
        cleanerclip_loss(x, x, x, tau_pos=tau_pos, tau_neg=tau_neg)
