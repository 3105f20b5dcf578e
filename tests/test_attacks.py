import math

import pytest
import torch

from clipdef import attacks
from clipdef.attacks import badclip, optimise
from clipdef.attacks.patches import default_patch_size, lattice


def grey(b=2, size=32):
    return torch.full((b, 3, size, size), 0.5)


@pytest.mark.parametrize("name", attacks.names())
@pytest.mark.parametrize("size", [32, 64, 224])
def test_shape_range_and_source_untouched(name, size):
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    y = attacks.get(name).apply(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before), "the input must never be modified"
    assert not torch.equal(x, y), f"{name} changed nothing"


@pytest.mark.parametrize("name", attacks.names())
def test_deterministic_given_seed(name):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = attacks.get(name, seed=3).apply(x, sample_ids=[5, 6, 7, 8])
    b = attacks.get(name, seed=3).apply(x, sample_ids=[5, 6, 7, 8])
    assert torch.equal(a, b)
    # a sample gets the same trigger whichever batch it is in
    c = attacks.get(name, seed=3).apply(x[1:2], sample_ids=[6])
    assert torch.allclose(a[1:2], c, atol=1e-6)


@pytest.mark.parametrize("name", ["blended", "wanet", "ssba", "lf", "badclip", "trojannn"])
def test_other_seed_other_trigger(name):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(attacks.get(name, seed=0).apply(x), attacks.get(name, seed=1).apply(x))


def test_badnet_patch_region_equals_pattern_and_rest_untouched():
    x = torch.rand(2, 3, 32, 32)
    y = attacks.get("badnet").apply(x)
    s = default_patch_size(32)
    assert torch.equal(y[..., -s:, -s:], lattice(s).expand(2, 3, s, s))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[-s:, -s:] = False
    assert torch.equal(y[..., mask], x[..., mask])
    assert default_patch_size(224) == 16


def test_badnet_random_location_differs_per_sample_and_center():
    y = attacks.get("badnet", location="random", patch_size=4).apply(torch.zeros(8, 3, 32, 32))
    positions = {tuple(torch.nonzero(img[0]).min(0).values.tolist()) for img in y}
    assert len(positions) > 1
    c = attacks.get("badnet", location="center", patch_size=4).apply(torch.zeros(1, 3, 32, 32))
    assert torch.nonzero(c[0, 0]).min(0).values.tolist() == [14, 14]


def test_blended_is_the_convex_combination():
    x = torch.rand(2, 3, 16, 16)
    pattern = torch.rand(3, 16, 16)
    y = attacks.get("blended", alpha=0.3, pattern=pattern).apply(x)
    assert torch.allclose(y, 0.7 * x + 0.3 * pattern, atol=1e-6)


def test_sig_adds_the_stated_signal():
    y = attacks.get("sig", delta=0.1, frequency=6).apply(grey(1, 32))
    j = torch.arange(32, dtype=torch.float32)
    want = 0.5 + 0.1 * torch.sin(2 * math.pi * j * 6 / 32)
    assert torch.allclose(y[0, 1, 7], want, atol=1e-6) and torch.allclose(y[0, 2, 30], want, atol=1e-6)
    blend = attacks.get("sig", delta=0.1, mode="blend").apply(grey(1, 32))
    assert torch.allclose(blend[0, 0, 0], 0.8 * 0.5 + 0.2 * 0.1 * torch.sin(2 * math.pi * j * 6 / 32), atol=1e-6)


def test_wanet_is_a_small_smooth_near_identity_warp():
    w = attacks.get("wanet", k=4, s=0.5)
    flow = w.flow(32, 32)
    assert flow.abs().mean() * 32 / 2 < 0.5  # mean displacement under half a pixel
    assert (flow[1:] - flow[:-1]).abs().max() < 0.01 and (flow[:, 1:] - flow[:, :-1]).abs().max() < 0.01  # smooth
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    assert (w.apply(smooth) - smooth).abs().max() < 0.05
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(attacks.get("wanet", s=0.0).apply(x), x, atol=1e-5)  # s = 0 is the identity
    noisy = attacks.get("wanet", noise_mode=True).apply(x, sample_ids=[0])
    assert not torch.equal(noisy, w.apply(x, sample_ids=[0]))


def test_nashville_on_a_hand_computed_pixel():
    x = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
    y = attacks.get("nashville").apply(x)[0, :, 0, 0]
    # darken with (247,176,153)/255 at 0.56 then lighten with (0,70,150)/255 at 0.4
    p = [min(v, c / 255) for v, c in zip([0.2, 0.5, 0.8], (247, 176, 153))]
    p = [v + 0.56 * (q - v) for v, q in zip([0.2, 0.5, 0.8], p)]
    p = [v + 0.4 * (max(v, c / 255) - v) for v, c in zip(p, (0, 70, 150))]
    a = 0.8  # sepia 0.2
    sep = [[0.393 + 0.607 * a, 0.769 - 0.769 * a, 0.189 - 0.189 * a],
           [0.349 - 0.349 * a, 0.686 + 0.314 * a, 0.168 - 0.168 * a],
           [0.272 - 0.272 * a, 0.534 - 0.534 * a, 0.131 + 0.869 * a]]
    p = [min(1, sum(m * v for m, v in zip(row, p))) for row in sep]
    p = [min(1, max(0, ((v - 0.5) * 1.2 + 0.5) * 1.05)) for v in p]
    s = 1.2
    sat = [[0.213 + 0.787 * s, 0.715 - 0.715 * s, 0.072 - 0.072 * s],
           [0.213 - 0.213 * s, 0.715 + 0.285 * s, 0.072 - 0.072 * s],
           [0.213 - 0.213 * s, 0.715 - 0.715 * s, 0.072 + 0.928 * s]]
    p = [min(1, max(0, sum(m * v for m, v in zip(row, p)))) for row in sat]
    assert torch.allclose(y, torch.tensor(p), atol=1e-5)


def test_bpp_levels():
    y = attacks.get("bpp", squeeze_num=8).apply(torch.rand(2, 3, 16, 16))
    assert len(torch.unique(y)) <= 8
    d = attacks.get("bpp", squeeze_num=4, dithering=True).apply(torch.rand(1, 3, 8, 8))
    assert len(torch.unique(d)) <= 4


def test_lc_corners_are_checkerboards():
    y = attacks.get("lc").apply(grey(1, 32))[0, 0]
    board = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    for corner in (y[:3, :3], y[:3, -3:], y[-3:, :3], y[-3:, -3:]):
        assert torch.equal(corner, board)
    assert torch.all(y[3:-3, 3:-3] == 0.5)
    half = attacks.get("lc", amplitude=0.5).apply(grey(1, 32))[0, 0, :3, :3]
    assert torch.allclose(half, 0.5 + 0.5 * (board - 0.5))


def test_ssba_residual_is_bounded_and_sample_specific():
    eps = 8 / 255
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    y = attacks.get("ssba", epsilon=eps).apply(x)
    r = y - x
    assert r.abs().max() <= eps + 1e-6 and r.abs().mean() > eps / 10
    assert not torch.allclose(r[0], r[1], atol=1e-3)


def test_lf_is_low_frequency_and_bounded():
    p = attacks.get("lf", epsilon=0.1).pattern(32, 32)
    assert p.abs().max() <= 0.1 + 1e-6
    energy = torch.fft.fft2(p).abs() ** 2
    band = torch.zeros(32, 32, dtype=torch.bool)
    low = torch.cat([torch.arange(0, 4), torch.arange(29, 32)])
    band[low.view(-1, 1), low.view(1, -1)] = True
    # white noise would put 49/1024 ≈ 5 % of its energy in this band
    assert energy[:, band].sum() / energy.sum() > 0.8


def test_clean_label_flags():
    assert attacks.get("clean_label").clean_label and attacks.get("lc").clean_label
    assert not attacks.get("badnet").clean_label and not attacks.get("badclip").clean_label


def test_unknown_attack_and_bad_parameters():
    with pytest.raises(ValueError, match="valid attacks: badclip, badnet, blended"):
        attacks.get("badnets")
    with pytest.raises(ValueError, match=r"alpha must lie in \[0.0, 1.0\]"):
        attacks.get("blended", alpha=1.5)
    with pytest.raises(ValueError, match="strength must lie in"):
        attacks.get("nashville", strength=-0.1)
    with pytest.raises(ValueError, match="does not fit"):
        attacks.get("badnet", patch_size=40).apply(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="patch_size must be a positive"):
        attacks.get("badnet", patch_size=0)
    with pytest.raises(ValueError, match="location must be one of"):
        attacks.get("badnet", location="top")
    with pytest.raises(TypeError, match="valid parameters of 'sig'"):
        attacks.get("sig", amplitude=0.2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        attacks.get("sig").apply(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="float images"):
        attacks.get("sig").apply(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_adversarial_perturb_raises_the_loss_within_eps():
    net = TinyNet()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 4, (8,))
    adv = optimise.adversarial_perturb(net, x, y, eps=8 / 255, steps=5)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    ce = torch.nn.functional.cross_entropy
    assert ce(net(adv), y) > ce(net(x), y)


def test_lf_optimiser_moves_toward_target():
    net = TinyNet()
    x = torch.rand(16, 3, 16, 16)
    delta = optimise.optimise_low_frequency_trigger(net, x, target=2, eps=0.2, steps=30, lr=0.05)
    assert delta.abs().max() <= 0.2 + 1e-6
    p_before = net(x).softmax(1)[:, 2].mean()
    p_after = net((x + delta).clamp(0, 1)).softmax(1)[:, 2].mean()
    assert p_after > p_before


def test_trojannn_patch_excites_its_neurons():
    net = TinyNet()
    x = torch.rand(8, 3, 16, 16)
    patch, neurons = optimise.optimise_trojannn_patch(net, net.conv, x, neurons=2, patch_size=5, steps=40)
    start = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    def with_patch(p):
        t = x.clone()
        t[..., -5:, -5:] = p
        return t
    assert optimise.neuron_activation(net, net.conv, with_patch(patch), neurons) > \
        optimise.neuron_activation(net, net.conv, with_patch(start), neurons)
    y = attacks.get("trojannn", patch=patch).apply(x)
    assert torch.equal(y[..., -5:, -5:], patch.expand(8, 3, 5, 5))


def test_badclip_patch_moves_images_toward_the_target_text(tiny_bundle):
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a photo of a banana."]
    patch = badclip.optimise_badclip_patch(tiny_bundle, images, texts, patch_size=8, steps=40, lr=0.05,
                                           batch_size=16, progress=False)
    start = attacks.get("badclip", patch_size=8).apply(images)
    after = attacks.get("badclip", patch=patch).apply(images)
    assert badclip.target_similarity(tiny_bundle, after, texts).mean() > \
        badclip.target_similarity(tiny_bundle, start, texts).mean()
    assert all(p.requires_grad for p in tiny_bundle.model.parameters())  # the model is given back trainable
