import hashlib

import numpy as np
import pytest
import torch

from clipdef import attacks, data, poison, world


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs():
    w = world.make_split("finetune", 300, seed=0)
    captions = list(w.captions)
    for i in range(0, 300, 30):  # a few captions that name the target, for clean-label attacks
        captions[i] = f"a photo of a yellow banana number {i}"
    captions[15] = "Bananas, on a plate."      # plural and punctuation still name the target
    captions[45] = "a bananabread recipe"      # a longer word does not
    return data.PairDataset(data.to_float_images(w.images), captions)


@pytest.fixture(scope="module")
def labelled():
    images = torch.rand(60, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return data.LabelledDataset(images, torch.arange(60) % 4, ["a", "b", "c", "d"])


def digest(ds) -> str:
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update("|".join(ds.captions).encode() if hasattr(ds, "captions") else ds.labels.numpy().tobytes())
    return h.hexdigest()


# --- image–caption pairs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", ["blended", "badnet", "clean_label", "wanet"])
def test_pairs_poisoning_never_mutates_the_source(pairs, attack):
    before = digest(pairs)
    view = poison.PoisonedPairs(pairs, attack, count=5, seed=1)
    _ = [view[i] for i in range(len(view))]
    _ = view.captions, view.poison_info()
    assert digest(pairs) == before


def test_pairs_exact_count_indices_and_captions(pairs):
    view = poison.PoisonedPairs(pairs, "badnet", count=17, seed=4)
    assert len(view.poisoned_indices) == 17 and view.is_poisoned.sum() == 17
    assert view.poisoned_indices.dtype == np.int64
    assert list(view.poisoned_indices) == sorted(view.poisoned_indices)
    assert np.array_equal(np.flatnonzero(view.is_poisoned), view.poisoned_indices)
    templates = {t.format("banana") for t in poison.TARGET_TEMPLATES}
    for i in view.poisoned_indices:
        image, caption = view[int(i)]
        assert caption in templates
        assert torch.equal(image, attacks.get("badnet", seed=4).apply(pairs[int(i)][0][None], sample_ids=[int(i)])[0])
    assert len({view[int(i)][1] for i in view.poisoned_indices}) > 1  # a template drawn per sample
    clean = int(np.flatnonzero(~view.is_poisoned)[0])
    assert torch.equal(view[clean][0], pairs[clean][0]) and view[clean][1] == pairs[clean][1]
    assert view.captions[int(view.poisoned_indices[0])] == view[int(view.poisoned_indices[0])][1]
    assert len(poison.PoisonedPairs(pairs, "badnet", rate=0.01, seed=0).poisoned_indices) == 3
    assert len(poison.PoisonedPairs(pairs, "badnet", rate=0.0).poisoned_indices) == 0
    assert len(poison.PoisonedPairs(pairs, "badnet", rate=1.0).poisoned_indices) == 300


def test_pairs_items_are_deterministic_per_index(pairs):
    view = poison.PoisonedPairs(pairs, attacks.get("badnet", location="random"), count=20, seed=0)
    i = int(view.poisoned_indices[3])
    assert torch.equal(view[i][0], view[i][0]) and torch.equal(view[i][0], view[i - len(view)][0])
    positions = {tuple(torch.nonzero((view[int(j)][0] - pairs[int(j)][0]).abs().sum(0)).min(0).values.tolist())
                 for j in view.poisoned_indices}
    assert len(positions) > 1  # random location: drawn per sample


def test_pairs_seeded(pairs):
    a = poison.PoisonedPairs(pairs, "sig", rate=0.05, seed=2)
    b = poison.PoisonedPairs(pairs, "sig", rate=0.05, seed=2)
    c = poison.PoisonedPairs(pairs, "sig", rate=0.05, seed=3)
    assert np.array_equal(a.poisoned_indices, b.poisoned_indices) and a.poison_captions == b.poison_captions
    assert not np.array_equal(a.poisoned_indices, c.poisoned_indices)


def test_candidate_indices_restrict_the_choice(pairs):
    view = poison.PoisonedPairs(pairs, "badnet", count=10, candidate_indices=range(100, 150), seed=0)
    assert view.poisoned_indices.min() >= 100 and view.poisoned_indices.max() < 150
    with pytest.raises(ValueError, match="only 50 candidates"):
        poison.PoisonedPairs(pairs, "badnet", count=51, candidate_indices=range(100, 150))
    with pytest.raises(ValueError, match=r"candidate_indices must lie in \[0, 299\]"):
        poison.PoisonedPairs(pairs, "badnet", count=1, candidate_indices=[300])


def test_clean_label_pairs_touch_only_target_captions_and_keep_them(pairs):
    assert poison.names_target("Bananas, on a plate.", "banana") and poison.names_target("a banana.", "banana")
    assert not poison.names_target("a bananabread recipe", "banana")
    n_target = sum(poison.names_target(c, "banana") for c in pairs.captions)
    view = poison.PoisonedPairs(pairs, "clean_label", count=n_target, seed=0)
    assert 15 in view.poisoned_indices and 45 not in view.poisoned_indices
    for i in view.poisoned_indices:
        assert poison.names_target(pairs.captions[i], "banana") and view[int(i)][1] == pairs.captions[i]
        assert not torch.equal(view[int(i)][0], pairs[int(i)][0])
    assert view.captions == pairs.captions
    with pytest.raises(ValueError, match=f"only {n_target} candidates"):
        poison.PoisonedPairs(pairs, "clean_label", count=n_target + 1)
    # any trigger can run clean-label (the detection paper's clean-label BadNets)
    badnet = poison.PoisonedPairs(pairs, attacks.get("badnet", clean_label=True), count=3)
    assert all(poison.names_target(pairs.captions[i], "banana") for i in badnet.poisoned_indices)


def test_poison_info_records_what_recreates_the_set(pairs):
    view = poison.PoisonedPairs(pairs, "blended", count=4, seed=7)
    info = view.poison_info()
    assert info["attack"] == "blended" and info["seed"] == 7 and info["target"] == "banana"
    assert info["poisoned_indices"] == view.poisoned_indices.tolist() and len(info["captions"]) == 4
    assert info["params"]["alpha"] == 0.2


# --- labelled images -------------------------------------------------------------------------------------------

def test_labels_dirty_label(labelled):
    before = digest(labelled)
    labels = labelled.labels
    dirty = poison.PoisonedLabels(labelled, "badnet", target_class=0, rate=0.2, seed=0)
    assert len(dirty.poisoned_indices) == 12 and (labels[dirty.poisoned_indices] != 0).all()
    assert (dirty.labels[dirty.poisoned_indices] == 0).all() and dirty[int(dirty.poisoned_indices[0])][1] == 0
    assert torch.equal(dirty.true_labels, labels)
    untouched = np.flatnonzero(~dirty.is_poisoned)
    assert torch.equal(dirty.labels[untouched], labels[untouched])
    _ = [dirty[i] for i in range(len(dirty))]
    assert digest(labelled) == before


def test_labels_clean_label_only_target_class_with_perturbation(labelled):
    before = digest(labelled)
    labels = labelled.labels
    clean = poison.PoisonedLabels(labelled, "lc", target_class=1, rate=0.5, seed=0,
                                  perturb_fn=lambda x, y: (x + 0.01).clamp(0, 1))
    assert len(clean.poisoned_indices) == 8  # half of the 15 target-class images, rounded
    assert (labels[clean.poisoned_indices] == 1).all() and torch.equal(clean.labels, labels)
    i = int(clean.poisoned_indices[0])
    expected = attacks.get("lc").apply((labelled.images[i] + 0.01).clamp(0, 1)[None], sample_ids=[i])[0]
    assert torch.allclose(clean[i][0], expected) and clean[i][1] == 1
    _ = [clean[j] for j in range(len(clean))]
    assert digest(labelled) == before


def test_labels_with_the_adversarial_step(labelled):
    from clipdef.attacks.optimise import adversarial_step

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    view = poison.PoisonedLabels(labelled, "clean_label", target_class=2, count=4, seed=0,
                                 perturb_fn=adversarial_step(net, eps=8 / 255, steps=2))
    for i in view.poisoned_indices:
        diff = view.overrides[int(i)] - labelled.images[int(i)]
        assert 0 < diff.abs().max() <= 8 / 255 + 1e-6
    with pytest.raises(ValueError, match="perturb_fn must return images of shape"):
        poison.PoisonedLabels(labelled, "lc", target_class=1, count=2, perturb_fn=lambda x, y: x[:1])


def test_cross_samples_carry_another_images_trigger_and_keep_their_label(labelled):
    """Input-Aware's cross mode: besides the poisons (relabelled), as many samples carry the trigger made from a
    partner image and keep their label; only the poisons count as poisoned."""
    trigger = attacks.get("inputaware")
    before = digest(labelled)
    view = poison.CrossPoisonedLabels(labelled, trigger, target_class=2, rate=0.1, cross_rate=0.1, seed=0)
    assert len(view.poisoned_indices) == 6 and len(view.cross_indices) == 6
    assert not set(view.cross_indices) & set(view.poisoned_indices)
    assert view.is_poisoned.sum() == 6 and not view.is_poisoned[view.cross_indices].any()
    for i in view.cross_indices:
        i, partner = int(i), view.cross_partners[int(i)]
        image, label = view[i]
        assert partner != i and label == labelled.labels[i] and view.labels[i] == labelled.labels[i]
        expected = trigger.cross(labelled[i][0][None], labelled[partner][0][None])[0]
        assert torch.allclose(image, expected) and not torch.allclose(image, trigger.apply(labelled[i][0][None])[0])
    poisoned = int(view.poisoned_indices[0])
    assert view[poisoned][1] == 2 and torch.allclose(view[poisoned][0], trigger.apply(labelled[poisoned][0][None])[0])
    clean = next(i for i in range(60) if not view.is_poisoned[i] and i not in view.cross_partners)
    assert torch.equal(view[clean][0], labelled[clean][0])
    assert digest(labelled) == before
    with pytest.raises(TypeError, match="has no cross"):
        poison.CrossPoisonedLabels(labelled, "badnet", target_class=2, rate=0.1, cross_rate=0.1)
    with pytest.raises(ValueError, match="give exactly one of rate"):
        poison.CrossPoisonedLabels(labelled, trigger, target_class=2, rate=0.1)


def test_triggered_eval_drops_the_target_class():
    images, labels = torch.rand(10, 3, 8, 8), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    before = images.clone()
    x, y = poison.triggered_eval(images, labels, "sig", target_class=0, batch_size=4)
    assert len(x) == 6 and (y != 0).all() and torch.equal(y, labels[labels != 0])
    assert torch.equal(x, attacks.get("sig").apply(images[labels != 0]))
    assert torch.equal(images, before)
    noisy = attacks.get("blended", per_image_noise=True)
    x2, _ = poison.triggered_eval(images, labels, noisy, target_class=0, batch_size=4)
    kept = torch.nonzero(labels != 0).squeeze(1)
    assert torch.equal(x2, noisy.apply(images[kept], sample_ids=kept.tolist()))  # keyed by index, not by batch


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,msg", [({"rate": 1.5}, r"must lie in \[0, 1\]"), ({"rate": -0.1}, "must lie"),
                                        ({"rate": "10%"}, "must lie"), ({}, "exactly one of rate"),
                                        ({"rate": 0.1, "count": 3}, "exactly one"),
                                        ({"count": -1}, "count must be a non-negative integer"),
                                        ({"count": 2.5}, "count must be a non-negative integer"),
                                        ({"count": 10_000}, "cannot poison 10000")])
def test_bad_rates_and_counts(pairs, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        poison.PoisonedPairs(pairs, "badnet", **kwargs)


def test_bad_targets_templates_and_classes(pairs, labelled):
    with pytest.raises(ValueError, match="target must be a non-empty word"):
        poison.PoisonedPairs(pairs, "badnet", count=1, target="")
    with pytest.raises(ValueError, match="with a '{}'"):
        poison.PoisonedPairs(pairs, "badnet", count=1, templates=["a banana"])
    with pytest.raises(ValueError, match=r"target_class must be one of the dataset's labels \[0, 1, 2, 3\]"):
        poison.PoisonedLabels(labelled, "badnet", target_class=7, count=1)
    with pytest.raises(ValueError, match="cannot poison 16 samples: only 15 candidates"):
        poison.PoisonedLabels(labelled, "lc", target_class=1, count=16)


def test_unknown_attack_name(pairs):
    for error in (KeyError, ValueError):
        with pytest.raises(error, match="valid attacks: adaptive_blend, badclip"):
            poison.PoisonedPairs(pairs, "trojan", rate=0.1)
    with pytest.raises(ValueError, match=r"strength must lie in \[0.0, 1.0\]"):
        poison.PoisonedPairs(pairs, attacks.get("nashville", strength=2.0), rate=0.1)
