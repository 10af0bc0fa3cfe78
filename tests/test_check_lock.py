"""scripts/check_lock.py: the lock must pin every declared requirement inside pyproject's ranges."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_lock.py"
_spec = importlib.util.spec_from_file_location("check_lock", SCRIPT)
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)

PYPROJECT = """
[project]
name = "demo"
version = "0"
dependencies = ["torch>=2.2,<3", "Numpy>=2,<3", "colorama>=0.4; sys_platform == 'win32'"]
[project.optional-dependencies]
test = ["pytest>=8"]
bench = ["lm-eval>=0.4.5"]
"""
LOCK = """# header
numpy==2.4.6
torch==2.13.0+cpu  # the CPU build
pytest==9.2.0
lm_eval==0.4.13
six==1.16.0
"""


def _pair(tmp_path: Path, pyproject: str = PYPROJECT, lock: str = LOCK) -> tuple[Path, Path]:
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "requirements.lock").write_text(lock)
    return tmp_path / "pyproject.toml", tmp_path / "requirements.lock"


def test_agreeing_pair_passes(tmp_path):
    # names compare canonically (Numpy/numpy, lm-eval/lm_eval), a local version label satisfies a range, and a
    # requirement whose marker excludes this platform needs no pin
    assert check_lock.check(*_pair(tmp_path)) == []
    assert (
        check_lock.main(
            ["--pyproject", str(tmp_path / "pyproject.toml"), "--lock", str(tmp_path / "requirements.lock")]
        )
        == 0
    )


@pytest.mark.parametrize(
    "lock,pyproject,message",
    [
        (LOCK.replace("numpy==2.4.6", "numpy==1.26.4"), PYPROJECT, "Numpy==1.26.4, outside pyproject.toml's <3,>=2"),
        (
            LOCK.replace("pytest==9.2.0\n", ""),
            PYPROJECT,
            "pytest (extra test in pyproject.toml: pytest>=8) is not pinned",
        ),
        (LOCK, PYPROJECT.replace('"pytest>=8"', '"pytest>=8", "hypothesis>=6"'), "hypothesis (extra test"),
        (LOCK, PYPROJECT.replace("torch>=2.2,<3", "torch>=2.14"), "torch==2.13.0+cpu, outside"),
        (LOCK.replace("six==1.16.0", "six>=1.16"), PYPROJECT, "'six>=1.16' is not a pin"),
        (LOCK + "NumPy==2.4.6\n", PYPROJECT, "NumPy is pinned twice"),
    ],
    ids=["pin-outside-range", "extra-unpinned", "new-requirement", "range-raised", "not-a-pin", "pinned-twice"],
)
def test_disagreement_fails(tmp_path, lock, pyproject, message):
    pyproject_path, lock_path = _pair(tmp_path, pyproject, lock)
    problems = check_lock.check(pyproject_path, lock_path)
    assert any(message in p for p in problems), problems
    assert check_lock.main(["--pyproject", str(pyproject_path), "--lock", str(lock_path)]) == 1


def test_only_the_extras_asked_for(tmp_path):
    pyproject_path, lock_path = _pair(tmp_path, lock=LOCK.replace("lm_eval==0.4.13\n", ""))
    assert check_lock.check(pyproject_path, lock_path, extras=["test"]) == []
    assert any("lm-eval" in p for p in check_lock.check(pyproject_path, lock_path))


def test_installed_packages_must_match_the_lock(tmp_path, monkeypatch):
    class Dist:
        def __init__(self, name, version):
            self.metadata, self.version = {"Name": name}, version

    dists = [
        Dist("numpy", "2.4.6"),
        Dist("torch", "2.13.0+cpu"),
        Dist("pip", "23.2.1"),
        Dist("demo", "0"),
        Dist("requests", "2.34.2"),
        Dist("pytest", "9.1.0"),
    ]
    monkeypatch.setattr(check_lock.metadata, "distributions", lambda: dists)
    problems = check_lock.check(*_pair(tmp_path), installed=True)
    assert sorted(problems) == [
        "pytest 9.1.0 is installed, requirements.lock pins 9.2.0",
        "requests 2.34.2 is installed but not pinned in requirements.lock",
    ]


def test_the_repository_lock_agrees_with_pyproject():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
