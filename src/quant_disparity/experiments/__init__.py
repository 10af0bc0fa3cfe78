"""Declarative experiments: specs, a results store with resume, local and Ray executors, claims.

A run directory (``--out``, default ``runs/<spec name>``) holds ``store.sqlite`` (every trial ever computed
for the spec, reused across invocations), ``spec.toml`` (the spec of the latest invocation) and one
timestamped directory per invocation with that spec, ``run.log``, ``summary.md`` and ``verdicts.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from .._io import LOCK_NAME, OutputLock, atomic_write_text, lock_dir
from ..errors import UserError
from .claims import Evaluator, evaluate_claims
from .results import analyse
from .run import load_results, run_spec
from .spec import ExperimentSpec, load_spec, parse_spec
from .store import Store
from .tasks import check_spec_tasks

STORE_NAME = "store.sqlite"


def default_out(spec: ExperimentSpec) -> Path:
    return Path("runs") / spec.name


def run_inputs(run_dir: Path) -> list[Path]:
    """The files of a run directory its results are read from (nothing may be written over them)."""
    store = Path(run_dir) / STORE_NAME
    return [
        Path(run_dir) / "spec.toml",
        store,
        store.with_name(store.name + "-wal"),
        store.with_name(store.name + "-shm"),
    ]


def open_run_dir(out: Path, spec: ExperimentSpec) -> tuple[Store, Path, OutputLock]:
    """Lock a run directory (created if needed), open its store, record the spec and make this invocation's
    timestamped subdirectory. The caller releases the lock when the invocation ends."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory", "choose a directory path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} is not writable ({e.strerror})", "choose a directory you can write to") from None
    lock = lock_dir(out)
    try:
        store, inv = _open_locked(out, spec)
    except BaseException:
        lock.release()
        raise
    return store, inv, lock


def _open_locked(out: Path, spec: ExperimentSpec) -> tuple[Store, Path]:
    other = out / "spec.toml"
    if other.exists():
        try:
            previous = parse_spec(other.read_text(encoding="utf-8"), str(other)).name
        except UserError:
            previous = None
        if previous not in (None, spec.name):
            raise UserError(f"--out {out} holds the run of another spec ({previous!r})", "choose another --out")
    store = Store(out / STORE_NAME)
    try:
        # before any work, so that a run killed at any point can be reported and is guarded as this spec's
        atomic_write_text(other, spec.source)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        inv = out / stamp
        n = 1
        while inv.exists():
            n += 1
            inv = out / f"{stamp}-{n}"
        inv.mkdir()
    except BaseException:
        store.close()
        raise
    return store, inv


def run_experiment(
    spec_path: str | Path,
    out: str | Path | None = None,
    *,
    executor: str = "local",
    ray_address: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    log: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run (or resume) a spec; returns the invocation summary with verdicts."""
    if executor not in ("local", "ray"):
        raise UserError(f"unknown executor {executor!r}", "use local or ray")
    spec = load_spec(spec_path)
    check_spec_tasks(spec)  # before anything is written: a task without items for a language, lm-eval missing ...
    out = Path(out) if out else default_out(spec)
    created = not out.exists()
    store, inv, lock = open_run_dir(out, spec)
    try:
        atomic_write_text(inv / "spec.toml", spec.source)
    except BaseException:
        store.close()
        lock.release()
        raise
    logger = logging.getLogger(f"quant_disparity.run.{inv}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(inv / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)

    def both(msg: str) -> None:
        logger.info(msg)
        log(msg)

    try:
        both(f"spec {spec.name} ({len(spec.trials)} trials, {len(spec.claims)} claims) -> {out}")
        summary = run_spec(
            spec,
            store,
            executor=executor,
            ray_address=ray_address,
            device=device,
            dtype=dtype,
            log=both,
            progress=progress,
        )
        both(
            f"{summary['computed']} trials computed, {summary['already_stored']} already stored, "
            f"{summary.get('seconds', 0)} s"
        )
        result = analyse(spec, store)
        result["run"] = {**summary, "executor": executor, "store": str(out / STORE_NAME), "invocation": str(inv)}
        from ..report.experiment import summary_markdown

        md = summary_markdown(result)
        atomic_write_text(inv / "summary.md", md)
        atomic_write_text(inv / "verdicts.json", json.dumps(result["verdicts"], indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(inv / "results.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        for v in result["verdicts"]:
            both(f"claim {v['id']} {v['instance'] or ''}: {v['verdict']}")
        return result
    except KeyboardInterrupt:
        logger.info("interrupted; the trials committed so far are kept in the store: rerun the same command to finish")
        raise
    except BaseException as e:
        logger.info(f"failed: {e}")
        # A run directory this call created and that holds no trial is no result: remove it (while locked).
        if created and store.db.execute("SELECT count(*) FROM trials").fetchone()[0] == 0:
            logger.removeHandler(handler)
            handler.close()
            store.close()
            for p in out.iterdir():
                if p.name != LOCK_NAME:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            lock.release()
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
        store.close()
        lock.release()


def load_run(target: str | Path) -> tuple[ExperimentSpec, Store]:
    """A run directory (with spec.toml and store.sqlite), or a spec whose default run directory exists."""
    p = Path(target)
    if p.is_dir():
        spec_file, store_file = p / "spec.toml", p / STORE_NAME
        if not spec_file.exists() or not store_file.exists():
            raise UserError(
                f"{p} is not a run directory (no spec.toml and store.sqlite)",
                "give the --out directory of `quant-disparity run`, or the spec",
            )
        return load_spec(spec_file), Store(store_file, readonly=True)
    if p.is_file():
        spec = load_spec(p)
        run_dir = default_out(spec)
        if not (run_dir / STORE_NAME).exists():
            raise UserError(f"no results for spec {spec.name} in {run_dir}", f"run it first: quant-disparity run {p}")
        return spec, Store(run_dir / STORE_NAME, readonly=True)
    raise UserError(f"{p} not found", "give a run directory or a spec file")


__all__ = [
    "Evaluator",
    "ExperimentSpec",
    "Store",
    "analyse",
    "evaluate_claims",
    "load_results",
    "load_run",
    "load_spec",
    "parse_spec",
    "run_experiment",
    "run_inputs",
    "run_spec",
]
