import json
import math

import pytest
import torch

from clipdef import attacks
from clipdef.attacks import badclip, blto, inputaware, optimise
from clipdef.attacks.patches import (checkerboard, default_patch_size, initial_badclip_patch, lattice, patch_side,
                                     trojannn_mask)


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
                                    "badclip", "blto", "lc", "lf", "bpp", "trojannn", "adaptive_blend", "inputaware"}


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
                                         ("ssba", {}), ("lf", {}), ("badclip", {}), ("inputaware", {}),
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


def test_lf_adds_a_positive_low_frequency_pattern_spanning_0_to_eps():
    """BackdoorBench's LF patterns (resource/lowFrequency/*_0_255.npy) span 0–51 of 255 and are added."""
    trigger = attacks.get("lf")
    assert trigger.epsilon == pytest.approx(51 / 255)
    p = trigger.pattern(32, 32)
    assert p.min() == 0 and p.max() == pytest.approx(51 / 255)
    energy = torch.fft.fft2(p).abs() ** 2
    band = torch.zeros(32, 32, dtype=torch.bool)
    low = torch.cat([torch.arange(0, 4), torch.arange(29, 32)])
    band[low.view(-1, 1), low.view(1, -1)] = True
    # white noise would put 49/1024 ≈ 5 % of its energy in this band
    assert energy[:, band].sum() / energy.sum() > 0.8
    x = rand(2, 3, 32, 32) * 0.5  # dark enough that nothing clips
    assert torch.allclose(trigger.apply(x), x + p, atol=1e-6)
    assert (attacks.get("lf").apply(torch.ones(1, 3, 32, 32)) == 1).all()  # additive, clipped: white stays white
    # a given perturbation is min–max normalised to [0, ε], so ε sets the strength of any pattern
    q = rand(3, 8, 8, seed=3) * 2 - 1
    half = attacks.get("lf", perturbation=q, epsilon=0.1).pattern(8, 8)
    assert torch.allclose(half, 0.1 * (q - q.min()) / (q.max() - q.min()), atol=1e-6)


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
    ("lf", {"epsilon": 0}, r"epsilon must lie in \(0.0, 1.0\]"),
    ("lf", {"perturbation": torch.zeros(3, 8, 8)}, "perturbation is constant"),
    ("lf", {"perturbation": torch.rand(8, 8)}, r"perturbation must be a finite float tensor of shape \(3, h, w\)"),
    ("trojannn", {"mask": "banana"}, r"mask must be one of \('apple', 'square'\)"),
    ("trojannn", {"mask": torch.zeros(8, 8)}, "mask has no non-zero pixel"),
    ("trojannn", {"pattern": torch.rand(1, 8, 8)}, r"pattern must be a float tensor of shape \(C, h, w\)"),
    ("trojannn", {"pattern": torch.full((3, 8, 8), 1.5)}, r"pattern values must lie in \[0.0, 1.0\]"),
    ("inputaware", {"generator": torch.nn.Identity()}, "give both generator and mask_generator"),
    ("inputaware", {"generator": "G", "mask_generator": "M"}, "generator must be a torch.nn.Module"),
    ("inputaware", {"width": 0}, "width must be an integer ≥ 1"),
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
    pattern = optimise.optimise_low_frequency_trigger(net, x, target=2, eps=0.2, steps=30, lr=0.05, loss_log=log)
    assert pattern.shape == (3, 16, 16) and pattern.min() == 0 and pattern.max() == pytest.approx(0.2)
    p_before = net(x).softmax(1)[:, 2].mean()
    p_after = net((x + pattern).clamp(0, 1)).softmax(1)[:, 2].mean()
    assert p_after > p_before and log[-1] < log[0]
    assert no_grads_written(net)
    y = attacks.get("lf", perturbation=pattern).apply(x)
    assert torch.allclose(y, (x + pattern).clamp(0, 1), atol=1e-6)  # the trigger adds it as optimised
    with pytest.raises(ValueError, match="need some images"):
        optimise.optimise_low_frequency_trigger(net, x[:0], target=2)


def test_trojannn_adds_the_mask_image_inside_the_mask_only():
    """BackdoorBench's TrojanTrigger adds the optimised mask image (zero outside the mask) and clips; until a pattern
    is optimised, the optimiser's starting point, the white mask itself, stands in."""
    apple, square = trojannn_mask("apple", 32, 32)[0], trojannn_mask("square", 32, 32)[0]
    assert 100 <= apple.sum() <= 130 and apple[:16].sum() == 0 and apple[:, :16].sum() == 0  # bottom-right quarter
    assert square.sum() == 100 and square[20:30, 20:30].all()
    assert 0.09 < trojannn_mask("apple", 224, 224).mean() < 0.13  # the same shape at any size
    x = rand(2, 3, 32, 32) * 0.5
    y = attacks.get("trojannn").apply(x)
    inside = apple.bool()
    assert torch.equal(y[..., ~inside], x[..., ~inside]) and torch.all(y[..., inside] == 1.0)
    pattern = torch.full((3, 32, 32), 0.25)
    y = attacks.get("trojannn", pattern=pattern, mask="square").apply(x)
    assert torch.allclose(y[..., 20:30, 20:30], x[..., 20:30, 20:30] + 0.25)
    assert torch.equal(y[..., :20, :], x[..., :20, :])
    custom = torch.zeros(1, 8, 8)
    custom[0, 2:4, 5:7] = 1.0
    z = attacks.get("trojannn", mask=custom).apply(torch.zeros(1, 3, 8, 8))
    assert z.sum() == 3 * 4 and torch.all(z[0, :, 2:4, 5:7] == 1)


def test_trojannn_neurons_are_the_inputs_of_the_layer_with_the_largest_weights():
    """BackdoorBench's get_most_connected_neuron_idxes: argsort of the column sums of |W| (a convolution's kernels
    summed over space first): the units feeding the layer that weigh most in it."""
    linear = torch.nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, 3] = torch.tensor([1.0, -1.0, 0.5])   # column sum of |w|: 2.5
        linear.weight[0, 1] = -2.0                             # 2.0
    assert optimise.most_connected_neurons(linear, 2) == [3, 1]
    conv = torch.nn.Conv2d(4, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 2] = 0.1   # 9 taps × 0.1 = 0.9 for input channel 2
        conv.weight[0, 0, 1, 1] = 0.5
    assert optimise.most_connected_neurons(conv, 2) == [2, 0]
    with pytest.raises(ValueError, match="linear or convolutional layer"):
        optimise.most_connected_neurons(torch.nn.BatchNorm2d(3), 1)
    with pytest.raises(ValueError, match=r"neurons must be an integer in \[1, 5\]"):
        optimise.most_connected_neurons(linear, 6)


def test_trojannn_trigger_drives_the_chosen_penultimate_features_toward_the_target():
    from clipdef import models

    net = models.PreActResNet(num_classes=4, width=4).train()
    log = []
    pattern, chosen = optimise.optimise_trojannn_trigger(net, net.head, image_size=16, steps=20, loss_log=log)
    start = trojannn_mask("apple", 16, 16).expand(3, 16, 16)
    assert chosen == optimise.most_connected_neurons(net.head, 2) and len(log) == 20 and log[-1] < log[0]
    assert pattern.shape == (3, 16, 16) and pattern.min() >= 0 and pattern.max() <= 1
    assert torch.all(pattern[start == 0] == 0) and (pattern - start).abs().max() <= 0.3 + 1e-6  # the mask, ±eps
    assert optimise.selected_activation(net, net.head, pattern[None], chosen) > \
        optimise.selected_activation(net, net.head, start[None], chosen)
    assert no_grads_written(net) and net.training  # mode restored
    stopped = []
    optimise.optimise_trojannn_trigger(net, net.head, image_size=16, steps=20, tolerance=1e12, loss_log=stopped)
    assert len(stopped) == 1  # below the tolerance after one step
    _, explicit = optimise.optimise_trojannn_trigger(net, net.head, image_size=16, neurons=[0], steps=1)
    assert explicit == [0]
    with pytest.raises(ValueError, match="eps must lie in"):
        optimise.optimise_trojannn_trigger(net, net.head, eps=0)


def test_badclip_patch_moves_images_toward_the_target_text(tiny_bundle):
    images = rand(32, 3, 32, 32)
    texts = ["a photo of a banana."]
    log = []
    patch = badclip.optimise_badclip_patch(tiny_bundle, images, texts, patch_size=8, steps=30, lr=0.05,
                                           batch_size=16, progress=False, loss_log=log, text_loss="cosine",
                                           aug_prob=0.0, eda_prob=0.0)
    assert patch.shape == (3, 8, 8) and patch.min() >= 0 and patch.max() <= 1 and log[-1] < log[0]
    start = attacks.get("badclip", patch_size=8).apply(images)
    assert torch.equal(start[..., 12:20, 12:20], initial_badclip_patch(8, 0).expand(32, 3, 8, 8))
    after = attacks.get("badclip", patch=patch).apply(images)
    assert badclip.target_similarity(tiny_bundle, after, texts).mean() > \
        badclip.target_similarity(tiny_bundle, start, texts).mean()
    assert all(p.requires_grad for p in tiny_bundle.model.parameters())  # the model is given back trainable


def test_badclips_recipe_is_the_profiles_and_the_tiny_patch_is_6_px_where_the_papers_scales_to_3():
    from clipdef import profiles
    from clipdef.stages.clip import badclip_params

    tiny, paper = profiles.PROFILES["tiny"], profiles.PROFILES["paper"]
    assert badclip_params(tiny)["patch_size"] == 6 and badclip_params(tiny, steps=3)["steps"] == 3
    assert paper.badclip == badclip.BadCLIPSettings() and badclip_params(paper)["patch_size"] is None
    assert patch_side(32, badclip_params(paper)["patch_size"]) == 3 and patch_side(224) == 16
    with pytest.raises(TypeError, match="patch_sides"):
        badclip_params(tiny, patch_sides=6)


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
                                               triplet="cosine", triplet_weight=1.0, margin=0.1, aug_prob=0.0,
                                               eda_prob=0.0, loss_log=log)
        assert patch.shape == (3, 6, 6) and len(log) == 15 and log[-1] < log[0]
        assert not frozen_param.requires_grad  # flags restored as they were
        assert all(p.grad is None for p in model.parameters())
    finally:
        frozen_param.requires_grad_(True)
    with pytest.raises(ValueError, match="needs tokenizer="):
        badclip.optimise_badclip_patch(model, rand(2, 3, 32, 32), ["a banana."], steps=1, progress=False)



def test_badclip_settings_default_to_the_official_recipe():
    s = badclip.BadCLIPSettings()
    # the README command: Adam at its default lr, 50 epochs over 10,000 images at batch 64 (the last batch dropped)
    assert (s.lr, s.batch_size, s.steps) == (1e-3, 64, 50 * (10_000 // 64))
    assert (s.aug_prob, s.eda_prob, s.location, s.patch_size) == (0.5, 0.1, "center", None)
    assert (s.text_loss, s.triplet, s.triplet_weight, s.margin) == ("contrastive", "euclidean", 500.0, 1.0)
    assert s.replace(steps=200.0, lr=1).steps == 200 and isinstance(s.replace(lr=1).lr, float)
    for bad, msg in [({"aug_prob": 1.5}, r"aug_prob must lie in \[0.0, 1.0\]"),
                     ({"text_loss": "l2"}, "text_loss must be one of"),
                     ({"triplet": "l1"}, "triplet must be one of"),
                     ({"steps": 0}, "steps must be an integer ≥ 1"),
                     ({"location": "top"}, "location must be one of"),
                     ({"text_loss": "none", "triplet": "none"}, "switches every loss off")]:
        with pytest.raises(ValueError, match=msg):
            badclip.BadCLIPSettings(**bad)
    with pytest.raises(TypeError, match="BadCLIPSettings has no setting"):
        s.replace(epochs=50)


def test_badclip_augments_the_image_before_pasting_and_the_captions_with_eda(tiny_bundle, monkeypatch):
    """The code AutoAugments the clean image and pastes the patch after (embed_patch on the augmented pixel values),
    so the patch reaches the encoder as it is; EDA swaps a batch's captions for their EDA versions."""
    images = rand(8, 3, 32, 32)
    seen, texts_seen = [], []
    tokenize = tiny_bundle.tokenizer

    def tokenizer(texts):
        texts_seen.append(list(texts))
        return tokenize(texts)

    def run(**recipe):
        seen.clear(), texts_seen.clear()
        badclip.optimise_badclip_patch(tiny_bundle.model, images, ["a photo of a banana."], patch_size=6, steps=1,
                                       batch_size=8, progress=False, tokenizer=tokenizer,
                                       prepare=tiny_bundle.prepare_images, augment=lambda x: seen.append(x) or x,
                                       **recipe)
        return seen[0]

    start = initial_badclip_patch(6, 0)
    plain = run(aug_prob=0.0, eda_prob=0.0)
    augmented = run(aug_prob=1.0, eda_prob=1.0)
    assert len(texts_seen) == 2 and texts_seen[1] != texts_seen[0]   # the captions and their EDA versions
    for triggered in (plain, augmented):
        assert torch.equal(triggered[..., 13:19, 13:19], start.expand(8, 3, 6, 6))  # the patch, never augmented
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[13:19, 13:19] = False
    assert not torch.allclose(plain[..., outside], augmented[..., outside])  # the images around it are
    assert badclip.eda_versions(["a photo of a banana."], 0) == badclip.eda_versions(["a photo of a banana."], 0)
    assert badclip.eda_versions(["a photo of a banana."], 0) != ["a photo of a banana."]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    run(aug_prob=1.0)
    assert torch.equal(torch.rand(3), expected)  # AutoAugment's draws leave the global RNG alone


def test_badclip_official_recipe_runs_its_contrastive_and_triplet_terms(tiny_bundle):
    log = []
    patch = badclip.optimise_badclip_patch(tiny_bundle, rand(16, 3, 32, 32),
                                           ["a photo of a banana.", "a bad photo of a banana.", "a banana."],
                                           badclip.BadCLIPSettings(steps=4, batch_size=8), patch_size=6,
                                           positive_images=rand(4, 3, 32, 32, seed=3), progress=False,
                                           loss_log=log)
    # the weighted triplet dominates: 500 · relu(‖a − p‖ − ‖a − n‖ + 1) with unit embeddings
    assert patch.shape == (3, 6, 6) and len(log) == 4 and all(math.isfinite(v) and v > 100 for v in log)
    with pytest.raises(ValueError, match="needs positive_images"):
        badclip.optimise_badclip_patch(tiny_bundle, rand(4, 3, 32, 32), ["a banana."], text_loss="none", steps=1,
                                       progress=False)

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


# --- Input-Aware (IAD) -----------------------------------------------------------------------------------------

def test_inputaware_blends_each_image_with_its_own_pattern_through_its_own_mask():
    trigger = attacks.get("inputaware", seed=1)
    x = rand(3, 3, 32, 32)
    pattern, mask = trigger.pattern_and_mask(x)
    assert pattern.shape == (3, 3, 32, 32) and mask.shape == (3, 1, 32, 32)
    assert torch.allclose(trigger.apply(x), (x + (pattern - x) * mask).clamp(0, 1), atol=1e-6)
    residual = trigger.apply(x) - x
    assert not torch.allclose(residual[0], residual[1], atol=1e-3)   # input-specific
    # a cross sample carries its partner's pattern and mask: not its own trigger
    partners = x.roll(1, 0)
    p2, m2 = trigger.pattern_and_mask(partners)
    assert torch.allclose(trigger.cross(x, partners), (x + (p2 - x) * m2).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(trigger.cross(x, partners), trigger.apply(x), atol=1e-3)
    # the threshold is a steep step at 0.5 (BackdoorBench's tanh(20m − 10)/2 + 1/2)
    t = inputaware.threshold(torch.tensor([0.0, 0.4, 0.5, 0.6, 1.0]))
    assert t[0] < 1e-4 and t[-1] > 1 - 1e-4 and abs(t[2] - 0.5) < 1e-6 and t[1] < 0.02 and t[3] > 0.98
    # trained networks are used as given
    given = attacks.get("inputaware", generator=trigger._pattern_net, mask_generator=trigger._mask_net)
    assert torch.allclose(given.apply(x), trigger.apply(x), atol=1e-6)
    with pytest.raises(ValueError, match="at least 8×8 px"):
        trigger.apply(rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="must match"):
        trigger.cross(x, x[:1])


def test_inputaware_losses_on_hand_computed_values():
    x1, x2 = torch.zeros(2, 1, 1, 2), torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]])
    g1, g2 = torch.zeros(2, 1, 1, 2), torch.tensor([[[[0.5, 0.5]]], [[[0.0, 1.0]]]])
    # image distances (rms): 1 and √2; pattern distances: 0.5 and √0.5 → ratios 2 and 2
    assert inputaware.diversity_loss(x1, x2, g1, g2).item() == pytest.approx(2.0, rel=1e-5)
    masks = torch.tensor([0.0, 0.032, 0.532, 1.032])
    assert inputaware.mask_norm_loss(masks, 0.032).item() == pytest.approx((0.5 + 1.0) / 4)


def test_inputaware_batch_poisons_the_first_images_and_crosses_the_next_keeping_their_labels():
    trigger = attacks.get("inputaware")
    generator, mask_net = trigger._pattern_net, trigger._mask_net
    seen = {}

    def classifier(inputs):
        seen["inputs"] = inputs
        return torch.zeros(len(inputs), 4, requires_grad=True)

    x1, x2 = rand(8, 3, 16, 16), rand(8, 3, 16, 16, seed=1)
    y1 = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    settings = inputaware.InputAwareSettings()
    with torch.no_grad():
        loss, logs = inputaware.inputaware_batch(classifier, generator, mask_net, x1, y1, x2, 3, 2, settings)
    inputs = seen["inputs"]
    assert torch.allclose(inputs[:2], trigger.apply(x1[:2]), atol=1e-5)            # own trigger
    assert torch.allclose(inputs[2:4], trigger.cross(x1[2:4], x2[2:4]), atol=1e-5)  # the partner's
    assert torch.equal(inputs[4:], x1[4:])                                           # clean
    assert logs["ce"] == pytest.approx(math.log(4)) and logs["diversity"] > 0
    rng = __import__("numpy").random.default_rng(0)
    counts = [inputaware.backdoor_count(0.1, 64, rng) for _ in range(2000)]
    assert set(counts) == {6, 7} and sum(counts) / len(counts) == pytest.approx(6.4, abs=0.1)  # 0.1 · 64 expected
    assert max(inputaware.backdoor_count(0.9, 10, rng) for _ in range(20)) == 5  # room for the cross samples


def test_inputaware_trains_its_mask_then_its_pattern_with_the_classifier():
    from clipdef import data, models

    images, labels = rand(32, 3, 16, 16), torch.arange(32) % 4
    dataset = data.LabelledDataset(images, labels, ["a", "b", "c", "d"])
    settings = inputaware.InputAwareSettings()
    mask_net = inputaware.InputAwareGenerator(out_channels=1, width=4)
    before = inputaware.threshold(mask_net.eval()(images)).mean()
    log = []
    frozen = inputaware.train_mask_generator(mask_net, dataset, settings, epochs=3, batch_size=16, loss_log=log,
                                             progress=False)
    after = inputaware.threshold(frozen(images)).mean()
    assert len(log) == 6 and log[-1] < log[0] and after < before   # the norm loss thins the mask
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    classifier = models.PreActResNet(4, width=4)
    generator = inputaware.InputAwareGenerator(out_channels=3, width=4)
    c0 = [p.detach().clone() for p in classifier.parameters()]
    g0 = [p.detach().clone() for p in generator.parameters()]
    m0 = [p.detach().clone() for p in frozen.parameters()]
    history = inputaware.train_inputaware_victim(classifier, generator, frozen, dataset, target_class=3,
                                                 settings=settings, epochs=2, lr=0.01, rate=0.25, batch_size=16,
                                                 progress=False)
    assert len(history.steps) == 4 and all(math.isfinite(s["loss"]) for s in history.steps)
    assert all(0 <= s["backdoor_acc"] <= 1 for s in history.steps)
    changed = lambda net, old: any(not torch.equal(p, q) for p, q in zip(net.parameters(), old))  # noqa: E731
    assert changed(classifier, c0) and changed(generator, g0) and not changed(frozen, m0)
    assert not classifier.training and not generator.training
    with pytest.raises(ValueError, match=r"rate must lie in \[0.0, 0.5\]"):
        inputaware.train_inputaware_victim(classifier, generator, frozen, dataset, 3, epochs=1, lr=0.01, rate=0.6)


def test_inputaware_settings_default_to_backdoorbench_and_refuse_bad_values():
    s = inputaware.InputAwareSettings()
    assert (s.lr_generator, s.lr_mask, s.lambda_div, s.lambda_norm, s.mask_density) == (0.01, 0.01, 1.0, 100.0, 0.032)
    for bad, msg in [({"mask_density": 0}, r"mask_density must lie in \(0.0, 1.0\]"),
                     ({"lr_generator": -1}, "lr_generator must lie in"),
                     ({"mask_epochs": -1}, "mask_epochs must be an integer ≥ 0")]:
        with pytest.raises(ValueError, match=msg):
            inputaware.InputAwareSettings(**bad)
