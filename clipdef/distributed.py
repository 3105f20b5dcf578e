r"""Run a chapter's heavy stage on several GPUs (or CPU processes) with ``torchrun``, into the notebooks' cache.

    torchrun --nproc_per_node 4 -m clipdef.distributed backdoor --profile paper --attack badnet --poison-rate 0.003
    torchrun --nproc_per_node 4 -m clipdef.distributed defend --profile paper --attack badnet --poison-rate 0.003 \
        --defense cleanerclip --samples-per-epoch 1000
    torchrun --nproc_per_node 4 -m clipdef.distributed pretrain --profile tiny

Every process runs the same cached stages as the chapters (:mod:`clipdef.stages`: ``Pretrain``, ``Backdoor``,
``Defend`` and what they need, in the order of :func:`clipdef.stages.plan`); inside them,
:func:`clipdef.train.train_contrastive` trains data-parallel because this module has set up a process group
(``nccl`` on GPUs, one per ``LOCAL_RANK``; ``gloo`` on CPUs). The cache keys hold the profile's fields (the
*global* batch size among them), not the number of processes or the device, so a chapter run afterwards with the
same profile and parameters (``-p KEY VALUE`` here, as for ``python -m clipdef run``) finds the
``...-final.safetensors`` and loads it instead of training.

Only rank 0 writes files: cached world splits and BadCLIP's optimised patch are made by rank 0 first while the
others wait, checkpoints and the final model (:func:`clipdef.stages.cache.save_final`) by rank 0 alone. Launched without
``torchrun`` (no ``WORLD_SIZE``), the stage runs in this one process, exactly as a notebook would run it.

The ``defend`` stage is chapter 4's: the backdoored CLIP (trained first if it is not cached) fine-tuned by FT,
CleanCLIP or CleanerCLIP on the profile's clean defense pairs. The chapter plots clean accuracy and ASR after
every defense epoch, so this stage evaluates after every epoch too (:func:`clipdef.stages.evaluate_each_epoch`)
and the metrics go into the cached training history, from which the chapter reads its curve. Every rank evaluates
(the same weights on the same evaluation set, no collective inside): the ranks stay in step without a broadcast,
each keeps the same history, and the evaluation takes the time it would take on rank 0 alone while the others
waited for it.

Importing this module does nothing; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

STAGES = ("pretrain", "backdoor", "defend")   # the registry's names (clipdef.stages.REGISTRY) it runs
TORCHRUN = "torchrun --nproc_per_node N -m clipdef.distributed"


class LaunchError(RuntimeError):
    """The process was started in a way that cannot form a process group (e.g. WORLD_SIZE but no MASTER_ADDR)."""


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: rank, world size, local rank, the device it trains on, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None   # None: one process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_from_env(env=None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment variables; None when not launched by torchrun
    (no ``WORLD_SIZE``). Raises :class:`LaunchError`, saying how to launch instead, when the variables are
    incomplete or inconsistent."""
    env = os.environ if env is None else env
    how = (f"Launch with `{TORCHRUN} <stage> ...` (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and "
           "MASTER_PORT for every process), or unset WORLD_SIZE to run the stage in this one process.")
    if "WORLD_SIZE" not in env:
        stray = [k for k in ("RANK", "LOCAL_RANK") if k in env]
        if stray:
            raise LaunchError(f"{' and '.join(stray)} set but WORLD_SIZE is not. {how}")
        return None
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = env.get(name)
        if text is None:
            raise LaunchError(f"WORLD_SIZE={env['WORLD_SIZE']} is set but {name} is not. {how}")
        try:
            values[name] = int(text)
        except ValueError:
            raise LaunchError(f"{name}={text!r} is not an integer. {how}") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise LaunchError(f"need WORLD_SIZE ≥ 1, 0 ≤ RANK < WORLD_SIZE and LOCAL_RANK ≥ 0; got WORLD_SIZE={world}, "
                          f"RANK={rank}, LOCAL_RANK={local}. {how}")
    if world > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise LaunchError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not: the processes cannot find each "
                              f"other. {how}")
    return rank, world, local


def setup(device: str = "auto", timeout_minutes: float = 60, env=None) -> Launch:
    """Join the process group torchrun described (``nccl`` with one GPU per ``LOCAL_RANK``, ``gloo`` on CPUs) and
    return this process's :class:`Launch`. Without torchrun (or with one process) no group is created and the
    device is ``pick_device(device)``. ``device`` is the profile's: ``"cpu"`` forces CPU processes."""
    import datetime

    import torch
    import torch.distributed as dist

    from clipdef.env import pick_device

    spec = launch_from_env(env)
    if spec is None or spec[1] == 1:
        return Launch(device=pick_device(device))
    rank, world, local = spec
    wants_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_gpu:
        visible = torch.cuda.device_count()
        if visible == 0:
            raise LaunchError(f"device {device!r} asks for GPUs but none is visible; pass -p device cpu to train "
                              "with CPU processes (gloo)")
        if local >= visible:
            raise LaunchError(f"LOCAL_RANK={local} but only {visible} GPU(s) are visible on this machine: "
                              "--nproc_per_node must not exceed the number of GPUs")
        torch.cuda.set_device(local)
        launch = Launch(rank, world, local, f"cuda:{local}", "nccl")
    else:
        launch = Launch(rank, world, local, "cpu", "gloo")
    if not dist.is_initialized():
        extra = {"device_id": torch.device(launch.device)} if launch.backend == "nccl" else {}
        dist.init_process_group(launch.backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **extra)
    return launch


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextmanager
def rank0_first():
    """Rank 0 runs the block first (filling a cache), the others wait for it and then run it (reading the cache)."""
    from clipdef.losses import rank_and_world_size

    rank, _ = rank_and_world_size()
    if rank != 0:
        barrier()
    yield
    if rank == 0:
        barrier()


# ---------------------------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------------------------

def stage_of(args, loss: dict | None = None):
    """The registry's stage (:mod:`clipdef.stages`) that a command line names: ``pretrain``, ``backdoor`` or
    ``defend`` with its attack, poison rate, defense and loss settings."""
    from clipdef import stages

    if args.stage == "pretrain":
        return stages.Pretrain()
    if args.stage == "backdoor":
        return stages.Backdoor(args.attack, args.poison_rate)
    return stages.Defend.of(args.attack, args.defense, args.poison_rate, **(loss or {}))


def _build_here(stage, cfg, progress: bool):
    """Data-parallel stages train on every rank; the others (BadCLIP's patch, weights from the model hub) are
    made by rank 0 first while the others wait, then loaded by them."""
    if stage.data_parallel:
        return stage.build(cfg, progress=progress)
    with rank0_first():
        return stage.build(cfg, progress=progress)


def run_stage(cfg, stage, progress: bool = True):
    """``stage`` and what it needs, made data-parallel into the chapters' cache: every rank goes through the same
    waves of :func:`clipdef.stages.plan` in the same order. Returns (the stage's artifact, trained by this call?)."""
    from clipdef import data, stages

    with rank0_first():  # the world's splits and the hub's weights: made or fetched once, by rank 0
        if cfg.data == "world":
            data.world_pairs(cfg, "pretrain")
            data.defense_pairs(cfg, progress=progress)
            data.eval_set(cfg, progress=progress)
        elif cfg.finetune_shards:
            data.defense_pairs(cfg, progress=progress)  # indexes the shards once (cached on disk) for every rank
        if cfg.pretrained is not None:
            stages.pretrained_clip(cfg, progress=progress)
    waves = stages.plan(cfg, [stage])
    barrier()  # every rank has looked at the cache before any rank writes to it
    for wave in waves:
        for pending_stage in (s for s, pending in wave if pending):
            _build_here(pending_stage, cfg, progress)
    trained = any(pending for wave in waves for s, pending in wave if s == stage)
    with rank0_first():
        return stage.build(cfg, progress=False), trained


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from clipdef import attacks
    from clipdef.defenses import finetune

    parser = argparse.ArgumentParser(
        prog=TORCHRUN, description="Run a chapter's heavy stage data-parallel (one process per GPU, or CPU "
                                   "processes) into the cache the notebooks read.",
        epilog="Give a stage what the chapter runs with (profile, seed, -p fields, poison rate, defense "
               "parameters): they make the cache key, the number of processes does not. The defend stage "
               "evaluates clean accuracy and ASR after every epoch on every rank, for chapter 4's curve. Without "
               "torchrun the stage runs in one process.")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default=None, help="tiny | smoke | colab | paper (default: $CLIPDEF_PROFILE "
                                                        "or tiny)")
    common.add_argument("--seed", type=int, default=None)
    common.add_argument("-p", dest="params", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a profile parameter, as the chapter was (or will be) run with, e.g. -p batch_size 256")
    common.add_argument("--timeout-minutes", type=float, default=60,
                        help="how long a process waits for the others (e.g. while rank 0 fetches weights)")
    stages.add_parser("pretrain", parents=[common], help="the profile's clean CLIP (the tiny CLIP is pre-trained)")
    backdoor = stages.add_parser("backdoor", parents=[common], help="a backdoored CLIP (chapters 2–5)")
    defend = stages.add_parser("defend", parents=[common],
                               help="a backdoored CLIP defended by FT, CleanCLIP or CleanerCLIP (chapter 4)")
    for stage in (backdoor, defend):
        stage.add_argument("--attack", required=True, choices=sorted(attacks.CLIP))
        stage.add_argument("--poison-rate", type=float, default=0.03,
                           help="share of fine-tuning pairs poisoned; the chapter's poison_rate (default 0.03)")
    defend.add_argument("--defense", required=True, choices=finetune.METHODS)
    cleaner = defend.add_argument_group("CleanerCLIP's loss (chapter 4's parameters of the same names; default: "
                                        "the chapter's defaults)")
    cleaner.add_argument("--samples-per-epoch", type=int, default=None, help="pairs given sub-captions per epoch "
                                                                             "(default 1000)")
    cleaner.add_argument("--tau-pos", type=float, default=None, help="temperature of matching pairs (default 0.3)")
    cleaner.add_argument("--tau-neg", type=float, default=None, help="temperature of the others (default 0.3)")
    cleaner.add_argument("--subcaption-weight", type=float, default=None, help="λ3 (default 1.0)")
    return parser


LOSS_OPTIONS = ("samples_per_epoch", "tau_pos", "tau_neg", "subcaption_weight")


def loss_params(args) -> dict:
    """The CleanerCLIP loss parameters given on the command line (checked; refused for the other defenses)."""
    from clipdef.defenses import finetune

    given = {name: getattr(args, name) for name in LOSS_OPTIONS if getattr(args, name, None) is not None}
    if given and args.defense != "cleanerclip":
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags} set the CleanerCLIP loss; --defense {args.defense} takes no loss parameters")
    finetune.make_loss(args.defense, [], **given)  # the loss's own checks (samples ≥ 1, temperatures > 0)
    return given


def resolve_profile(args):
    """The profile the stage runs with, resolved as the chapters resolve theirs."""
    from clipdef import profiles
    from clipdef.cli import parse_value

    overrides = {key: parse_value(value) for key, value in args.params}
    if "profile" in overrides:
        raise ValueError("give the profile with --profile, not -p profile")
    return profiles.resolve(args.profile, seed=args.seed, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.stage in ("backdoor", "defend") and not 0 < args.poison_rate < 1:
            raise ValueError(f"--poison-rate must be in (0, 1), got {args.poison_rate}")
        params = loss_params(args) if args.stage == "defend" else {}
        cfg = resolve_profile(args)
        launch_from_env()  # a wrong launch fails here, before anything is loaded or any process waits
        cfg.check()
    except (LaunchError, ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    try:
        launch = setup(cfg.device, args.timeout_minutes)
    except RuntimeError as err:  # LaunchError, no GPU for a cuda profile, a rendezvous that failed
        raise SystemExit(f"error: {err}") from None
    try:
        code = _run(args, cfg.replace(device=launch.device), launch, params)
        barrier()  # no rank tears the group down while another still has collective work in flight
        return code
    finally:
        teardown()


def _run(args, cfg, launch: Launch, params: dict | None = None) -> int:
    from clipdef.env import seed_all
    from clipdef.train import set_threads

    seed_all(cfg.seed)
    set_threads(cfg.threads)  # 0: $OMP_NUM_THREADS, which torchrun sets to 1 per process when it starts several
    progress = launch.is_main
    say = (lambda *a: print(*a, flush=True)) if launch.is_main else (lambda *a: None)
    say(f"clipdef.distributed {args.stage}: profile {cfg.name}, {launch.world_size} process(es), "
        f"{launch.backend or 'no process group'}, rank 0 on {launch.device}, global batch {cfg.batch_size}")
    t0 = time.perf_counter()
    stage = stage_of(args, params)
    result, trained = run_stage(cfg, stage, progress)
    if args.stage == "pretrain" and cfg.pretrained is not None:
        say(f"profile {cfg.name!r} starts from pretrained weights ({cfg.model}, {cfg.pretrained}): "
            "nothing to pre-train; the weights are fetched.")
    else:
        say(f"trained and cached: {stage}" if trained else f"already cached: {stage}; nothing trained")
    for row in getattr(result, "curve", []):
        say(f"  epoch {row['epoch']}: CA@1 {row.get('ca_top1', float('nan')):.3f}, "
            f"ASR@1 {row.get('asr_top1', float('nan')):.3f}")
    say(f"done in {time.perf_counter() - t0:.1f} s; a chapter run with the same profile and parameters loads it "
        "from the cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
