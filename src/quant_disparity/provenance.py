"""Where a result came from: library versions, git revision, machine. Stored with every result."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import __version__

LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate", "numpy", "scipy", "pandas")


def lib_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# Paths whose changes say nothing about the code that computed a result: the benchmark results themselves (a
# benchmark run that has written some of its results is still measuring the committed code).
NOT_CODE = ("benchmarks/results",)


@functools.cache
def git_revision() -> str | None:
    """Commit of the quant-disparity source tree (with ``+dirty`` when modified), if it is a git checkout."""
    return _revision_of(Path(__file__).resolve().parent)


def _revision_of(root: Path) -> str | None:
    """HEAD of the checkout holding ``root``, with ``+dirty`` when a tracked file outside ``NOT_CODE`` is
    modified."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                *(f":(top,exclude){p}" for p in NOT_CODE),
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import torch

    return {
        "quant_disparity": __version__,
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "libraries": {name: lib_version(name) for name in LIBRARIES},
    }


def stored_provenance(spec, store) -> dict:
    """Where a run's stored trials came from: the store, the code version that computed them, the digests of
    the models and of the corpus (shortened for a report)."""
    keys = sorted({store.spec_trials(spec.name)[t.name] for t in spec.trials})
    first = store.trial(keys[0]) if keys else {}
    return {
        "store": str(store.path),
        "trials stored": len(keys),
        "code version": first.get("code_version"),
        "model digests": ", ".join(sorted({store.trial(k)["model_digest"][:16] for k in keys})),
        "corpus digest": first.get("corpus_digest", "")[:16],
    }
