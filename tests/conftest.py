"""Shared fixtures. Every test uses a private artifact cache, so tests never see (or spoil) the book's cache."""

import pytest
import torch


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "clipdef-cache"
    monkeypatch.setenv("CLIPDEF_CACHE", str(cache))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("CLIPDEF_PROFILE", raising=False)
    return cache


@pytest.fixture(scope="session")
def smoke_cfg():
    from clipdef import profiles

    return profiles.resolve("smoke")


@pytest.fixture(scope="session")
def tiny_bundle():
    """A freshly initialised tiny CLIP (untrained), the same architecture the book trains."""
    from clipdef.models import create_clip

    torch.set_num_threads(1)
    return create_clip("clipdef-tiny", None, seed=0)

