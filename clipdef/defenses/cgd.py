"""CGD: CLIP-guided backdoor defense of supervised classifiers (Xu et al., ACM MM 2025).

Two opinions per training sample (x_i, ỹ_i):
1. a public CLIP, as a zero-shot classifier that never saw the trigger: a dirty-label poison gets a *high* loss on
   its (wrong) label;
2. a suspicious model trained briefly on the poisoned data: backdoor samples are learned fast, so they get an
   abnormally *low* loss (this also catches clean-label poisons, whose labels CLIP agrees with).

Both losses are the negative log-likelihood of the given label, rank-normalised to (0, 1]. The split:
likely clean when r_clip ≤ 1 − σ1 and r_susp ≥ σ1; likely poisoned when r_clip > 1 − σ2 or r_susp < σ2; the rest
contributes no loss. The victim is then fine-tuned with

    L = CE(clean, class-balanced) + α·T²·KL(softmax(z_clip/T) ‖ softmax(g/T)) + β·mean log(p(ỹ|x) + ε)  on poisoned.

Departures from the official code (binyxu/CGD, ``4backdoorbench/cgd.py``): early stopping uses a held-out clean
split, never the test set (the code uses the test set); the suspicious model is in-sample as in the code, which
trains it on the whole poisoned set and scores the same set (its σ2 is tuned for that). The settings and their
sources are :class:`clipdef.defenses.settings.CGDSettings`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


def label_nll(logits: torch.Tensor, labels) -> torch.Tensor:
    """−log softmax(z)[ỹ]: the per-sample loss on the *given* label (what CGD calls its entropy score)."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.long)
    return -F.log_softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


def rank_normalise(scores) -> np.ndarray:
    """rank(s_i) / N with ranks 1…N (ties broken by position), so values lie in (0, 1]."""
    scores = np.asarray(scores)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"expected a non-empty 1-D array of scores, got shape {scores.shape}")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return ranks / len(scores)


def check_thresholds(sigma1: float, sigma2: float) -> None:
    """σ1, σ2 in (0, 1) with σ2 ≤ σ1 (the checks of :class:`clipdef.defenses.settings.CGDSettings`)."""
    from clipdef.defenses.settings import CGDSettings

    CGDSettings(sigma1=sigma1, sigma2=sigma2)


@dataclass
class Split:
    """Masks over the training set: likely clean, likely poisoned, and ignored (no loss)."""

    clean: np.ndarray
    poisoned: np.ndarray

    @property
    def ignored(self) -> np.ndarray:
        return ~(self.clean | self.poisoned)

    def quality(self, is_poisoned) -> dict[str, float]:
        """Precision/recall of the poisoned set and the purity of the clean set against the ground truth."""
        truth = np.asarray(is_poisoned, dtype=bool)
        flagged, kept = self.poisoned, self.clean
        return {
            "split_poison_precision": float(truth[flagged].mean()) if flagged.any() else 0.0,
            "split_poison_recall": float(flagged[truth].mean()) if truth.any() else 1.0,
            "split_clean_purity": float((~truth[kept]).mean()) if kept.any() else 0.0,
            "split_clean_fraction": float(kept.mean()),
            "split_poisons_in_clean": float(truth[kept].sum()),
        }


def split(r_clip, r_suspicious, sigma1: float = 0.2, sigma2: float = 0.1) -> Split:
    """CGD's split on rank-normalised scores (``utils/visualization.py``): clean / poisoned / ignored."""
    check_thresholds(sigma1, sigma2)
    r_clip, r_suspicious = np.asarray(r_clip), np.asarray(r_suspicious)
    if r_clip.shape != r_suspicious.shape:
        raise ValueError(f"score arrays differ in shape: {r_clip.shape} vs {r_suspicious.shape}")
    poisoned = (r_clip > 1 - sigma2) | (r_suspicious < sigma2)
    clean = (r_clip <= 1 - sigma1) & (r_suspicious >= sigma1) & ~poisoned
    return Split(clean=clean, poisoned=poisoned)


def class_balanced_epoch(split_: Split, labels, rng: np.random.Generator) -> np.ndarray:
    """The epoch's index list: every clean class oversampled (with replacement) to the largest clean class, plus
    every non-clean index once — so the CE term is class-balanced (``process_data`` and ``DistillationDataset``)."""
    labels = np.asarray(labels)
    clean_idx = np.flatnonzero(split_.clean)
    if len(clean_idx) == 0:
        raise ValueError("the split kept no clean sample; lower sigma1 or check the scores")
    by_class = [clean_idx[labels[clean_idx] == c] for c in np.unique(labels[clean_idx])]
    target = max(len(ix) for ix in by_class)
    balanced = [np.concatenate([ix, rng.choice(ix, target - len(ix), replace=True)]) for ix in by_class]
    return np.concatenate(balanced + [np.flatnonzero(~split_.clean)])


def unlearning_loss(student_logits: torch.Tensor, labels: torch.Tensor, clip_logits: torch.Tensor,
                    clean: torch.Tensor, poisoned: torch.Tensor, temperature: float = 3.0, alpha: float = 5e-4,
                    beta: float = 0.025, eps: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """CGD's loss on a batch (``4backdoorbench/cgd.py``). ``clean``/``poisoned`` are boolean masks over the batch
    rows."""
    zero = student_logits.sum() * 0.0
    ce = F.cross_entropy(student_logits[clean], labels[clean]) if clean.any() else zero
    if poisoned.any():
        log_p_student_t = F.log_softmax(student_logits[poisoned] / temperature, dim=1)
        p_clip_t = F.softmax(clip_logits[poisoned] / temperature, dim=1)
        kl = F.kl_div(log_p_student_t, p_clip_t, reduction="batchmean") * temperature ** 2
        p_label = F.softmax(student_logits[poisoned], dim=1).gather(1, labels[poisoned].view(-1, 1)).squeeze(1)
        repel = torch.log(p_label + eps).mean()
    else:
        kl, repel = zero, zero
    loss = ce + alpha * kl + beta * repel
    return loss, {"loss": loss.item(), "ce_clean": ce.item(), "kl_poisoned": kl.item(), "repel": repel.item()}


class _EpochList(Dataset):
    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[int(self.indices[i])]


class EarlyStopping:
    """CGD's rule (``4backdoorbench/cgd.py``): stop when an epoch's clean accuracy falls ``tolerance`` percentage
    points or more below
    the best epoch so far; the caller then restores the previous epoch's weights. As in the code, the best is
    taken over the unlearning epochs, so the first epoch is always kept (unlearning may cost some accuracy)."""

    def __init__(self, tolerance: float = 1.0):
        self.tolerance, self.best = tolerance, None

    def __call__(self, accuracy: float) -> bool:
        if self.best is not None and accuracy * 100 <= self.best * 100 - self.tolerance:
            return True
        self.best = accuracy if self.best is None else max(self.best, accuracy)
        return False


def unlearn(victim: torch.nn.Module, train_set: Dataset, labels, clip_logits: torch.Tensor, split_: Split,
            heldout: tuple[torch.Tensor, torch.Tensor], epochs: int = 10, lr: float = 0.01,
            weight_decay: float = 5e-4, batch_size: int = 256, max_iters_per_epoch: int = 200,
            temperature: float = 3.0, alpha: float = 5e-4, beta: float = 0.025, tolerance: float = 1.0,
            augment: bool = False, seed: int = 0, progress: bool = True, on_epoch_end=None):
    """Fine-tune a copy of the backdoored victim with the CGD loss; return (defended model, history).

    Plain SGD (no momentum) as in the code. After each epoch the held-out clean accuracy is measured; when it drops
    by ``tolerance`` points or more below the best epoch so far (:class:`EarlyStopping`), the previous epoch's
    weights are restored and training stops; the step that closes that epoch is marked ``early_stopped``.
    ``augment``: BackdoorBench's training transform on every batch (:func:`clipdef.train.random_crop_flip`)."""
    from clipdef.env import progress_bar
    from clipdef.train import History, Indexed, classifier_logits, collate_labelled, random_crop_flip

    labels_t = torch.as_tensor(labels, dtype=torch.long)
    clip_logits = torch.as_tensor(clip_logits, dtype=torch.float32)
    clean_t, poisoned_t = torch.as_tensor(split_.clean), torch.as_tensor(split_.poisoned)
    model = copy.deepcopy(victim)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    history = History()

    def heldout_accuracy() -> float:
        return float((classifier_logits(model, heldout[0]).argmax(1) == heldout[1]).float().mean())

    stop = EarlyStopping(tolerance)
    previous_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        order = class_balanced_epoch(split_, labels_t.numpy(), rng)
        loader = torch.utils.data.DataLoader(Indexed(_EpochList(train_set, order)), batch_size=batch_size,
                                             shuffle=True, generator=gen, collate_fn=collate_labelled)
        model.train()
        for it, (images, _, pos) in enumerate(progress_bar(loader, enabled=progress, leave=False,
                                                           desc=f"CGD unlearning epoch {epoch}/{epochs}")):
            if it == max_iters_per_epoch:
                break
            idx = torch.as_tensor(order[pos.numpy()])
            if augment:
                images = random_crop_flip(images, generator=gen)
            loss, logs = unlearning_loss(model(images), labels_t[idx], clip_logits[idx], clean_t[idx],
                                         poisoned_t[idx], temperature, alpha, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.steps.append({"epoch": epoch, "step": len(history.steps), **logs})
        accuracy = heldout_accuracy()
        extra = {"heldout_acc": accuracy, **((on_epoch_end(epoch, model) or {}) if on_epoch_end else {})}
        if history.steps:
            history.steps[-1].update(extra)
        if stop(accuracy):
            model.load_state_dict(previous_state)
            if history.steps:
                history.steps[-1]["early_stopped"] = True
            break
        previous_state = copy.deepcopy(model.state_dict())
    model.eval()
    return model, history


# ---------------------------------------------------------------------------------------------------------------
# The two opinions: a CLIP guide and a briefly trained suspicious model
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def clip_guide_logits(bundle, images, class_names, prompt_templates, batch_size: int = 512) -> torch.Tensor:
    """Raw cosine similarities between images and class prompts — no logit scale, as in CGD's code
    (``utils/models.py``, ``CLIPClassifier``): the softmax of raw cosines is nearly flat, so the label-NLL *ranking*
    carries the signal (chapter 5, exercise 2)."""
    from clipdef.evaluate import zero_shot_classifier
    from clipdef.models import encode_images

    classifier = zero_shot_classifier(bundle, class_names, prompt_templates)
    return encode_images(bundle, images, batch_size=batch_size) @ classifier.t()


def suspicious_logits(train_set: Dataset, num_classes: int, runs: int = 3, epochs: int = 5, width: int = 16,
                      lr: float = 3e-4, batch_size: int = 256, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Average in-sample logits of ``runs`` classifiers trained briefly (Adam) on the poisoned set — backdoor
    samples are learned fastest, so their label NLL is abnormally low (CGD's suspicious model, in-sample as in
    the code)."""
    from clipdef.models import PreActResNet
    from clipdef.train import classifier_logits, train_classifier

    images = torch.stack([train_set[i][0] for i in range(len(train_set))])
    total = torch.zeros(len(train_set), num_classes)
    for run in range(runs):
        torch.manual_seed(seed + run)
        model = PreActResNet(num_classes, width=width)
        train_classifier(model, train_set, epochs=epochs, lr=lr, batch_size=batch_size, optimizer="adam",
                         seed=seed + run, progress=progress, desc=f"suspicious model {run + 1}/{runs}")
        total += classifier_logits(model, images)
    return total / runs


@dataclass
class Scores:
    """Per-sample CGD scores: label NLLs and their rank-normalised values under both opinions."""

    nll_clip: np.ndarray
    nll_suspicious: np.ndarray
    r_clip: np.ndarray
    r_suspicious: np.ndarray


def score_samples(clip_logits: torch.Tensor, suspicious: torch.Tensor, labels) -> Scores:
    nll_c = label_nll(clip_logits, labels).numpy()
    nll_s = label_nll(suspicious, labels).numpy()
    return Scores(nll_c, nll_s, rank_normalise(nll_c), rank_normalise(nll_s))
