"""Executors: where a spec's trials are computed. :func:`run_locally` in this process; :func:`run_with_ray` as
Ray tasks on a local instance or an existing cluster. Both commit into one store, batch group by batch group.

The Ray executor:

The driver plans every model's trials (documents, batches, trial keys) and registers them in the store; each
task loads its model where it runs, scores a group of trials on the batches they miss and *streams* each
batch's results back (a Ray generator task), and the driver commits every batch as it arrives. Killing the
driver loses at most the batches in flight; rerunning continues from the store.

On a cluster: start Ray on every node (``ray start --head`` / ``ray start --address=HEAD:6379``), make the
models loadable on the workers (bundled packages installed, or a shared model directory / Hub access), then
``quant-disparity run SPEC --executor ray --ray-address HEAD:6379 --device cuda`` — each task asks Ray for
one GPU when ``--device cuda`` is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import UserError
from ..models import load_model
from ..quant import parse_scheme
from .batches import MAX_CONFIGS_PER_SWEEP, iter_batches
from .planning import now, plan_model


def run_locally(
    spec,
    store,
    by_model: dict,
    summary: dict,
    *,
    device: str,
    dtype: str,
    log: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> dict:
    """Compute the missing trials of ``by_model`` (model -> trials) one model after the other, in this process."""
    t0 = time.perf_counter()
    done_tokens = 0
    for model, trials in by_model.items():
        mp = plan_model(spec, model, trials, store, log=log, device=device, dtype=dtype)
        by_key, n_stored = mp.to_compute(trials)
        summary["already_stored"] += n_stored
        if not by_key:
            log(f"{model}: all {len(trials)} trials already stored")
            continue
        total = mp.prepared.total_pred * len(by_key)
        log(
            f"{model}: {len(by_key)} of {len(trials)} trials to compute, {len(mp.prepared.groups)} batch groups, "
            f"{mp.prepared.total_pred} tokens each"
        )

        assert mp.lm is not None  # plan_model loads the model
        for i, results, n_tokens in iter_batches(
            mp.lm,
            mp.prepared,
            {k: t["assignment"] for k, t in by_key.items()},
            {k: mp.missing[k] for k in by_key},
            vocab_chunk=spec.eval.vocab_chunk,
            modmap=mp.modmap,
            calibrations=mp.calibrations,
        ):
            summary["computed"] += len(store.commit_batch(i, results, now()))
            done_tokens += n_tokens
            if progress:
                progress(done_tokens, total)
        mp.lm = None
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _task(model: str, device: str, dtype: str, prepared, assignments: dict, missing: dict, vocab_chunk: int):
    """Runs inside a Ray worker: yields (batch, results, tokens) per batch."""
    lm = load_model(model, device=device, dtype=dtype, log=lambda m: None)
    configs = {k: {t: parse_scheme(s) for t, s in a.items()} for k, a in assignments.items()}
    yield from iter_batches(lm, prepared, configs, {k: set(v) for k, v in missing.items()}, vocab_chunk=vocab_chunk)


def run_with_ray(
    spec,
    store,
    by_model: dict,
    summary: dict,
    *,
    address: str | None,
    device: str,
    dtype: str,
    log: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> dict:
    """Compute the missing trials of ``by_model`` as Ray tasks of up to :data:`MAX_CONFIGS_PER_SWEEP` trials."""
    artifact = next((t for trials in by_model.values() for t in trials if t.quantized), None)
    if artifact is not None:  # workers rebuild schemes from their names; an artifact's tensors are not in a name
        raise UserError(
            f"trial {artifact.name} audits an artifact: run it with the local executor", "omit --executor ray"
        )
    if any(t.calibration for trials in by_model.values() for t in trials):
        raise UserError("calibrated trials (gptq:, awq:) run with the local executor", "drop --executor ray")
    try:
        import ray
    except ImportError:
        raise UserError("the Ray executor needs Ray", "run: pip install 'quant-disparity[distributed]'") from None
    t0 = time.perf_counter()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(
                f"cannot start or reach Ray ({e})", "check --ray-address, or omit it for a local instance"
            ) from None
    remote = ray.remote(num_gpus=1 if device.startswith("cuda") else 0)(_task)
    gens = []
    total = 0
    for model, trials in by_model.items():
        # planned on the driver's CPU, keyed and recorded for the device the workers compute on
        mp = plan_model(spec, model, trials, store, log=log, device="cpu", dtype=dtype, compute_device=device)
        mp.lm = None  # the driver only plans; workers load their own copy
        by_key, n_stored = mp.to_compute(trials)
        summary["already_stored"] += n_stored
        keys = list(by_key)
        for i in range(0, len(keys), MAX_CONFIGS_PER_SWEEP):
            chunk = keys[i : i + MAX_CONFIGS_PER_SWEEP]
            assignments = {k: {t: s.name for t, s in by_key[k]["assignment"].items()} for k in chunk}
            missing = {k: sorted(mp.missing[k]) for k in chunk}
            total += sum(len(missing[k]) for k in chunk) * mp.prepared.total_pred // max(1, len(mp.prepared.groups))
            gens.append(remote.remote(model, device, dtype, mp.prepared, assignments, missing, spec.eval.vocab_chunk))
        log(f"{model}: {len(keys)} trials to compute in {-(-len(keys) // MAX_CONFIGS_PER_SWEEP)} Ray tasks")
    done = 0
    pending = list(gens)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for gen in ready:
            try:
                ref = next(gen)  # type: ignore[arg-type]  # a generator task's ref is an ObjectRefGenerator; ray's stubs say ObjectRef
            except StopIteration:
                continue
            batch, results, n_tokens = ray.get(ref)
            summary["computed"] += len(store.commit_batch(batch, results, now()))
            done += n_tokens
            if progress:
                progress(done, total)
            pending.append(gen)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
