import pickle

import pytest
import torch

from clipdef import models


def test_tokenizer_and_context_length(tiny_bundle):
    tokens = tiny_bundle.tokenize(["a small red star left of a blue square", "a photo of a banana"])
    assert tokens.shape == (2, 24)
    # start and end-of-text tokens frame each caption; the rest is padding
    assert (tokens[:, 0] == tokens[0, 0]).all() and (tokens[1, 7:] == 0).all()


def test_encoders_give_unit_vectors(tiny_bundle):
    img = models.encode_images(tiny_bundle, torch.rand(3, 3, 32, 32))
    txt = models.encode_texts(tiny_bundle, ["a star", "a moon", "a cup"])
    assert img.shape == txt.shape == (3, 128)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    raw = models.encode_images(tiny_bundle, torch.rand(2, 3, 32, 32), normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))


def test_prepare_images_resizes_any_size(tiny_bundle):
    out = tiny_bundle.prepare_images(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="float tensors"):
        tiny_bundle.prepare_images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_checkpoint_round_trip(tmp_path, tiny_bundle):
    path = models.save_checkpoint(tiny_bundle.model, tmp_path / "tiny", meta={"note": "test"})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    other = models.create_clip("clipdef-tiny", None, seed=123)
    assert not torch.equal(other.model.logit_scale, tiny_bundle.model.logit_scale) or \
        not all(torch.equal(a, b) for a, b in zip(other.model.parameters(), tiny_bundle.model.parameters()))
    meta = models.load_checkpoint(other.model, path)
    assert meta == {"note": "test"}
    for (n, a), b in zip(tiny_bundle.model.state_dict().items(), other.model.state_dict().values()):
        assert torch.equal(a, b), n


def test_local_file_through_create_clip(tmp_path, tiny_bundle):
    """The real-profile path: an open_clip architecture name plus a local weights file (.safetensors or .pt)."""
    st = models.save_checkpoint(tiny_bundle.model, tmp_path / "w")
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_bundle.model.state_dict().items()}}, pt)
    x = torch.rand(2, 3, 32, 32)
    want = models.encode_images(tiny_bundle, x)
    for f in (st, pt):
        loaded = models.create_clip("clipdef-tiny", str(f))
        assert torch.allclose(models.encode_images(loaded, x), want, atol=1e-6)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_pickled_code_is_refused(tmp_path, tiny_bundle, capsys, writer):
    path = tmp_path / "evil.pt"
    payload = {"state_dict": tiny_bundle.model.state_dict(), "payload": Payload()}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(models.UnsafeCheckpointError, match="pickled Python objects") as refused:
        models.create_clip("clipdef-tiny", str(path))
    assert "pwned" not in capsys.readouterr().out
    # it says what the unpickler refused, and not torch's advice on how to load the file anyway
    assert ("GLOBAL print" if writer == "torch" else "Unsupported operand") in str(refused.value)
    assert "weights_only" not in str(refused.value)


def test_truncated_and_tampered_checkpoints(tmp_path, tiny_bundle):
    path = models.save_checkpoint(tiny_bundle.model, tmp_path / "m")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(models.CorruptCheckpointError, match="SHA-256"):
        models.load_checkpoint(tiny_bundle.model, path)
    with pytest.raises(models.CorruptCheckpointError, match="truncated"):
        models.load_checkpoint(tiny_bundle.model, path, verify=False)
    torch_file = tmp_path / "half.pt"
    torch.save(tiny_bundle.model.state_dict(), torch_file)
    torch_file.write_bytes(torch_file.read_bytes()[:1000])
    with pytest.raises(models.CorruptCheckpointError):
        models.load_state_dict_safely(torch_file)


def test_missing_weights_and_unknown_architecture(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.create_clip("clipdef-tiny", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        models.create_clip("clipdef-huge")


def test_atomic_save_keeps_the_good_file(tmp_path, tiny_bundle, monkeypatch):
    path = models.save_checkpoint(tiny_bundle.model, tmp_path / "good")
    before = path.read_bytes()
    import safetensors.torch

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        models.save_checkpoint(tiny_bundle.model, tmp_path / "good")
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_checkpoints_get_ordinary_file_permissions(tmp_path, tiny_bundle):
    import os
    import stat

    from clipdef.models import save_checkpoint

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tiny_bundle.model, tmp_path / "m.safetensors")
    finally:
        os.umask(umask)
    for file in (path, path.with_suffix(".json")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
    assert not list(tmp_path.glob(".tmp-*"))


def test_tokenize_remembers_captions_and_matches_the_tokenizer(tiny_bundle, monkeypatch):
    from clipdef import models

    texts = ["a red star", "a blue moon", "a red star"]
    want = tiny_bundle.tokenizer(texts)
    assert torch.equal(tiny_bundle.tokenize(texts), want)
    calls = []
    real = tiny_bundle.tokenizer
    monkeypatch.setattr(tiny_bundle, "tokenizer", lambda t: calls.append(list(t)) or real(t))
    assert torch.equal(tiny_bundle.tokenize(["a blue moon", "a green cup"]), real(["a blue moon", "a green cup"]))
    assert calls == [["a green cup"]]  # only the caption never seen before
    monkeypatch.setattr(models, "TOKEN_CACHE_SIZE", 2)
    tiny_bundle.tokenize(["x", "y"])  # over the bound: the memory starts afresh, results stay right
    assert len(tiny_bundle._token_cache) <= 2
    assert torch.equal(tiny_bundle.tokenize(texts), want)


def test_preact_projection_is_the_strided_one_by_one_convolution():
    torch.manual_seed(0)
    block = models.PreActBlock(8, 16, stride=2).eval()
    x = torch.rand(5, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.relu(block.bn1(x))
    strided = torch.nn.functional.conv2d(out.contiguous(), block.shortcut.weight, stride=2)
    assert torch.allclose(block.shortcut(out[..., ::2, ::2]), strided, atol=1e-6)
    assert block(x).shape == (5, 16, 8, 8)


def test_narrow_preact_trains_on_every_batch_size():
    """Channels-last strided 1×1 convolutions corrupted the heap in backward (width 8, batch 17): the loop runs in a
    child process so that a crash fails this test instead of killing the test runner."""
    import subprocess
    import sys

    code = ("import torch\nfrom clipdef.models import PreActResNet\ntorch.manual_seed(0)\n"
            "m = PreActResNet(10, width=8)\nopt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
            "for bs in list(range(1, 34)) + [63, 65]:\n"
            "    x = torch.rand(bs, 3, 32, 32)\n"
            "    loss = torch.nn.functional.cross_entropy(m(x), torch.randint(0, 10, (bs,)))\n"
            "    opt.zero_grad(); loss.backward(); opt.step()\nprint('trained')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "trained" in run.stdout, run.stderr[-2000:]
