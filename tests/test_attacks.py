import json
import math

import pytest
import torch

from clipdef import attacks
from clipdef.attacks import badclip, blto, optimise
from clipdef.attacks.patches import checkerboard, default_patch_size, initial_badclip_patch, lattice


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread hand-offs cost more than the work (and the CI machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grey(b=2, size=32):
    return torch.full((b, 3, size, size), 0.5)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --- every registered trigger ----------------------------------------------------------------------------------

def test_registry_lists_the_brief():
    assert set(attacks.names()) == {"badnet", "blended", "sig", "wanet", "ssba", "nashville", "clean_label",
                                    "badclip", "blto", "lc", "lf", "bpp", "trojannn", "adaptive_blend"}


@pytest.mark.parametrize("name", attacks.names())
@pytest.mark.parametrize("size", [32, 64, 224])
def test_shape_range_and_source_untouched(name, size):
    x = rand(3, 3, size, size)
    before = x.clone()
    y = attacks.get(name).apply(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before), "the input must never be modified"
    assert not torch.equal(x, y), f"{name} changed nothing"


@pytest.mark.parametrize("name", attacks.names())
def test_dtype_kept_params_json_and_flag(name):
    trigger = attacks.get(name)
    assert trigger.name == name and isinstance(trigger.clean_label, bool)
    json.dumps(trigger.describe())
    for dtype in (torch.float64, torch.float16):
        assert attacks.get(name).apply(rand(2, 3, 16, 16).to(dtype)).dtype == dtype


@pytest.mark.parametrize("name", attacks.names())
def test_deterministic_given_seed(name):
    x = rand(4, 3, 32, 32, seed=1)
    a = attacks.get(name, seed=3).apply(x, sample_ids=[5, 6, 7, 8])
    b = attacks.get(name, seed=3).apply(x, sample_ids=[5, 6, 7, 8])
    assert torch.equal(a, b)
    # a sample gets the same trigger whichever batch it is in
    c = attacks.get(name, seed=3).apply(x[1:2], sample_ids=[6])
    assert torch.allclose(a[1:2], c, atol=1e-6)


@pytest.mark.parametrize("name,params", [("blended", {}), ("blended", {"per_image_noise": True}), ("wanet", {}),
                                         ("ssba", {}), ("lf", {}), ("badclip", {}), ("trojannn", {}),
                                         ("blto", {}), ("adaptive_blend", {}), ("badnet", {"location": "random"})])
def test_other_seed_other_trigger(name, params):
    x = rand(2, 3, 32, 32, seed=1)
    assert not torch.equal(attacks.get(name, seed=0, **params).apply(x), attacks.get(name, seed=1, **params).apply(x))


@pytest.mark.parametrize("params", [{"per_image_noise": True}, {"location": "random"}])
def test_per_image_randomness_follows_the_sample_id(params):
    name = "blended" if "per_image_noise" in params else "badnet"
    x = grey(2)
    y = attacks.get(name, **params).apply(x, sample_ids=[0, 1])
    assert not torch.equal(y[0], y[1])
    assert torch.equal(attacks.get(name, **params).apply(x, sample_ids=[1, 1])[0], y[1])


def test_randomness_never_touches_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for name in attacks.names():
        attacks.get(name, seed=5).apply(rand(2, 3, 16, 16))
    assert torch.equal(torch.rand(3), expected)


# --- defining properties ---------------------------------------------------------------------------------------

def test_badnet_patch_region_equals_pattern_and_rest_untouched():
    x = rand(2, 3, 32, 32)
    y = attacks.get("badnet").apply(x)
    s = default_patch_size(32)
    assert torch.equal(y[..., -s:, -s:], lattice(s).expand(2, 3, s, s))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[-s:, -s:] = False
    assert torch.equal(y[..., mask], x[..., mask])
    assert (default_patch_size(32), default_patch_size(64), default_patch_size(224)) == (3, 5, 16)
    assert lattice(16)[0, :3, :3].tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 1]]


def test_badnet_locations_and_patterns():
    y = attacks.get("badnet", location="random", patch_size=4).apply(torch.zeros(8, 3, 32, 32))
    positions = {tuple(torch.nonzero(img[0]).min(0).values.tolist()) for img in y}
    assert len(positions) > 1
    c = attacks.get("badnet", location="center", patch_size=4).apply(torch.zeros(1, 3, 32, 32))
    assert torch.nonzero(c[0, 0]).min(0).values.tolist() == [14, 14]
    c224 = attacks.get("badnet", location="center").apply(torch.zeros(1, 3, 224, 224))
    assert torch.nonzero(c224[0, 0]).min(0).values.tolist() == [104, 104]  # the detection paper's test position
    yellow = attacks.get("badnet", pattern="yellow").apply(torch.zeros(1, 3, 32, 32))[0, :, -1, -1]
    assert yellow.tolist() == [1.0, 1.0, 0.0]
    custom = attacks.get("badnet", pattern=torch.full((1, 2, 2), 0.25), patch_size=4).apply(torch.zeros(1, 3, 8, 8))
    assert torch.all(custom[..., -4:, -4:] == 0.25) and custom[..., :4, :].sum() == 0


def test_blended_is_the_convex_combination():
    x = rand(2, 3, 16, 16)
    pattern = rand(3, 16, 16, seed=1)
    y = attacks.get("blended", alpha=0.3, pattern=pattern).apply(x)
    assert torch.allclose(y, 0.7 * x + 0.3 * pattern, atol=1e-6)
    grey_pattern = attacks.get("blended", alpha=1.0, pattern=torch.full((1, 4, 4), 0.3)).apply(x)
    assert torch.allclose(grey_pattern, torch.full_like(x, 0.3))  # a one-channel pattern, resized


def test_sig_adds_the_stated_signal():
    y = attacks.get("sig", delta=0.1, frequency=6).apply(grey(1, 32))
    j = torch.arange(32, dtype=torch.float32)
    want = 0.5 + 0.1 * torch.sin(2 * math.pi * j * 6 / 32)
    assert torch.allclose(y[0, 1, 7], want, atol=1e-6) and torch.allclose(y[0, 2, 30], want, atol=1e-6)
    blend = attacks.get("sig", delta=0.1, mode="blend").apply(grey(1, 32))
    assert torch.allclose(blend[0, 0, 0], 0.8 * 0.5 + 0.2 * 0.1 * torch.sin(2 * math.pi * j * 6 / 32), atol=1e-6)
    assert attacks.get("sig").delta == 60 / 255


def test_wanet_is_a_small_smooth_near_identity_warp():
    w = attacks.get("wanet", k=4, s=0.5)
    flow = w.flow(32, 32)
    assert flow.abs().mean() * 32 / 2 < 0.5  # mean displacement under half a pixel
    assert (flow[1:] - flow[:-1]).abs().max() < 0.01 and (flow[:, 1:] - flow[:, :-1]).abs().max() < 0.01  # smooth
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    assert (w.apply(smooth) - smooth).abs().max() < 0.05
    x = rand(1, 3, 32, 32)
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
    # the first step alone on a white pixel: darken toward (247,176,153) at opacity 0.56
    assert torch.allclose(torch.tensor([1 - 0.56 * (1 - 247 / 255)]), torch.tensor([0.9824314]), atol=1e-6)


def test_bpp_levels():
    y = attacks.get("bpp", squeeze_num=8).apply(rand(2, 3, 16, 16))
    assert len(torch.unique(y)) <= 8
    assert torch.allclose(y * 7, torch.round(y * 7), atol=1e-5)
    d = attacks.get("bpp", squeeze_num=4, dithering=True).apply(rand(1, 3, 8, 8))
    assert len(torch.unique(d)) <= 4


def test_lc_corners_are_checkerboards():
    y = attacks.get("lc").apply(grey(1, 32))[0, 0]
    board = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    for corner in (y[:3, :3], y[:3, -3:], y[-3:, :3], y[-3:, -3:]):
        assert torch.equal(corner, board)
    assert torch.all(y[3:-3, :] == 0.5) and torch.all(y[:, 3:-3] == 0.5)
    # BackdoorBench adds ±reduced_amplitude (then clips)
    faint = attacks.get("lc", reduced_amplitude=0.25).apply(grey(1, 32))[0, 0, :3, :3]
    assert torch.allclose(faint, 0.5 + 0.25 * (2 * board - 1))
    assert torch.equal(attacks.get("lc", reduced_amplitude=0.0).apply(grey(1, 32)), grey(1, 32))
    # the board scales with the image: 6 px (2-px cells) at 64
    big = attacks.get("lc").apply(grey(1, 64))[0, 0]
    assert torch.equal(big[:6, :6], board.repeat_interleave(2, 0).repeat_interleave(2, 1)) and big[6, 6] == 0.5
    assert checkerboard(21)[::7, ::7].tolist() == (2 * board - 1).tolist()


def test_ssba_residual_is_bounded_and_sample_specific():
    eps = 8 / 255
    x = rand(4, 3, 32, 32, seed=2) * 0.8 + 0.1
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


def test_adaptive_blend_blends_half_the_pieces_and_the_full_pattern_at_test():
    pattern = rand(3, 32, 32, seed=4)
    x = grey(3)
    trigger = attacks.get("adaptive_blend", pattern=pattern)
    y = trigger.apply(x)
    for img in y:  # 16 pieces of 8×8 px; half of them changed
        changed = (img - 0.5).abs().sum(0).view(4, 8, 4, 8).sum((1, 3)) > 0
        assert changed.sum() == 8
    assert not torch.equal(y[0], y[1])
    test = trigger.test_trigger()
    assert test.full and test.alpha == 0.2
    assert torch.allclose(test.apply(x), 0.8 * x + 0.2 * pattern, atol=1e-6)


def test_blto_residual_is_bounded_and_image_dependent():
    x = rand(2, 3, 32, 32) * 0.8 + 0.1
    r = attacks.get("blto").apply(x) - x
    assert r.abs().max() <= 8 / 255 + 1e-6 and not torch.allclose(r[0], r[1], atol=1e-3)
    odd = attacks.get("blto").apply(rand(1, 3, 31, 17))
    assert odd.shape == (1, 3, 31, 17)


def test_clean_label_flags():
    assert attacks.get("clean_label").clean_label and attacks.get("lc").clean_label
    assert not attacks.get("badnet").clean_label and not attacks.get("badclip").clean_label
    assert attacks.get("badnet", clean_label=True).clean_label  # the detection paper's clean-label BadNets
    assert attacks.get("sig", clean_label=True).params["clean_label"] is True  # BackdoorBench's SIG


# --- bad input -------------------------------------------------------------------------------------------------

def test_unknown_attack_lists_the_valid_names():
    for error in (KeyError, ValueError):
        with pytest.raises(error, match="valid attacks: adaptive_blend, badclip, badnet, blended"):
            attacks.get("badnets")


@pytest.mark.parametrize("name,params,msg", [
    ("blended", {"alpha": 1.5}, r"alpha must lie in \[0.0, 1.0\]"),
    ("blended", {"alpha": -0.1}, r"alpha must lie in \[0.0, 1.0\]"),
    ("nashville", {"strength": -0.1}, r"strength must lie in \[0.0, 1.0\]"),
    ("lc", {"reduced_amplitude": 2}, r"reduced_amplitude must lie in \[0.0, 1.0\]"),
    ("sig", {"delta": 3}, r"delta must lie in"),
    ("sig", {"mode": "multiply"}, r"mode must be one of \('add', 'blend'\)"),
    ("ssba", {"epsilon": 0}, r"epsilon must lie in \(0.0, 1.0\]"),
    ("badnet", {"patch_size": 0}, "patch_size must be a positive"),
    ("badnet", {"patch_size": -3}, "patch_size must be a positive"),
    ("badnet", {"location": "top"}, "location must be one of"),
    ("badnet", {"pattern": "zigzag"}, "pattern must be one of"),
    ("badnet", {"pattern": torch.full((3, 4, 4), 2.0)}, r"pattern values must lie in \[0.0, 1.0\]"),
    ("bpp", {"squeeze_num": 1}, r"squeeze_num must be an integer in \[2, 256\]"),
    ("wanet", {"k": 1}, "k must be an integer ≥ 2"),
    ("adaptive_blend", {"pieces": 10}, "pieces must be a square number"),
    ("blended", {"per_image_noise": True, "pattern": torch.rand(3, 4, 4)}, "not both"),
    ("badclip", {"patch": torch.rand(3, 4, 5)}, "patch must be square"),
    ("badnet", {"seed": -1}, "seed must be an integer ≥ 0"),
])
def test_bad_parameters_say_the_valid_range(name, params, msg):
    with pytest.raises(ValueError, match=msg):
        attacks.get(name, **params)


def test_bad_calls():
    with pytest.raises(ValueError, match="does not fit"):
        attacks.get("badnet", patch_size=40).apply(rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="overlap"):
        attacks.get("lc", size=5).apply(rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="valid parameters of 'sig'"):
        attacks.get("sig", amplitude=0.2)
    with pytest.raises(ValueError, match="valid parameters of 'sig'"):
        attacks.get("sig", amplitude=0.2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        attacks.get("sig").apply(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="float images"):
        attacks.get("sig").apply(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2 sample ids for 1 images"):
        attacks.get("sig").apply(torch.rand(1, 3, 8, 8), sample_ids=[0, 1])


# --- optimisers ------------------------------------------------------------------------------------------------

class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def no_grads_written(model):
    return all(p.grad is None for p in model.parameters())


def test_adversarial_perturb_raises_the_loss_within_eps():
    net = TinyNet().train()
    x, y = rand(8, 3, 16, 16), torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(0))
    log = []
    adv = optimise.adversarial_perturb(net, x, y, eps=8 / 255, steps=5, batch_size=5, loss_log=log)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    ce = torch.nn.functional.cross_entropy
    assert ce(net(adv), y) > ce(net(x), y) and log[-1] > log[0]
    assert no_grads_written(net) and net.training  # mode restored
    with pytest.raises(ValueError, match="eps must lie in"):
        optimise.adversarial_perturb(net, x, y, eps=0)


def test_lf_optimiser_moves_toward_target():
    net = TinyNet()
    x = rand(16, 3, 16, 16)
    log = []
    delta = optimise.optimise_low_frequency_trigger(net, x, target=2, eps=0.2, steps=30, lr=0.05, loss_log=log)
    assert delta.shape == (3, 16, 16) and delta.abs().max() <= 0.2 + 1e-6
    p_before = net(x).softmax(1)[:, 2].mean()
    p_after = net((x + delta).clamp(0, 1)).softmax(1)[:, 2].mean()
    assert p_after > p_before and log[-1] < log[0]
    assert no_grads_written(net)
    y = attacks.get("lf", perturbation=delta, epsilon=0.2).apply(x)
    assert torch.allclose(y, (x + delta).clamp(0, 1), atol=1e-6)


def test_trojannn_patch_excites_its_neurons():
    net = TinyNet()
    x = rand(8, 3, 16, 16)
    log = []
    patch, neurons = optimise.optimise_trojannn_patch(net, net.conv, x, neurons=2, patch_size=5, steps=40,
                                                      loss_log=log)
    start = torch.rand(3, 5, 5)

    def with_patch(p):
        t = x.clone()
        t[..., -5:, -5:] = p
        return t
    assert optimise.neuron_activation(net, net.conv, with_patch(patch), neurons) > \
        optimise.neuron_activation(net, net.conv, with_patch(start), neurons)
    assert log[-1] < log[0] and no_grads_written(net)
    y = attacks.get("trojannn", patch=patch).apply(x)
    assert torch.equal(y[..., -5:, -5:], patch.expand(8, 3, 5, 5))
    mask = torch.zeros(5, 5)
    mask[1:4, 1:4] = 1.0
    masked = attacks.get("trojannn", patch=patch, mask=mask).apply(x)
    assert torch.equal(masked[..., -4:-1, -4:-1], patch[:, 1:4, 1:4].expand(8, 3, 3, 3))
    assert torch.equal(masked[..., -5, -5:], x[..., -5, -5:])  # outside the mask: untouched
    patch2, chosen = optimise.optimise_trojannn_patch(net, net.head, None, neurons=[1], steps=3, image_size=16)
    assert chosen == [1] and patch2.shape == (3, 3, 3)  # default size at 16 px, on grey canvases


def test_trojannn_neurons_of_a_residual_block_are_its_output_units():
    """The victims' PreAct block registers BatchNorm weights (1-D) before its convolutions: the units are those
    of its output convolution, and the patch optimisation runs on the block (chapter 5's choice of layer)."""
    from clipdef import models

    net = models.PreActResNet(num_classes=4, width=4)
    block = net.layers[-1]
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.weight[5] = 1.0   # the two output channels with the strongest incoming weights
        block.conv2.weight[2] = 0.5
    assert optimise.most_connected_neurons(block, 2) == [5, 2]
    patch, chosen = optimise.optimise_trojannn_patch(net, block, rand(4, 3, 16, 16), neurons=2, steps=2)
    assert chosen == [5, 2] and patch.shape[0] == 3
    with pytest.raises(ValueError, match="no convolution or linear weight"):
        optimise.most_connected_neurons(torch.nn.BatchNorm2d(3), 1)


def test_badclip_patch_moves_images_toward_the_target_text(tiny_bundle):
    images = rand(32, 3, 32, 32)
    texts = ["a photo of a banana."]
    log = []
    patch = badclip.optimise_badclip_patch(tiny_bundle, images, texts, patch_size=8, steps=30, lr=0.05,
                                           batch_size=16, progress=False, loss_log=log)
    assert patch.shape == (3, 8, 8) and patch.min() >= 0 and patch.max() <= 1 and log[-1] < log[0]
    start = attacks.get("badclip", patch_size=8).apply(images)
    assert torch.equal(start[..., 12:20, 12:20], initial_badclip_patch(8, 0).expand(32, 3, 8, 8))
    after = attacks.get("badclip", patch=patch).apply(images)
    assert badclip.target_similarity(tiny_bundle, after, texts).mean() > \
        badclip.target_similarity(tiny_bundle, start, texts).mean()
    assert all(p.requires_grad for p in tiny_bundle.model.parameters())  # the model is given back trainable


def test_badclip_patch_side_has_a_floor_and_the_book_floor_keeps_the_tiny_worlds_patch(tiny_bundle):
    texts = ["a photo of a banana."]
    floored = badclip.optimise_badclip_patch(tiny_bundle, rand(8, 3, 32, 32), texts, min_patch_size=6, steps=2,
                                             batch_size=4, progress=False)
    sized = badclip.optimise_badclip_patch(tiny_bundle, rand(8, 3, 32, 32), texts, patch_size=6, steps=2,
                                           batch_size=4, progress=False)
    assert floored.shape == (3, 6, 6) and torch.equal(floored, sized)   # the same optimisation as patch_size=6
    assert attacks.CLIP_PARAMS["badclip"] == {"min_patch_size": 6}
    with pytest.raises(ValueError, match="min_patch_size"):
        badclip.optimise_badclip_patch(tiny_bundle, rand(2, 3, 32, 32), texts, min_patch_size=0, steps=1,
                                       progress=False)


def test_badclip_on_a_bare_model_with_contrastive_and_triplet_terms(tiny_bundle):
    model = tiny_bundle.model
    frozen_param = next(model.parameters())
    frozen_param.requires_grad_(False)
    try:
        log = []
        patch = badclip.optimise_badclip_patch(model, rand(16, 3, 32, 32), ["a photo of a banana.", "a banana."],
                                               patch_size=6, steps=15, lr=0.05, batch_size=8, progress=False,
                                               tokenizer=tiny_bundle.tokenizer, prepare=tiny_bundle.prepare_images,
                                               text_loss="contrastive", positive_images=rand(4, 3, 32, 32, seed=3),
                                               loss_log=log)
        assert patch.shape == (3, 6, 6) and len(log) == 15 and log[-1] < log[0]
        assert not frozen_param.requires_grad  # flags restored as they were
        assert all(p.grad is None for p in model.parameters())
    finally:
        frozen_param.requires_grad_(True)
    with pytest.raises(ValueError, match="needs tokenizer="):
        badclip.optimise_badclip_patch(model, rand(2, 3, 32, 32), ["a banana."], steps=1, progress=False)


def test_blto_generator_training_pulls_toward_the_target(tiny_bundle):
    def encoder(x):
        return tiny_bundle.model.encode_image(tiny_bundle.prepare_images(x))

    images = rand(16, 3, 32, 32)
    target = torch.randn(128, generator=torch.Generator().manual_seed(9))  # a direction the images are far from
    log = []
    net = blto.train_blto_generator(encoder, images, target, eps=16 / 255, steps=15, lr=1e-2, batch_size=16,
                                    progress=False, loss_log=log)
    assert log[-1] < log[0]
    assert all(p.grad is None for p in tiny_bundle.model.parameters())
    y = attacks.get("blto", generator=net, epsilon=16 / 255).apply(images)
    assert (y - images).abs().max() <= 16 / 255 + 1e-6
