"""The stage registry: a chapter asks for the cached artifacts it needs in one call, ``stages.run(cfg, [...])``.

A *stage* is a frozen dataclass whose fields are its parameters, e.g. ``Backdoor("sig", poison_rate=0.03)``. It
says which stages it needs first (:meth:`Stage.needs`), whether its artifact is cached (:meth:`Stage.done`) and
how to make it or load it (:meth:`Stage.build`: trains when it is missing, loads otherwise). :func:`run` adds the
prerequisites, trains what is missing wave by wave — every stage of a wave depends only on earlier waves, so a wave
trains in parallel processes, one per core on a CPU — and returns what was asked for, loaded, in order.
``python -m clipdef.distributed`` runs the same stages under ``torchrun`` (:data:`REGISTRY` names them).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Iterable

REGISTRY: dict[str, type["Stage"]] = {}


def register(cls):
    """Class decorator: a frozen dataclass stage, known to :data:`REGISTRY` by its ``name``."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    REGISTRY[cls.name] = cls
    return cls


class Stage:
    """A request for one cached artifact (subclasses are registered frozen dataclasses)."""

    name: ClassVar[str] = "stage"
    # True when build() trains with clipdef.train.train_contrastive, which runs data-parallel under torchrun (every
    # rank builds it together); False when one process makes it (clipdef.distributed: rank 0 first)
    data_parallel: ClassVar[bool] = False

    def needs(self, cfg) -> list["Stage"]:
        """The stages whose artifacts this one is made from (they are made first)."""
        return []

    def done(self, cfg) -> bool:
        """Is the artifact cached? Called once every stage it needs is done."""
        raise NotImplementedError

    def build(self, cfg, progress: bool = True):
        """The artifact: trained and cached when it is missing, loaded from the cache otherwise."""
        raise NotImplementedError

    def __str__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


def workers_for(cfg) -> int:
    """How many stages :func:`run` trains at once: the profile's ``workers``, or (0) one per CPU core on a CPU —
    two single-threaded trainings of the tiny models get through ~1.5× the work of one two-threaded one."""
    import os

    from clipdef.env import pick_device

    if cfg.workers > 0:
        return cfg.workers
    return (os.cpu_count() or 1) if pick_device(cfg.device) == "cpu" else 1


def plan(cfg, requests: Iterable[Stage]) -> list[list[tuple[Stage, bool]]]:
    """The waves :func:`run` goes through: each a list of (stage, pending), prerequisites in earlier waves.

    A stage is pending when its artifact is missing or when a stage it needs is pending (it cannot be looked up
    before its inputs exist). Its wave is one after the latest wave of a pending prerequisite; done prerequisites
    do not delay it. Each stage appears once."""
    depth: dict[Stage, int] = {}
    pending: dict[Stage, bool] = {}

    def visit(stage: Stage, path: tuple = ()) -> None:
        if stage in depth:
            return
        if stage in path:
            raise ValueError(f"stage {stage} needs itself: {' → '.join(map(str, path + (stage,)))}")
        needs = stage.needs(cfg)
        for need in needs:
            visit(need, path + (stage,))
        waiting = [depth[n] for n in needs if pending[n]]
        pending[stage] = bool(waiting) or not stage.done(cfg)
        depth[stage] = 1 + max(waiting) if waiting else 0

    for stage in _checked(requests):
        visit(stage)
    waves: list[list[tuple[Stage, bool]]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for stage, d in depth.items():
        waves[d].append((stage, pending[stage]))
    return waves


def _checked(requests: Iterable[Stage]) -> list[Stage]:
    requests = list(requests)
    for stage in requests:
        if not isinstance(stage, Stage):
            raise TypeError(f"stages.run takes stages such as stages.Backdoor('sig', 0.03), got {stage!r}; "
                            f"known stages: {', '.join(sorted(REGISTRY))}")
    return requests


def run(cfg, requests: Iterable[Stage], workers: int | None = None, progress: bool = True) -> list:
    """Make every stage in ``requests`` that is not cached yet, with the stages it needs, and return them all,
    loaded, in the order asked for (a stage asked for twice is made once).

    Each wave trains its pending stages ``workers`` at a time in worker processes (default :func:`workers_for`)
    with the profile's ``threads`` each (one when it is 0, "all cores"); a wave that holds a single stage (asked for
    or pending) trains here, in this process."""
    from clipdef.env import progress_bar

    requests = _checked(requests)
    asked = set(requests)
    workers = workers or workers_for(cfg)
    for wave in plan(cfg, dict.fromkeys(requests)):
        todo = [stage for stage, pending in wave if pending]
        if not todo:
            continue
        size = len({stage for stage, pending in wave if pending or stage in asked})
        if min(workers, size) <= 1:
            for stage in progress_bar(todo, enabled=progress, desc="stages"):
                _build(cfg, stage)
        else:
            _in_processes(cfg, todo, min(workers, len(todo), size), progress)
    return [stage.build(cfg, progress=False) for stage in requests]


def _in_processes(cfg, todo: list[Stage], workers: int, progress: bool) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from clipdef.env import progress_bar

    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
    with ProcessPoolExecutor(max(1, workers), mp_context=context, initializer=_worker_init,
                             initargs=(cfg.threads or 1,)) as pool:
        futures = [pool.submit(_build, cfg, stage) for stage in todo]
        for future in progress_bar(futures, enabled=progress, desc=f"stages ({workers} processes)"):
            future.result()  # a failed stage raises here, with its traceback


def _worker_init(threads: int) -> None:
    import torch

    from clipdef.env import end_with_parent

    end_with_parent()  # a killed chapter leaves no stage training on
    torch.set_num_threads(threads)


def _build(cfg, stage: Stage) -> None:
    """Make a pending stage while holding its lock: another process making the same one (a grid run or chapter beside
    this one) finishes first, and this build then loads what it cached."""
    from clipdef.env import config_key
    from clipdef.stages import cache

    with cache.held(config_key({"profile": cfg, "stage": str(stage)})):
        stage.build(cfg, progress=False)
