"""Check that requirements.lock agrees with pyproject.toml (and, with --installed, with this environment).

* every line of the lock is a pin ``name==version``, each name once;
* every requirement of the project's dependencies and of its extras (all of them, or those given with
  ``--extras``) that applies to this platform is pinned in the lock, and the pin satisfies pyproject's
  specifier;
* with ``--installed``: every distribution installed beside this interpreter (but pip, setuptools, wheel,
  which come with the venv, and the project itself) is pinned in the lock at the installed version, so
  nothing was installed from outside it.

Prints one line per disagreement and exits 1, else prints a one-line summary and exits 0.
Usage: python scripts/check_lock.py [--pyproject pyproject.toml] [--lock requirements.lock] [--extras a,b]
[--installed]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip vendors the same library
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
#: Installed by ``python -m venv`` itself, not from the lock.
VENV_BOOTSTRAP = {"pip", "setuptools", "wheel"}


def read_lock(path: Path) -> tuple[dict[str, Version], list[str]]:
    """{canonical name: pinned version}, problems."""
    pins: dict[str, Version] = {}
    problems = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{n}"
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            problems.append(f"{where}: not a requirement ({e}): {raw!r}")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.extras or req.url:
            problems.append(f"{where}: {line!r} is not a pin of the form name==version")
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            problems.append(f"{where}: {req.name} is pinned twice")
            continue
        try:
            pins[name] = Version(specs[0].version)
        except InvalidVersion:
            problems.append(f"{where}: {specs[0].version!r} is not a version")
    return pins, problems


def project_requirements(pyproject: Path, extras: list[str] | None) -> tuple[str, list[tuple[str, Requirement]]]:
    """(project name, [(where it is declared, requirement)]) that apply to this platform."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras or ()) - set(optional))
    if unknown:
        raise SystemExit(f"{pyproject.name} has no extra {', '.join(unknown)} (it has {', '.join(optional)})")
    groups = [("dependencies", "", project.get("dependencies", []))]
    groups += [(f"extra {x}", x, optional[x]) for x in (optional if extras is None else extras)]
    out = []
    for where, extra, lines in groups:
        for line in lines:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                out.append((where, req))
    return project["name"], out


def check(pyproject: Path, lock: Path, extras: list[str] | None = None, installed: bool = False) -> list[str]:
    """Every disagreement, one line each (empty when they agree)."""
    pins, problems = read_lock(lock)
    project, reqs = project_requirements(pyproject, extras)
    for where, req in reqs:
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} ({where} in {pyproject.name}: {req}) is not pinned in {lock.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(
                f"{lock.name} pins {req.name}=={pins[name]}, outside {pyproject.name}'s "
                f"{req.specifier} ({where}): run `make lock` or widen the range"
            )
    if installed:
        skip = VENV_BOOTSTRAP | {canonicalize_name(project)}
        for dist in metadata.distributions():
            name = canonicalize_name(dist.metadata["Name"] or "")
            if not name or name in skip:
                continue
            if name not in pins:
                problems.append(f"{dist.metadata['Name']} {dist.version} is installed but not pinned in {lock.name}")
            elif Version(dist.version) != pins[name]:
                problems.append(f"{dist.metadata['Name']} {dist.version} is installed, {lock.name} pins {pins[name]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    ap.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    ap.add_argument("--extras", help="comma-separated extras to check (default: every extra)")
    ap.add_argument("--installed", action="store_true", help="also check what this interpreter has installed")
    args = ap.parse_args(argv)
    extras = [x.strip() for x in args.extras.split(",") if x.strip()] if args.extras else None
    problems = check(args.pyproject, args.lock, extras, args.installed)
    for p in problems:
        print(f"check_lock: {p}", file=sys.stderr)
    if problems:
        return 1
    what = " and this environment" if args.installed else ""
    print(f"check_lock: {args.lock.name} agrees with {args.pyproject.name}{what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
