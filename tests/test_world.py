import hashlib

import numpy as np
import pytest

from clipdef import data, world


def digest(d: world.WorldData) -> str:
    h = hashlib.sha256(d.images.tobytes())
    h.update("\n".join(d.captions).encode())
    h.update(d.labels.tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes():
    assert digest(world.make_split("pretrain", 40, seed=3)) == digest(world.make_split("pretrain", 40, seed=3))


def test_other_seed_other_bytes():
    assert digest(world.make_split("pretrain", 40, seed=3)) != digest(world.make_split("pretrain", 40, seed=4))


def test_prefix_independent_of_n():
    """Sample i depends only on (seed, split, i): a longer split starts with the shorter one."""
    short, long = world.make_split("finetune", 10, seed=1), world.make_split("finetune", 25, seed=1)
    assert np.array_equal(short.images, long.images[:10]) and short.captions == long.captions[:10]


def test_splits_differ():
    a, b = world.make_split("pretrain", 10, seed=0), world.make_split("finetune", 10, seed=0)
    assert a.captions != b.captions


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_and_dtype(size):
    d = world.make_split("pretrain", 5, seed=0, image_size=size)
    assert d.images.shape == (5, size, size, 3) and d.images.dtype == np.uint8
    assert d.labels.dtype == np.int64 and len(d.captions) == 5


def test_eval_split_is_balanced_single_object():
    d = world.make_split("eval", 3 * len(world.CLASSES), seed=0)
    counts = np.bincount(d.labels, minlength=len(world.CLASSES))
    assert (counts == 3).all()
    assert not any(r in c for c in d.captions for r in world.RELATIONS)


def test_caption_structure_matches_scene():
    """Relational captions name subject, relation and object in order; the subject's class is the label."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = world.sample_scene(rng)
        cap = world.caption_scene(scene, rng)
        words = cap.split()
        assert scene.objects[0].shape in words
        if scene.relation:
            head, tail = cap.split(f" {scene.relation} ")
            assert head.split()[-1] == scene.objects[0].shape and tail.split()[-1] == scene.objects[1].shape
        # adjectives, when present, come from the object's own attributes
        vocab = set(world.COLOURS) | set(world.SIZES) | set(world.TEXTURES)
        for w in words:
            if w in vocab:
                assert any(w in o.adjectives() for o in scene.objects), (w, cap)


def test_articles_are_english():
    d = world.make_split("pretrain", 400, seed=0)
    for cap in d.captions:
        words = cap.split()
        for a, nxt in zip(words, words[1:]):
            if a in ("a", "an"):
                assert (a == "an") == (nxt[0] in "aeiou"), cap


def test_relations_hold_in_the_geometry():
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = world.sample_scene(rng, p_two=1.0)
        a, b = s.objects
        if s.relation == "left of":
            assert a.cx < b.cx
        elif s.relation == "right of":
            assert a.cx > b.cx
        elif s.relation == "above":
            assert a.cy < b.cy
        elif s.relation == "below":
            assert a.cy > b.cy


def test_objects_are_drawn():
    """An object changes the pixels where it stands: the rendered image differs from the bare background."""
    rng = np.random.default_rng(0)
    scene = world.sample_scene(rng, single_object=True, shape="star")
    empty = world.Scene(scene.background, scene.background_rgb, ())
    img = world.render(scene, 32, np.random.default_rng(5), noise_std=0)
    bg = world.render(empty, 32, np.random.default_rng(5), noise_std=0)
    assert np.abs(img.astype(int) - bg.astype(int)).sum(-1).astype(bool).mean() > 0.03


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid splits"):
        world.make_split("test", 3)
    with pytest.raises(ValueError, match="at least 1"):
        world.make_split("eval", 0)
    with pytest.raises(ValueError, match="at least 16"):
        world.make_split("eval", 2, image_size=8)


def test_cache_round_trip(private_cache):
    a = data.load_world("eval", 30, seed=2)
    b = data.load_world("eval", 30, seed=2)  # second call reads the cached .npz
    assert list((private_cache / "world").glob("eval-32-*-30.npz"))
    assert digest(a) == digest(b)
    pairs = data.PairDataset(data.to_float_images(a.images), a.captions)
    img, cap = pairs[0]
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1 and cap == a.captions[0]


def test_a_cached_split_serves_smaller_draws_and_grows_by_the_missing_samples(monkeypatch):
    from clipdef import world as world_module

    drawn = []
    real = world_module.make_split
    monkeypatch.setattr(world_module, "make_split", lambda *a, **kw: drawn.append((a, kw)) or real(*a, **kw))
    small = data.load_world("finetune", 12, seed=3, progress=False)
    grown = data.load_world("finetune", 20, seed=3, progress=False)
    again = data.load_world("finetune", 16, seed=3, progress=False)
    assert [(a[1], kw["first"]) for a, kw in drawn] == [(12, 0), (8, 12)]  # only the 8 missing samples were drawn
    fresh = real("finetune", 20, seed=3)
    assert grown.images.tobytes() == fresh.images.tobytes() and grown.captions == fresh.captions
    assert again.images.tobytes() == fresh.images[:16].tobytes() and small.labels.tolist() == fresh.labels[:12].tolist()


def test_parallel_generation_gives_the_same_bytes():
    one = world.make_split("eval", 2100, seed=1, image_size=16)
    two = world.make_split("eval", 2100, seed=1, image_size=16, workers=2)
    assert one.images.tobytes() == two.images.tobytes() and one.captions == two.captions
    assert np.array_equal(one.labels, two.labels)
