"""Data-parallel training for real: two CPU processes (gloo) spawned per test, small data, seconds.

What is checked: the gathered CLIP loss is the loss of the concatenated batch, with the gradients DDP needs; a DDP
run of a model without BatchNorm follows the single-process run step by step (same global batches, same
gradients), also across a kill and a resume; a DDP run of the tiny CLIP (BatchNorm: per-rank statistics) leaves
both ranks with the same weights and one checkpoint; a NaN on one rank stops both; the torchrun entry point fills
the cache the chapters read (backdoored and defended CLIPs, the defense's per-epoch curve included), and rejects a
wrong launch with a clear message.
"""

import datetime
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipdef import data, losses, models, train

WORLD = 2
REPO = Path(__file__).resolve().parent.parent


def spawn(worker, *args):
    """Run ``worker(rank, *args)`` in WORLD fresh processes joined by a gloo process group.

    The ranks meet through a file store, not a TCP store: rank 0 then hosts no store server thread, whose
    teardown raced the other rank's on a loaded CI machine ("terminate called without an active exception",
    SIGABRT), and no port can be taken by a parallel test between choosing it and binding it.
    """
    with tempfile.TemporaryDirectory() as rendezvous:
        mp.spawn(_join_and_run, args=(Path(rendezvous) / "store", worker, args), nprocs=WORLD, join=True)


def _join_and_run(rank, store, worker, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        worker(rank, *args)
        dist.barrier()  # no rank tears the group down while another still has collective work in flight
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# (a) the gathered CLIP loss
# ---------------------------------------------------------------------------------------------------------------

def global_batch(n=8, d=16):
    g = torch.Generator().manual_seed(0)
    unit = lambda: F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return unit(), unit()


def _small_checks_worker(rank, out):
    """The gathered loss and its gradients, and the refusal of a global batch smaller than the world."""
    pairs = data.PairDataset(torch.rand(8, 3, 8, 8), ["a"] * 8)
    try:
        train.train_contrastive(linear_bundle(), pairs, epochs=1, lr=1e-3, batch_size=1, progress=False)
    except ValueError as err:
        (out / f"batch-error{rank}.txt").write_text(str(err))
    image, text = global_batch()
    rows = slice(rank * len(image) // WORLD, (rank + 1) * len(image) // WORLD)
    local_image, local_text = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    everyone = losses.gather_with_grad(local_image, local_text)
    loss = losses.clip_loss(*everyone, scale)
    loss.backward()
    torch.save({"loss": loss.detach(), "image": local_image.grad, "text": local_text.grad, "scale": scale.grad,
                "rows": (rows.start, rows.stop)}, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def small_checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("small-checks")
    spawn(_small_checks_worker, out)
    return out


def test_gathered_clip_loss_is_the_loss_of_the_concatenated_batch(small_checks):
    tmp_path = small_checks
    image, text = global_batch()
    image.requires_grad_(), text.requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    full = losses.clip_loss(image, text, scale)
    full.backward()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(*got["rows"])
        assert torch.allclose(got["loss"], full.detach(), rtol=1e-12)  # every rank: the global loss
        # The gather's backward sums what every rank's (identical) loss puts on these rows: W × ∂L/∂rows.
        # DDP averages parameter gradients over the W ranks, which makes it exactly ∂L/∂rows.
        assert torch.allclose(got["image"] / WORLD, image.grad[rows], atol=1e-12)
        assert torch.allclose(got["text"] / WORLD, text.grad[rows], atol=1e-12)
        assert torch.allclose(got["scale"], scale.grad, atol=1e-12)  # local parameter: ∂L/∂s on every rank


def test_gather_is_the_identity_in_one_process():
    x, y = torch.randn(3, 4), torch.randn(3, 2, 2)
    gx, gy = losses.gather_with_grad(x, y)
    assert gx is x and gy is y
    assert losses.rank_and_world_size() == (0, 1)


# ---------------------------------------------------------------------------------------------------------------
# (b) DDP training through train_contrastive
# ---------------------------------------------------------------------------------------------------------------

class LinearClip(torch.nn.Module):
    """A CLIP without BatchNorm (linear image tower, bag-of-characters text tower): DDP must match one process."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(3 * 8 * 8, 16)
        self.text = torch.nn.EmbeddingBag(64, 16)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x, normalize=True):
        return F.normalize(self.image(x.flatten(1)), dim=-1)

    def encode_text(self, tokens, normalize=True):
        return F.normalize(self.text(tokens), dim=-1)


def char_tokens(texts):
    return torch.tensor([[ord(c) % 64 for c in t.ljust(12)[:12]] for t in texts])


def linear_bundle():
    return models.ClipBundle(LinearClip(), char_tokens, "linear", None, 8, (0.5,) * 3, (0.5,) * 3)


def linear_pairs():
    g = torch.Generator().manual_seed(1)
    words = ["red", "green", "blue", "cube", "ball", "cone", "on", "under"]
    captions = [" ".join(words[j] for j in torch.randint(0, 8, (3,), generator=g).tolist()) for _ in range(40)]
    return data.PairDataset(torch.rand(40, 3, 8, 8, generator=g), captions)


LINEAR_RUN = dict(epochs=3, lr=1e-2, batch_size=8, warmup_steps=2, seed=3, progress=False)
STEPS_PER_EPOCH = 40 // 8


def _killed_and_resumed_worker(rank, out):
    calls = {"n": 0}

    def killed_in_epoch_3(bundle, images, captions, idx):
        calls["n"] += 1
        if calls["n"] > 2 * STEPS_PER_EPOCH + 1:
            raise KeyboardInterrupt("killed")
        return train.default_clip_loss(bundle, images, captions, idx)

    with pytest.raises(KeyboardInterrupt):
        train.train_contrastive(linear_bundle(), linear_pairs(), loss_fn=killed_in_epoch_3,
                                checkpoint=out / "run", **LINEAR_RUN)
    resumed = linear_bundle()
    history = train.train_contrastive(resumed, linear_pairs(), checkpoint=out / "run", **LINEAR_RUN)
    torch.save({"state": resumed.model.state_dict(), "loss": [s["loss"] for s in history.steps],
                "epochs": [s["epoch"] for s in history.steps]}, out / f"rank{rank}.pt")


def test_ddp_follows_the_single_process_run_across_a_kill_and_resume(tmp_path):
    spawn(_killed_and_resumed_worker, tmp_path)
    reference = linear_bundle()
    history = train.train_contrastive(reference, linear_pairs(), **LINEAR_RUN)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["epochs"] == [e for e in (1, 2, 3) for _ in range(STEPS_PER_EPOCH)]
        # the logged loss is the global batch's: per-rank shares of the single-process batches
        assert got["loss"] == pytest.approx([s["loss"] for s in history.steps], abs=1e-5)
        for name, value in reference.model.state_dict().items():
            assert torch.allclose(got["state"][name], value, atol=1e-5), name
    assert sorted(p.name for p in tmp_path.glob("run*")) == ["run.history.json", "run.json", "run.safetensors",
                                                            "run.state.pt"]


def _tiny_clip_worker(rank, pairs, out):
    bundle = models.create_clip("clipdef-tiny", None, seed=rank)  # different inits: DDP starts from rank 0's
    history = train.train_contrastive(bundle, pairs, epochs=2, lr=1e-3, batch_size=16, warmup_steps=2, seed=0,
                                      progress=False, checkpoint=out / "tiny")
    result = {"state": bundle.model.state_dict(), "loss": [s["loss"] for s in history.steps]}

    calls = {"n": 0}

    def nan_on_rank_1(bundle, images, captions, idx):
        calls["n"] += 1
        loss, logs = train.default_clip_loss(bundle, images, captions, idx)
        return (loss * float("nan") if rank == 1 and calls["n"] == 2 else loss), logs

    try:
        train.train_contrastive(models.create_clip("clipdef-tiny", None, seed=0), pairs, epochs=1, lr=1e-3,
                                batch_size=16, loss_fn=nan_on_rank_1, progress=False)
    except train.TrainingDiverged as err:
        result["diverged"] = str(err)

    from clipdef.defenses import finetune

    defended, history = finetune.defend(bundle, pairs, "cleanerclip", epochs=1, lr=1e-3, batch_size=16,
                                        warmup_steps=2, progress=False, samples_per_epoch=32)
    result["cleanerclip"] = {"state": defended.model.state_dict(), "steps": history.steps}
    torch.save(result, out / f"rank{rank}.pt")


def test_ddp_tiny_clip_same_weights_on_both_ranks_one_checkpoint_nan_stops_all_and_cleanerclip(tmp_path):
    world = data.load_world("pretrain", 32, seed=0, progress=False)
    pairs = data.PairDataset(data.to_float_images(world.images), world.captions)
    spawn(_tiny_clip_worker, pairs, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, value in ranks[0]["state"].items():  # parameters and BatchNorm buffers alike
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert len(ranks[0]["loss"]) == 2 * (32 // 16) and all(math.isfinite(v) for v in ranks[0]["loss"])
    assert ranks[0]["loss"] == ranks[1]["loss"]  # both log the global batch's loss
    assert sorted(p.name for p in tmp_path.glob("tiny*")) == ["tiny.history.json", "tiny.json",
                                                             "tiny.safetensors", "tiny.state.pt"]
    loaded = models.create_clip("clipdef-tiny", None, seed=5)
    assert models.load_checkpoint(loaded.model, tmp_path / "tiny.safetensors")["epoch"] == 2
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, ranks[0]["state"][name]), name
    for r in ranks:  # rank 0's loss was finite, yet it stopped too, naming the rank that diverged
        assert "loss became nan on rank(s) 1 at epoch 1, step 1" in r["diverged"]
    # CleanerCLIP under DDP: CleanCLIP's terms over the global batch (the same on both ranks), sub-caption terms
    # per rank; the defended weights agree
    first, second = (r["cleanerclip"] for r in ranks)
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name
    assert [s["clip"] for s in first["steps"]] == [s["clip"] for s in second["steps"]]
    assert all(math.isfinite(s["loss"]) for r in (first, second) for s in r["steps"])
    assert any("subcaption" in s for s in first["steps"] + second["steps"])


def test_a_global_batch_smaller_than_the_world_is_refused(small_checks):
    for rank in range(WORLD):
        assert "smaller than the 2 processes" in (small_checks / f"batch-error{rank}.txt").read_text()


# ---------------------------------------------------------------------------------------------------------------
# (c) the torchrun entry point
# ---------------------------------------------------------------------------------------------------------------

SMALL = ["-p", "n_pretrain", "128", "-p", "n_finetune", "64", "-p", "batch_size", "32"]


def test_torchrun_backdoor_fills_the_cache_the_chapters_read():
    from clipdef import profiles, stages

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "clipdef.distributed", "backdoor", "--profile", "smoke", "--attack", "badnet",
               "--poison-rate", "0.05", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 process(es), gloo" in run.stdout and "trained and cached:" in run.stdout
    # a chapter resolving the same profile and parameters loads the models instead of training them
    cfg = profiles.resolve("smoke", n_pretrain=128, n_finetune=64, batch_size=32)
    victim = stages.backdoored_clip(cfg, "badnet", 0.05, progress=False)
    assert victim.history is None
    # the DDP pre-training wrote its history: 128 pairs in global batches of 32, every epoch
    assert len(stages.pretraining_history(cfg)) == cfg.pretrain_epochs * 128 // 32


def test_torchrun_defend_fills_the_cache_chapter_4_reads_curve_included(monkeypatch):
    from clipdef import profiles, stages

    small = [*SMALL, "-p", "n_defense", "64", "-p", "n_eval", "60", "-p", "defense_epochs", "2"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "clipdef.distributed", "defend", "--profile", "smoke", "--attack", "badnet",
               "--poison-rate", "0.05", "--defense", "cleanerclip", "--samples-per-epoch", "32", "--tau-neg", "0.5",
               *small]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 process(es), gloo" in run.stdout and "trained and cached:" in run.stdout
    assert "epoch 1: CA@1" in run.stdout and "epoch 2: CA@1" in run.stdout
    # chapter 4, run with the same profile and parameters, loads the defended model and its curve: nothing trained
    cfg = profiles.resolve("smoke", n_pretrain=128, n_finetune=64, batch_size=32, n_defense=64, n_eval=60,
                           defense_epochs=2)
    victim = stages.backdoored_clip(cfg, "badnet", 0.05, progress=False)
    assert victim.history is None

    def no_training(*args, **kwargs):
        raise AssertionError("the chapter trained a defense that torchrun had cached")

    monkeypatch.setattr(train, "train_contrastive", no_training)
    defended = stages.defended_clip(cfg, "badnet", "cleanerclip", 0.05, victim=victim, progress=False,
                                         on_epoch_end=stages.evaluate_each_epoch(cfg, victim.trigger),
                                         samples_per_epoch=32, tau_pos=0.3, tau_neg=0.5, subcaption_weight=1.0)
    assert not defended.trained and [row["epoch"] for row in defended.curve] == [1, 2]
    assert len(defended.history.steps) == 2 * (64 // min(cfg.defense_batch_size, 64))   # two epochs
    # the recorded last epoch is the cached model's own CA and ASR (rank 0's evaluation, as the chapter's would be)
    now = stages.evaluate_victim(cfg, defended.bundle, victim.trigger)
    assert {k: v for k, v in defended.curve[-1].items() if k != "epoch"} == pytest.approx(now, abs=1e-6)
    for row in defended.curve:
        assert f"epoch {row['epoch']}: CA@1 {row['ca_top1']:.3f}, ASR@1 {row['asr_top1']:.3f}" in run.stdout
    # a second torchrun finds it cached
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already cached" in again.stdout and "trained and cached" not in again.stdout


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR and MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK < WORLD"),
    ({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
    ({"RANK": "1"}, "RANK set but WORLD_SIZE is not"),
])
def test_a_wrong_launch_fails_at_once_saying_how_to_launch(monkeypatch, env, message):
    from clipdef import distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        distributed.main(["backdoor", "--profile", "smoke", "--attack", "badnet"])
    text = str(exit_.value.code)
    assert message in text and "torchrun --nproc_per_node N -m clipdef.distributed" in text
    assert not dist.is_initialized()


def test_bad_arguments_are_refused_before_launching(monkeypatch, capsys):
    from clipdef import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="unknown profile 'huge'"):
        distributed.main(["pretrain", "--profile", "huge"])
    with pytest.raises(SystemExit, match="unknown profile parameter"):
        distributed.main(["pretrain", "-p", "epochs", "3"])
    with pytest.raises(SystemExit, match=r"poison-rate must be in \(0, 1\)"):
        distributed.main(["backdoor", "--attack", "badnet", "--poison-rate", "3"])
    with pytest.raises(SystemExit):  # argparse: the stages and attacks are listed
        distributed.main(["evaluate", "--profile", "paper"])
    assert "invalid choice: 'evaluate'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distributed.main(["defend", "--profile", "paper", "--attack", "badnet"])
    assert "required: --defense" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--tau-pos set the CleanerCLIP loss; --defense ft takes no loss"):
        distributed.main(["defend", "--attack", "badnet", "--defense", "ft", "--tau-pos", "0.5"])
    with pytest.raises(SystemExit, match="samples_per_epoch and negatives must be ≥ 1"):
        distributed.main(["defend", "--attack", "badnet", "--defense", "cleanerclip", "--samples-per-epoch", "0"])
    with pytest.raises(SystemExit, match=r"poison-rate must be in \(0, 1\)"):
        distributed.main(["defend", "--attack", "badnet", "--defense", "ft", "--poison-rate", "0"])


def test_importing_clipdef_distributed_has_no_side_effects():
    code = ("import sys, clipdef, clipdef.distributed, torch.distributed as d; "
            "assert not d.is_initialized(); assert 'open_clip' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
