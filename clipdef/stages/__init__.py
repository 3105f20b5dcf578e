"""Cached stages the chapters share, and the one call that makes them: ``stages.run(cfg, [stage, ...])``.

* :mod:`.base`: the registry and :func:`run` (prerequisites first, independent stages in parallel processes);
* :mod:`.cache`: where artifacts live, their keys and fingerprints, and how a finished one is written;
* :mod:`.clip`: the clean CLIP, BadCLIP's patch, backdoored CLIPs and their fine-tuning defenses;
* :mod:`.supervised`: labelled data, victims trained on poisoned data (Input-Aware's with its generators), the
  spectral-signature baseline;
* :mod:`.cgd`: CGD's guide, its suspicious model and CGD itself.

A chapter lists each stage it needs once::

    victims = stages.run(cfg, [stages.Backdoor(a, poison_rate) for a in attacks])
"""

from clipdef.stages.base import REGISTRY, Stage, plan, run, workers_for
from clipdef.stages.cgd import CGD, CGDOutcome, Guide, SuspiciousModel, cgd_defense, suspicious_logits
from clipdef.stages.clip import (BadCLIPPatch, Backdoor, Defend, Defended, Pretrain, Victim, backdoored_clip,
                                 defended_clip, evaluate_each_epoch, evaluate_victim, finetune_on, make_trigger,
                                 pretrained_clip, pretraining_history, pretraining_snapshot, tracked_defense)
from clipdef.stages.supervised import (CleanClassifier, InputAwareMask, PoisonClassifier, SpectralRetrain,
                                       SupervisedTrigger, SupervisedVictim, classification_data, clean_classifier,
                                       evaluate_classifier, inputaware_victim, spectral_retrain, supervised_target,
                                       supervised_trigger, supervised_victim, classification_accuracy)

__all__ = [
    "REGISTRY", "Stage", "plan", "run", "workers_for",
    "Pretrain", "BadCLIPPatch", "Backdoor", "Defend", "CleanClassifier", "SupervisedTrigger", "PoisonClassifier",
    "SpectralRetrain", "SuspiciousModel", "CGD", "InputAwareMask",
    "Victim", "Defended", "SupervisedVictim", "CGDOutcome", "Guide",
    "pretrained_clip", "pretraining_snapshot", "pretraining_history", "make_trigger", "backdoored_clip",
    "defended_clip", "tracked_defense", "evaluate_victim", "evaluate_each_epoch", "finetune_on",
    "classification_data", "clean_classifier", "supervised_target", "supervised_trigger", "supervised_victim",
    "evaluate_classifier", "classification_accuracy", "spectral_retrain", "cgd_defense", "suspicious_logits",
    "inputaware_victim",
]
