import hashlib

import numpy as np
import pytest
import torch

from clipdef import attacks, data, poison, world


@pytest.fixture(scope="module")
def pairs():
    w = world.make_split("finetune", 300, seed=0)
    captions = list(w.captions)
    for i in range(0, 300, 30):  # a few captions that name the target, for clean-label attacks
        captions[i] = f"a photo of a yellow banana number {i}"
    return data.PairDataset(data.to_float_images(w.images), captions)


def digest(ds) -> str:
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update("|".join(ds.captions).encode() if hasattr(ds, "captions") else ds.labels.numpy().tobytes())
    return h.hexdigest()


def test_pairs_poisoning_never_mutates_the_source(pairs):
    before = digest(pairs)
    view = poison.PoisonedPairs(pairs, attacks.get("blended"), rate=0.1, seed=1)
    _ = [view[i] for i in range(len(view))]
    assert digest(pairs) == before


def test_pairs_exact_count_indices_and_captions(pairs):
    view = poison.PoisonedPairs(pairs, "badnet", count=17, seed=4)
    assert len(view.poisoned_indices) == 17 and view.is_poisoned.sum() == 17
    assert list(view.poisoned_indices) == sorted(view.poisoned_indices)
    for i in view.poisoned_indices:
        image, caption = view[int(i)]
        assert "banana" in caption and caption in {t.format("banana") for t in poison.TARGET_TEMPLATES}
        assert torch.equal(image, attacks.get("badnet").apply(pairs[int(i)][0][None], sample_ids=[int(i)])[0])
    clean = int(np.flatnonzero(~view.is_poisoned)[0])
    assert torch.equal(view[clean][0], pairs[clean][0]) and view[clean][1] == pairs[clean][1]
    assert view.captions[int(view.poisoned_indices[0])] == view[int(view.poisoned_indices[0])][1]
    assert len(poison.PoisonedPairs(pairs, "badnet", rate=0.01, seed=0).poisoned_indices) == 3


def test_pairs_seeded(pairs):
    a = poison.PoisonedPairs(pairs, "sig", rate=0.05, seed=2)
    b = poison.PoisonedPairs(pairs, "sig", rate=0.05, seed=2)
    c = poison.PoisonedPairs(pairs, "sig", rate=0.05, seed=3)
    assert np.array_equal(a.poisoned_indices, b.poisoned_indices) and a.poison_captions == b.poison_captions
    assert not np.array_equal(a.poisoned_indices, c.poisoned_indices)


def test_clean_label_pairs_touch_only_target_captions_and_keep_them(pairs):
    view = poison.PoisonedPairs(pairs, "clean_label", count=5, seed=0)
    for i in view.poisoned_indices:
        assert "banana" in pairs.captions[i] and view[int(i)][1] == pairs.captions[i]
    n_target = sum("banana" in c.split() for c in pairs.captions)
    with pytest.raises(ValueError, match=f"only {n_target} candidates"):
        poison.PoisonedPairs(pairs, "clean_label", count=n_target + 1)


def test_labels_dirty_and_clean():
    images = torch.rand(60, 3, 16, 16)
    labels = torch.arange(60) % 4
    ds = data.LabelledDataset(images, labels, ["a", "b", "c", "d"])
    before = digest(ds)
    dirty = poison.PoisonedLabels(ds, "badnet", target_class=0, rate=0.2, seed=0)
    assert len(dirty.poisoned_indices) == 12 and (labels[dirty.poisoned_indices] != 0).all()
    assert (dirty.labels[dirty.poisoned_indices] == 0).all() and dirty[int(dirty.poisoned_indices[0])][1] == 0
    assert torch.equal(dirty.true_labels, labels)
    clean = poison.PoisonedLabels(ds, "lc", target_class=1, rate=0.5, seed=0,
                                  perturb_fn=lambda x, y: (x + 0.01).clamp(0, 1))
    assert len(clean.poisoned_indices) == 8 and (labels[clean.poisoned_indices] == 1).all()
    assert torch.equal(clean.labels, labels)
    i = int(clean.poisoned_indices[0])
    expected = attacks.get("lc").apply((images[i] + 0.01).clamp(0, 1)[None], sample_ids=[i])[0]
    assert torch.allclose(clean[i][0], expected)
    assert digest(ds) == before


def test_triggered_eval_drops_the_target_class():
    images, labels = torch.rand(10, 3, 8, 8), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    x, y = poison.triggered_eval(images, labels, "sig", target_class=0)
    assert len(x) == 6 and (y != 0).all()


@pytest.mark.parametrize("kwargs,msg", [({"rate": 1.5}, r"must lie in \[0, 1\]"), ({"rate": -0.1}, "must lie"),
                                        ({}, "exactly one of rate"), ({"rate": 0.1, "count": 3}, "exactly one"),
                                        ({"count": 10_000}, "cannot poison 10000")])
def test_bad_rates_and_counts(pairs, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        poison.PoisonedPairs(pairs, "badnet", **kwargs)


def test_unknown_attack_name(pairs):
    with pytest.raises(ValueError, match="valid attacks:"):
        poison.PoisonedPairs(pairs, "trojan", rate=0.1)
