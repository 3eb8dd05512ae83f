import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from nasty.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def teachers(tmp_path_factory):
    """A normal and a nasty digits teacher made with the recipe's fixed strength (omega 0.05, no budgeted
    search: tests/test_search.py covers that), shared by tests."""
    from nasty.runs import harden, train

    root = tmp_path_factory.mktemp("teachers")
    normal = train(dataset="digits", out=root / "normal", quiet=True, device="cpu")
    nasty = harden(teacher=root / "normal", out=root / "nasty", omega=0.05, quiet=True, device="cpu")
    return {"root": root, "normal": normal, "nasty": nasty}


def pytest_collection_modifyitems(config, items):
    """The cuda tier (``@pytest.mark.cuda``) runs where a GPU is; elsewhere it is skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="cuda tier: no CUDA device here (run bench/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
def bench_script(name: str):
    """A script of bench/ (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod
