"""Command line: parse, build a config, call the library, print. Bad input: one line on stderr, exit 2."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

import click
from rich.console import Console

from .errors import UserError
from .registry import RegistryChoice
from .report.formats import FORMATS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def app() -> None:
    """Measure and fix how LLM weight quantization hurts some languages more than others."""


err = Console(stderr=True, highlight=False)
# Wide enough for result tables when output is redirected (rich assumes 80 columns without a terminal).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip()) if value else ()


def _set_given(base: dict, overrides: dict) -> None:
    """Put the options the user gave (not None) over a config's defaults (``base``, its ``to_dict()``)."""
    base.update({k: v for k, v in overrides.items() if v is not None})


def _nonempty_list(ctx, param, value: str | None) -> str | None:
    """An option given as an empty list (``--langs ""``) is an error, not a silent fall back to the default."""
    if value is not None and not _csv(value):
        raise click.BadParameter("is empty; give e.g. eng,heb, or leave the option out for the default")
    return value


def _out_path(ctx, param, value: str | None) -> Path | None:
    """``--out ""`` would mean the current directory; name a directory instead."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty; name a directory (or leave the option out for the default)")
    return None if value is None else Path(value)


_SEED = click.IntRange(min=0)


def _n_boot_range() -> click.IntRange:
    from .config import N_BOOT_MAX, N_BOOT_MIN

    return click.IntRange(N_BOOT_MIN, N_BOOT_MAX)


def _install_warning_handler() -> None:
    """Library warnings (logger ``quant_disparity``) print as one ``warning: ...`` line on stderr."""
    import logging

    logger = logging.getLogger("quant_disparity")
    if any(getattr(h, "_qd_cli", False) for h in logger.handlers):
        return

    class _ToStderr(logging.Handler):
        _qd_cli = True

        def emit(self, record: logging.LogRecord) -> None:
            err.print(f"warning: {record.getMessage()}", markup=False, soft_wrap=True)

    logger.addHandler(_ToStderr(logging.WARNING))


def _default_out(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


def _estimate_options(f):
    """``--dry-run``, ``--estimate-device``, ``--recalibrate`` and ``--force``: the same four on audit, locate, run."""
    options = [
        click.option(
            "--dry-run", is_flag=True, help="Print the work, predicted time and peak memory; load and score nothing."
        ),
        click.option(
            "--estimate-device",
            help="With --dry-run: predict for this CPU (default) or a GPU that need not be here (h100, a100, l4, ...).",
        ),
        click.option(
            "--recalibrate",
            is_flag=True,
            help="With --dry-run: measure this CPU's throughput again (cached with its date) before predicting.",
        ),
        click.option("--force", is_flag=True, help="Run even when the job is predicted not to fit in memory."),
    ]
    for option in reversed(options):  # click lists options in decorator order
        f = option(f)
    return f


@app.command()
@click.option("--model", help="Bundled alias (gemma-3-270m, smollm2-135m), HF id, model dir or .gguf file.")
@click.option("--scheme", help="Quantization scheme, e.g. w4g128 (`quant-disparity schemes` lists them).")
@click.option(
    "--plan",
    help="A mixed-precision plan instead of --scheme, e.g. 'keep:layer:0,layer:-1; w4g128:*' (or a .toml file).",
)
@click.option(
    "--quantized",
    help="A pre-quantized artifact of --model to audit instead of a scheme: a .gguf file, or a GPTQ/AWQ, "
    "compressed-tensors or plain Hugging Face directory.",
)
@click.option("--langs", callback=_nonempty_list, help="Comma-separated languages (default: the 12-language panel).")
@click.option("--corpus", help="udhr (bundled), a .jsonl file, a txt dir or a FLORES-style dir.")
@click.option("--split", help="all | select | heldout.")
@click.option("--max-tokens", type=int, help="Tokens per language (whole documents, corpus order); 0 = all.")
@click.option(
    "--min-docs", type=int, help="At least this many documents per language, past --max-tokens if need be (default 1)."
)
@click.option("--include", help="Also quantize: embeddings, lm_head (comma-separated).")
@click.option("--seed", type=_SEED, help="Bootstrap seed (>= 0).")
@click.option("--n-boot", type=_n_boot_range(), help="Bootstrap replicates (50-100000).")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/audit-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing audit.json in --out.")
@click.option("--device", help="cpu or cuda.")
@click.option("--dtype", help="float32 or bfloat16.")
@click.option("--window", type=int, help="Tokens per forward window.")
@click.option("--context", type=int, help="Context tokens carried into later windows of long documents.")
@click.option("--batch-tokens", type=int, help="Padded tokens per batch.")
@click.option("--config", type=click.Path(path_type=Path), help="An audit config TOML; options given here override it.")
@click.option(
    "--tasks",
    "tasks",
    help="Also run tasks on the same model and scheme: cloze, generate, lmeval:TASK (comma-separated).",
)
@click.option(
    "--gen-tokens", type=int, default=32, show_default=True, help="Tokens per greedy continuation (generate)."
)
@click.option(
    "--lmeval-include",
    type=click.Path(path_type=Path),
    help="A folder of lm-eval task YAMLs for lmeval:TASK (lm-eval's --include_path).",
)
@_estimate_options
@click.option(
    "--calibration",
    help="Calibration data for gptq:/awq: schemes: eng | mix:eng,heb,arb | target | a .jsonl/.txt file "
    "(select split; the evaluation split then defaults to heldout).",
)
@click.option("--calibration-tokens", type=click.IntRange(min=1), help="Calibration tokens in all (default 4096).")
@click.option("--calibration-seed", type=_SEED, help="Order in which calibration documents are drawn (default 0).")
def audit(
    model,
    scheme,
    plan,
    quantized,
    langs,
    corpus,
    split,
    max_tokens,
    min_docs,
    include,
    seed,
    n_boot,
    out_dir,
    overwrite,
    device,
    dtype,
    window,
    context,
    batch_tokens,
    config,
    tasks,
    gen_tokens,
    lmeval_include,
    dry_run,
    estimate_device,
    recalibrate,
    force,
    calibration,
    calibration_tokens,
    calibration_seed,
) -> None:
    """Audit a quantization scheme per language: bits per byte, KL and top-1 agreement, with 95% CIs."""
    from ._io import OutputDir
    from .audit import run_audit, validate
    from .config import AuditConfig
    from .report.tables import audit_markdown, audit_rich_table, audit_summary_lines

    base = AuditConfig().to_dict()
    if config is not None:
        try:
            base = AuditConfig.from_toml(config.read_text(encoding="utf-8")).to_dict()
        except OSError as e:
            raise UserError(f"cannot read --config {config} ({e.strerror})") from None
        except UnicodeDecodeError:
            raise UserError(f"--config {config} is not UTF-8 text", "save it as UTF-8") from None
    if plan and scheme:
        raise UserError("give either --scheme or --plan, not both", "a plan names its schemes itself")
    if quantized and scheme:
        raise UserError("give either --scheme or --quantized, not both", "the artifact's tensors are the quantized arm")
    overrides = {
        "model": model,
        "scheme": scheme,
        "plan": plan,
        "quantized": quantized,
        "langs": list(_csv(langs)) or None,
        "corpus": corpus,
        "split": split,
        "max_tokens": max_tokens,
        "min_docs": min_docs,
        "include": list(_csv(include)) if include is not None else None,
        "seed": seed,
        "n_boot": n_boot,
        "device": device,
        "dtype": dtype,
        "calibration": calibration,
        "calibration_tokens": calibration_tokens,
        "calibration_seed": calibration_seed,
    }
    if calibration and split is None and config is None:
        overrides["split"] = "heldout"  # calibration documents come from the select split
    _set_given(base, overrides)
    apply_eval_options(base["eval"], window, context, batch_tokens)
    cfg = AuditConfig.from_dict(base)
    validate(cfg)
    task_settings = None
    if tasks is not None:
        from .audit import run_audit_with_tasks
        from .corpus.selection import open_corpus, resolve_langs
        from .tasks import TaskSettings, parse_tasks

        if cfg.calibration:
            raise UserError(
                "--tasks does not run calibrated schemes yet", "audit the calibrated scheme without --tasks"
            )
        task_settings = TaskSettings(
            seed=cfg.seed,
            gen_tokens=gen_tokens,
            batch_tokens=cfg.eval.batch_tokens,
            lmeval_include=str(lmeval_include.resolve()) if lmeval_include else "",
        )
        corpus_ = open_corpus(cfg.selection)
        for task in parse_tasks(tasks, task_settings):  # before any output directory is made
            task.check(corpus_, resolve_langs(corpus_, cfg.selection.langs))
    if _estimate_first("audit", cfg, dry_run, estimate_device, force, recalibrate):
        return
    with OutputDir(out_dir or _default_out("audit"), "audit.json", overwrite) as staged:
        if task_settings is not None:
            data = _run_with_progress(
                lambda log, prog: run_audit_with_tasks(cfg, tasks, task_settings, log=log, progress=prog)
            )
        else:
            data = _run_with_progress(lambda log, prog: run_audit(cfg, log=log, progress=prog)).to_dict()
        staged.write_text("audit.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        md = audit_markdown(data)
        if "tasks" in data:
            from .tasks import tasks_markdown

            md += tasks_markdown(data["tasks"])
        staged.write_text("audit.md", md)
        staged.write_text("config.toml", cfg.to_toml())
        table = audit_rich_table(data)
    target = staged.target
    out.print(table)
    for line in audit_summary_lines(data):
        out.print(line, markup=False)
    out.print(f"wrote {target / 'audit.json'} and audit.md")


def _check_estimate_options(dry_run: bool, estimate_device: str | None, dtype: str, recalibrate: bool) -> str:
    from .estimate import gpu_profile

    if recalibrate and not dry_run:
        raise UserError("--recalibrate only applies to --dry-run", "add --dry-run, or drop --recalibrate")
    if estimate_device is None or estimate_device == "cpu":
        return "cpu"
    if recalibrate:
        raise UserError(
            "--recalibrate measures this CPU, but a GPU estimate is computed from FLOPs, not measured",
            "drop --recalibrate, or --estimate-device",
        )
    if not dry_run:
        raise UserError("--estimate-device only applies to --dry-run", "add --dry-run, or drop --estimate-device")
    gpu_profile(estimate_device, dtype)  # an unknown device, or a dtype it cannot run: one line
    return estimate_device


def _print_estimates(kind: str, estimates, extra=None) -> None:
    from .estimate import summary_lines

    for line in summary_lines(kind, estimates, extra):
        out.print(line, markup=False)


def _estimate_first(kind: str, cfg, dry_run: bool, estimate_device: str | None, force: bool, recalibrate: bool) -> bool:
    """``--dry-run``: print the estimate and return True. Otherwise refuse a job that does not fit (one line)
    before anything is loaded, unless ``--force``."""
    from . import estimate

    target = _check_estimate_options(dry_run, estimate_device, cfg.dtype, recalibrate)
    if dry_run:
        job = estimate.audit_job if kind == "audit" else estimate.locate_job
        _print_estimates(kind, [job(cfg, target, log=lambda m: err.print(m), recalibrate=recalibrate)])
        return True
    if kind == "audit":
        from .audit import quantization_targets
        from .quant import parse_scheme
        from .quant.plan import load_plan

        def jobs(modmap):
            assignment = estimate._audit_assignment(
                cfg, modmap, parse_scheme(cfg.scheme), quantization_targets, load_plan
            )
            return [({"quantized": assignment}, [], False)]
    else:

        def jobs(modmap):
            configs, bases = estimate.locate_configs(cfg, modmap)
            return [(configs, bases, cfg.reuse)]

    _memory_check(cfg.model, cfg.dtype, cfg.device, force, jobs, cfg.eval)
    return False


def _memory_check(model: str, dtype: str, device: str, force: bool, jobs, ev, label: str = "") -> None:
    """The memory check before loading (:func:`.estimate.precheck`): one line and exit 2 when the job does not
    fit; a warning when ``--force`` lets it go on."""
    from . import estimate

    warning = estimate.precheck(
        model,
        dtype=dtype,
        device=device,
        force=force,
        jobs=jobs,
        batch_tokens=ev.batch_tokens,
        score_rows=ev.score_rows,
        window=ev.window,
    )
    if warning:
        err.print(f"warning: {label}{warning}", markup=False)


def _estimate_run(
    spec, out_dir, device: str, dtype: str, dry_run: bool, estimate_device, force: bool, recalibrate: bool
) -> bool:
    from . import estimate
    from .experiments.batches import MAX_CONFIGS_PER_SWEEP, pick_bases
    from .experiments.spec import load_spec
    from .quant.plan import Plan

    target = _check_estimate_options(dry_run, estimate_device, dtype, recalibrate)
    if dry_run:
        estimates, lines = estimate.run_job(
            spec,
            out_dir,
            device=device,
            dtype=dtype,
            target=target,
            log=lambda m: err.print(m),
            recalibrate=recalibrate,
        )
        _print_estimates("run", estimates, lines)
        return True
    parsed = load_spec(spec)
    for model in parsed.models:
        trials = [t for t in parsed.trials if t.model == model]

        def jobs(modmap, trials=trials):
            assignments = {t.name: Plan.parse(t.estimate_plan).resolve(modmap).assignment() for t in trials}
            names = list(assignments)
            out_jobs = []
            for start in range(0, len(names), MAX_CONFIGS_PER_SWEEP):
                group = {n: assignments[n] for n in names[start : start + MAX_CONFIGS_PER_SWEEP]}
                out_jobs.append((group, pick_bases(group), True))
            return out_jobs

        _memory_check(model, dtype, device, force, jobs, parsed.eval, f"{model}: ")
    return False


def apply_eval_options(ev: dict, window: int | None, context: int | None, batch_tokens: int | None) -> None:
    """Command-line window settings; a smaller --window alone also shrinks the context to a quarter of it."""
    if window is not None:
        ev["window"] = window
        if context is None:
            ev["context"] = min(ev["context"], max(0, window // 4))
        if batch_tokens is None:
            ev["batch_tokens"] = max(ev["batch_tokens"], window)
    if context is not None:
        ev["context"] = context
    if batch_tokens is not None:
        ev["batch_tokens"] = batch_tokens


def _run_with_progress(fn, what: str = "scoring tokens"):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task(what, total=None)

    def prog(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    def log(msg: str) -> None:
        bar.console.print(msg)

    bar.start()
    try:
        result = fn(log, prog)
    except BaseException:
        # Clear the bar (and skip the blank line Progress.stop adds when not on a terminal): the error or
        # interrupt line that follows is then the only line about it.
        bar.live.transient = True
        bar.live.stop()
        raise
    bar.stop()
    return result


@app.command()
@click.option("--model", help="Bundled alias, HF id, model dir or .gguf file (default gemma-3-270m).")
@click.option("--scheme", help="Quantization scheme of the swept universe (default w4g128).")
@click.option(
    "--granularity",
    help="Units: layer (default), component, layer×component (or layerxcomponent), head (attention heads; a "
    "shared key/value head is a unit of its own) or neurons:N (MLP channels in groups of N).",
)
@click.option(
    "--mode",
    type=click.Choice(["protect-one", "quantize-only"]),
    help="protect-one: quantize all but the unit; quantize-only: only the unit (default protect-one).",
)
@click.option("--pairs", help="Units whose pairwise interactions to measure, e.g. L0,L-1,L5 or mlp,attn.")
@click.option("--langs", callback=_nonempty_list, help="Comma-separated languages (default: the 12-language panel).")
@click.option("--corpus", help="udhr (bundled), a .jsonl file, a txt dir or a FLORES-style dir.")
@click.option("--split", help="select (default: sensitivity scans choose on the selection split) | heldout | all.")
@click.option("--max-tokens", type=int, help="Tokens per language (default 512; 0 = all).")
@click.option("--min-docs", type=int, help="At least this many documents per language (default 1).")
@click.option("--include", help="Also quantize: embeddings, lm_head.")
@click.option("--seed", type=_SEED)
@click.option("--n-boot", type=_n_boot_range())
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/locate-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing locate.json in --out.")
@click.option("--no-reuse", is_flag=True, help="Recompute every block (no replay of unchanged leading blocks).")
@click.option("--device")
@click.option("--dtype")
@click.option("--window", type=int)
@click.option("--context", type=int)
@click.option("--batch-tokens", type=int)
@_estimate_options
@click.option(
    "--estimate",
    "estimate_score",
    help="Rank the units by this cheap score (e.g. fisher, rel_frobenius; see `scores`) and measure only the top K.",
)
@click.option("--top", type=int, help="With --estimate: how many of the ranked units to measure.")
@click.option(
    "--quantized",
    help="A pre-quantized artifact of --model (GGUF, GPTQ/AWQ/compressed-tensors or HF directory): sweep the "
    "tensors it changes, each at its stored value.",
)
def locate(
    model,
    scheme,
    granularity,
    mode,
    pairs,
    langs,
    corpus,
    split,
    max_tokens,
    min_docs,
    include,
    seed,
    n_boot,
    out_dir,
    overwrite,
    no_reuse,
    device,
    dtype,
    window,
    context,
    batch_tokens,
    dry_run,
    estimate_device,
    recalibrate,
    force,
    estimate_score,
    top,
    quantized,
) -> None:
    """Which layers or components cause each language's damage (a per-unit x per-language sweep)."""
    from ._io import OutputDir
    from .locate import LocateConfig, run_locate, validate
    from .quant import parse_scheme
    from .report import plots
    from .report.tables import locate_markdown

    base = LocateConfig().to_dict()
    overrides = {
        "model": model,
        "scheme": scheme,
        "granularity": granularity,
        "mode": mode,
        "pairs": list(_csv(pairs)) or None,
        "langs": list(_csv(langs)) or None,
        "corpus": corpus,
        "split": split,
        "max_tokens": max_tokens,
        "min_docs": min_docs,
        "include": list(_csv(include)) if include else None,
        "seed": seed,
        "n_boot": n_boot,
        "device": device,
        "dtype": dtype,
        "reuse": False if no_reuse else None,
        "estimate": estimate_score,
        "top": top,
        "quantized": quantized,
    }
    if quantized and scheme:
        raise UserError(
            "--scheme does not combine with --quantized: the artifact's tensors are what is swept", "drop --scheme"
        )
    _set_given(base, overrides)
    apply_eval_options(base["eval"], window, context, batch_tokens)
    cfg = LocateConfig.from_dict(base)
    validate(cfg)
    if parse_scheme(cfg.scheme).is_identity:
        raise UserError(
            f"locate --scheme {cfg.scheme} quantizes nothing, so there is no damage to locate",
            "give a quantizing scheme, e.g. --scheme w4g128 (audit --scheme none compares the reference with itself)",
        )
    if _estimate_first("locate", cfg, dry_run, estimate_device, force, recalibrate):
        return
    with OutputDir(out_dir or _default_out("locate"), "locate.json", overwrite) as staged:
        result = _run_with_progress(lambda log, prog: run_locate(cfg, log=log, progress=prog), "scoring")
        data = result.to_dict()
        for name, fig in plots.locate_figures(result).items():
            plots.save(fig, staged.path(name))
        staged.write_text("locate.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        md = locate_markdown(data)
        staged.write_text("locate.md", md)
    target = staged.target
    out.print(md, markup=False)
    out.print(f"wrote {target / 'locate.json'}, locate.md, heatmap.png, bars.png")


@app.group()
def inspect() -> None:
    """Look inside a model's layers: super weights, outlier structure, language-specific neurons and attention heads."""


@inspect.command("super-weights")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option(
    "--prompt", help="The text of the forward pass (default: the paper's 'Apple Inc. is a worldwide tech company.')."
)
@click.option(
    "--ratio", type=float, help="Massive: |activation| at least this many times the block's median (default 100)."
)
@click.option(
    "--min-share", type=float, help="The one weight's product must make this share of the output (default 0.5)."
)
@click.option("--rounds", type=int, help="Passes, each after zeroing the super weights found so far (default 3).")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/super-weights-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing super_weights.json in --out.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
def inspect_super_weights(model, prompt, ratio, min_share, rounds, out_dir, overwrite, device, dtype) -> None:
    """Find super weights data-free (Yu et al. 2024): massive down-projection activations and the weight making each."""
    from ._io import OutputDir
    from .inspect import DEFAULT_PROMPT, Thresholds
    from .inspect.command import super_weights
    from .models import classify_source, load_model, parse_device, parse_dtype
    from .report.inspect_tables import super_weights_markdown

    given = {"ratio": ratio, "min_share": min_share, "rounds": rounds}
    thresholds = Thresholds(**{k: v for k, v in given.items() if v is not None})
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    if not prompt.strip():
        raise UserError("--prompt is empty", f"give a short text, e.g. the default: {DEFAULT_PROMPT}")
    parse_device(device)
    parse_dtype(dtype)
    classify_source(model)
    with OutputDir(out_dir or _default_out("super-weights"), "super_weights.json", overwrite) as staged:
        lm = load_model(model, device=device, dtype=dtype, log=lambda m: err.print(m))
        data = super_weights(lm, prompt, thresholds).to_dict()
        md = super_weights_markdown(data)
        staged.write_text("super_weights.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        staged.write_text("super_weights.md", md)
    out.print(md, markup=False)
    out.print(f"wrote {staged.target / 'super_weights.json'} and super_weights.md")


@inspect.command("super-effect")
@click.option("--model", help="Bundled alias, HF id, model dir or .gguf file (default gemma-3-270m).")
@click.option("--scheme", help="The uniform scheme of arms (a) and (b) (default w4g128).")
@click.option("--langs", callback=_nonempty_list, help="Comma-separated languages (default: the 12-language panel).")
@click.option("--corpus", help="udhr (bundled), a .jsonl file, a txt dir or a FLORES-style dir.")
@click.option("--split", default="heldout", show_default=True, help="select | heldout | all.")
@click.option("--max-tokens", type=int, help="Tokens per language (whole documents, corpus order); 0 = all.")
@click.option("--min-docs", type=int, help="At least this many documents per language.")
@click.option("--seed", type=_SEED, help="Bootstrap seed (>= 0).")
@click.option("--n-boot", type=_n_boot_range(), help="Bootstrap replicates (50-100000).")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/super-effect-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing super_effect.json in --out.")
@click.option("--device", help="cpu or cuda.")
@click.option("--dtype", help="float32 or bfloat16.")
def inspect_super_effect(
    model, scheme, langs, corpus, split, max_tokens, min_docs, seed, n_boot, out_dir, overwrite, device, dtype
) -> None:
    """Super-weight ablation per language: Δbpb of the uniform scheme, of it with keep:super, and of zero:super."""
    from ._io import OutputDir
    from .config import AuditConfig
    from .inputs import check_model_and_corpus
    from .inspect.effect import run_super_effect, super_effect_markdown
    from .quant import parse_scheme

    base = AuditConfig().to_dict()
    overrides = {
        "model": model,
        "scheme": scheme,
        "langs": list(_csv(langs)) or None,
        "corpus": corpus,
        "split": split,
        "max_tokens": max_tokens,
        "min_docs": min_docs,
        "seed": seed,
        "n_boot": n_boot,
        "device": device,
        "dtype": dtype,
    }
    _set_given(base, overrides)
    cfg = AuditConfig.from_dict(base)
    parse_scheme(cfg.scheme)
    check_model_and_corpus(cfg.runtime, cfg.selection)
    with OutputDir(out_dir or _default_out("super-effect"), "super_effect.json", overwrite) as staged:
        data = _run_with_progress(lambda log, prog: run_super_effect(cfg, log=log, progress=prog))
        md = super_effect_markdown(data)
        staged.write_text("super_effect.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        staged.write_text("super_effect.md", md)
    out.print(md, markup=False)
    out.print(f"wrote {staged.target / 'super_effect.json'} and super_effect.md")


@inspect.command("outliers")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/outliers-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing outliers.json in --out.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True, help="Tensors shown here.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
def inspect_outliers(model, out_dir, overwrite, top, device, dtype) -> None:
    """Dense vs sparse outliers: per weight tensor, shares beyond 3 and 6 sd, kurtosis, max/mean |w|."""
    from ._io import OutputDir
    from .inspect.command import outliers
    from .models import classify_source, load_model, parse_device, parse_dtype
    from .report.inspect_tables import OUTLIER_COLUMNS, outliers_markdown, outliers_rows, outliers_summary_lines
    from .report.tables import markdown_table

    parse_device(device)
    parse_dtype(dtype)
    classify_source(model)
    with OutputDir(out_dir or _default_out("outliers"), "outliers.json", overwrite) as staged:
        lm = load_model(model, device=device, dtype=dtype, log=lambda m: err.print(m))
        data = outliers(lm)
        staged.write_text("outliers.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        staged.write_text("outliers.md", outliers_markdown(data))
    for line in outliers_summary_lines(data):
        out.print(line, markup=False)
    out.print(markdown_table(list(OUTLIER_COLUMNS), outliers_rows(data, top), "lllrrrrrr"), markup=False)
    out.print(f"wrote {staged.target / 'outliers.json'} (every tensor) and outliers.md")


@inspect.command("neurons")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option("--langs", callback=_nonempty_list, help="Comma-separated languages (default: the 12-language panel).")
@click.option("--corpus", help="udhr (default), a JSONL file, or a directory.")
@click.option("--max-tokens", type=int, help="Selection tokens per language (default 0 = every selection document).")
@click.option("--top-rate", type=float, help="Share of all neurons selected by lowest entropy (default 0.01, LAPE's).")
@click.option(
    "--activation-quantile", type=float, help="Quantile of all firing probabilities a language must exceed (0.95)."
)
@click.option(
    "--protect",
    callback=_nonempty_list,
    help="Protection experiment for these languages' own neurons (comma-separated, or 'all'); held-out split.",
)
@click.option(
    "--protect-eval", callback=_nonempty_list, help="Languages --protect evaluates (default: every language)."
)
@click.option("--heldout-max-tokens", type=int, help="Held-out tokens per language for --protect (default 1024).")
@click.option("--min-docs", type=int, help="At least this many documents per language in each split (default 1).")
@click.option("--scheme", help="Scheme of the protection experiment (default w4g128).")
@click.option("--seed", type=_SEED, help="Seed of the random neurons and of the bootstrap (>= 0).")
@click.option("--n-boot", type=_n_boot_range(), help="Bootstrap replicates (50-100000).")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/neurons-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing neurons.json in --out.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
def inspect_neurons(
    model,
    langs,
    corpus,
    max_tokens,
    top_rate,
    activation_quantile,
    protect,
    protect_eval,
    heldout_max_tokens,
    min_docs,
    scheme,
    seed,
    n_boot,
    out_dir,
    overwrite,
    device,
    dtype,
) -> None:
    """Language-specific neurons (LAPE, Tang et al. 2024) and, with --protect, what keeping them recovers."""
    from ._io import OutputDir
    from .inspect.neuron_run import NeuronsConfig, run_neurons, validate
    from .report import plots
    from .report.neuron_tables import neuron_figures, neurons_markdown

    base = NeuronsConfig().to_dict()
    overrides = {
        "model": model,
        "langs": list(_csv(langs)) or None,
        "corpus": corpus,
        "max_tokens": max_tokens,
        "top_rate": top_rate,
        "activation_quantile": activation_quantile,
        "protect": list(_csv(protect)) or None,
        "protect_eval": list(_csv(protect_eval)) or None,
        "heldout_max_tokens": heldout_max_tokens,
        "min_docs": min_docs,
        "scheme": scheme,
        "seed": seed,
        "n_boot": n_boot,
        "device": device,
        "dtype": dtype,
    }
    _set_given(base, overrides)
    cfg = NeuronsConfig.from_dict(base)
    validate(cfg)
    with OutputDir(out_dir or _default_out("neurons"), "neurons.json", overwrite) as staged:
        data, files = _run_with_progress(lambda log, prog: run_neurons(cfg, log=log, progress=prog), "tokens")
        for name, fig in neuron_figures(data).items():
            plots.save(fig, staged.path(name))
        for name, text in files.items():
            staged.write_text(name, text)
        md = neurons_markdown(data)
        staged.write_text("neurons.md", md)
        staged.write_text("neurons.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    out.print(md, markup=False)
    out.print(
        f"wrote {staged.target / 'neurons.json'}, neurons.md, neurons_by_layer.png, overlap.png, neuron lists and plans"
    )


@inspect.command("heads")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option("--langs", callback=_nonempty_list, help="Comma-separated languages (default: the 12-language panel).")
@click.option("--corpus", help="udhr (default), a JSONL file, or a directory.")
@click.option("--max-tokens", type=int, help="Selection tokens per language (default 0 = every selection document).")
@click.option("--min-docs", type=int, help="At least this many selection documents per language (default 1).")
@click.option(
    "--threshold",
    type=float,
    help="Specific: the 95% interval of the standardized difference beyond the common shift lies beyond ±this (2).",
)
@click.option(
    "--locate",
    "locate_file",
    type=click.Path(path_type=Path),
    help="A locate.json (--granularity head --mode protect-one): correlate specificity with its effects.",
)
@click.option("--seed", type=_SEED, help="Bootstrap seed (>= 0).")
@click.option("--n-boot", type=_n_boot_range(), help="Bootstrap replicates (50-100000).")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/heads-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing heads.json in --out.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
def inspect_heads(
    model, langs, corpus, max_tokens, min_docs, threshold, locate_file, seed, n_boot, out_dir, overwrite, device, dtype
) -> None:
    """Attention statistics per head and language, language-specific heads, and whether they predict protection."""
    from ._io import OutputDir
    from .inspect.head_run import HeadsConfig, run_heads, validate
    from .report import plots
    from .report.head_tables import heads_figures, heads_markdown

    base = HeadsConfig().to_dict()
    overrides = {
        "model": model,
        "langs": list(_csv(langs)) or None,
        "corpus": corpus,
        "max_tokens": max_tokens,
        "min_docs": min_docs,
        "threshold": threshold,
        "locate": None if locate_file is None else str(locate_file),
        "seed": seed,
        "n_boot": n_boot,
        "device": device,
        "dtype": dtype,
    }
    _set_given(base, overrides)
    cfg = HeadsConfig.from_dict(base)
    validate(cfg)
    with OutputDir(out_dir or _default_out("heads"), "heads.json", overwrite) as staged:
        data = _run_with_progress(lambda log, prog: run_heads(cfg, log=log, progress=prog), "tokens")
        for name, fig in heads_figures(data).items():
            plots.save(fig, staged.path(name))
        md = heads_markdown(data)
        staged.write_text("heads.md", md)
        staged.write_text("heads.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    out.print(md, markup=False)
    out.print(f"wrote {staged.target / 'heads.json'}, heads.md, heads_specificity.png")


@app.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="Address of an existing Ray cluster (default: start a local instance).")
@click.option("--out", "out_dir", callback=_out_path, help="Run directory (default runs/<spec name>).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@_estimate_options
def run(spec, executor, ray_address, out_dir, device, dtype, dry_run, estimate_device, recalibrate, force) -> None:
    """Run (or resume) an experiment spec: every missing trial, then the claims' verdicts."""
    from .experiments import run_experiment
    from .experiments.spec import load_spec
    from .models import parse_device, parse_dtype

    parse_device(device)
    parse_dtype(dtype)
    load_spec(spec)  # a bad spec is one line, before any progress bar
    if _estimate_run(spec, out_dir, device, dtype, dry_run, estimate_device, force, recalibrate):
        return
    try:
        result = _run_with_progress(
            lambda log, prog: run_experiment(
                spec,
                out_dir,
                executor=executor,
                ray_address=ray_address,
                device=device,
                dtype=dtype,
                log=log,
                progress=prog,
            ),
            "scoring trial tokens",
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted; the trials committed so far are kept in the store: rerun the same command to finish"
        ) from None
    from .report.experiment import summary_markdown

    out.print(summary_markdown(result), markup=False)
    out.print(
        f"wrote {result['run']['invocation']} (summary.md, verdicts.json, run.log); store {result['run']['store']}"
    )


@app.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--format", "report_format", type=RegistryChoice(FORMATS), default="html", show_default=True)
@click.option("--out", "out_file", callback=_out_path, help="Output file (default: in the run directory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at the output path.")
def report(target, report_format, out_file, overwrite) -> None:
    """Report a run directory (or a spec's default run): HTML with figures, markdown, or LaTeX tables."""
    from .experiments import analyse, load_run, run_inputs
    from .provenance import stored_provenance

    if target.is_dir() and not (target / "spec.toml").exists():
        single = next((name for name in _SINGLE_REPORTS if (target / name).is_file()), None)
        if single:
            _report_single(target, single, report_format, out_file, overwrite)
            return
    spec, store = load_run(target)
    try:
        result = analyse(spec, store)
        store_info = stored_provenance(spec, store)
    finally:
        store.close()
    run_dir = target if target.is_dir() else Path("runs") / spec.name
    path = out_file or run_dir / f"report.{report_format.suffix}"
    _check_report_path(path, overwrite, [*run_inputs(run_dir), *([] if target.is_dir() else [target])])
    _write_report(path, report_format.render(result, store_info), overwrite)


def _write_report(path: Path, text: str, overwrite: bool) -> None:
    from ._io import atomic_write_text, lock_file_for

    try:
        with lock_file_for(path):
            _check_report_path(path, overwrite, [])  # again, now that no other report can write it
            atomic_write_text(path, text)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror})", "choose another --out") from None
    out.print(f"wrote {path}")


#: Result files of one command that `report DIR` renders (HTML or markdown): file -> (schema, command).
_SINGLE_REPORTS = {
    "heads.json": ("quant-disparity/heads", "inspect heads"),
    "search.json": ("quant-disparity/search", "search"),
}


def _report_single(target: Path, name: str, report_format, out_file: Path | None, overwrite: bool) -> None:
    """The report of one command's output directory (``inspect heads``, ``search``)."""
    schema, command = _SINGLE_REPORTS[name]
    if report_format.name not in ("html", "md"):
        raise UserError(f"the result of {command} has no {report_format.name} report", "use --format html or md")
    try:
        data = json.loads((target / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{target / name} is not readable JSON ({e})", f"rerun {command}") from None
    # search results written before the schema field carry only their command's name
    if not isinstance(data, dict) or (data.get("schema") or f"quant-disparity/{data.get('command')}") != schema:
        raise UserError(f"{target / name} is not an output of {command}", f"rerun {command}")
    if name == "heads.json":
        from .report.head_tables import heads_html as to_html
        from .report.head_tables import heads_markdown as to_md
    else:
        from .report.search import search_html as to_html
        from .report.search import search_markdown as to_md
    path = out_file or target / f"report.{report_format.suffix}"
    _check_report_path(path, overwrite, [target / name])
    _write_report(path, to_html(data) if report_format.name == "html" else to_md(data), overwrite)


def _check_report_path(path: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse to write a report over one of the run's inputs, a directory, or (without --overwrite) any file."""
    for p in inputs:
        if p.exists() and path.exists() and path.samefile(p):
            raise UserError(f"--out {path} is an input of the run ({p.name})", "choose another --out file")
    if path.is_dir():
        raise UserError(f"--out {path} is a directory", "give a file name, e.g. report.html")
    if path.exists() and not overwrite:
        raise UserError(f"--out {path} already exists", "choose another --out or pass --overwrite to replace it")


@app.command()
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option("--plan", help="Also resolve a plan against this model and show what each tensor gets.")
def modules(model, plan) -> None:
    """Show a model's module map (blocks, components, tied tensors) and, with --plan, a plan's resolution."""
    from rich.table import Table

    from .models import load_model
    from .models.modules import build_module_map
    from .quant.plan import load_plan

    parsed = load_plan(plan) if plan else None
    lm = load_model(model, log=lambda m: err.print(m))
    mm = build_module_map(lm.model)
    summary = mm.summary()
    out.print(f"{model}: {summary['n_layers']} blocks at {summary['blocks']}, {summary['total_params']:,} parameters")
    for note in summary["notes"]:
        out.print(f"note: {note}", markup=False)
    t = Table(title="parameters by component", title_justify="left")
    t.add_column("component")
    t.add_column("params", justify="right")
    t.add_column("share", justify="right")
    for comp, n in summary["params_by_component"].items():
        t.add_row(comp, f"{n:,}", f"{100 * n / summary['total_params']:.2f}%")
    out.print(t)
    if parsed is not None:
        resolved = parsed.resolve(mm)
        t = Table(title=f"plan: {parsed}", title_justify="left")
        for col in ("tensor", "layer", "components", "params", "action"):
            t.add_column(col)
        for d in resolved.decisions:
            t.add_row(d.name, "" if d.layer is None else str(d.layer), "+".join(d.components), f"{d.numel:,}", d.action)
        out.print(t)
        out.print(json.dumps(resolved.totals, indent=1))


@app.command()
@click.option("--corpus", default="udhr", show_default=True, help="udhr, a .jsonl file, a txt dir or a FLORES dir.")
@click.option("--panel", is_flag=True, help="Only the default panel.")
@click.option("--search", help="Only languages whose id or name contains this text.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def languages(corpus, panel, search, as_json) -> None:
    """List the languages a corpus offers, with script, direction and resource measures."""
    from rich.table import Table

    from .corpus import DEFAULT_PANEL, language_info, load_corpus
    from .corpus.documents import base_language

    c = load_corpus(corpus)
    keys = [k for k in c.languages if not panel or k in DEFAULT_PANEL]
    rows = []
    for key in keys:
        info = language_info(base_language(key))
        if search and search.lower() not in f"{key} {info.name}".lower():
            continue
        docs = c.documents(key)
        rows.append(
            {
                **info.to_dict(),
                "id": key,
                "documents": len(docs),
                "bytes": sum(d.n_bytes for d in docs),
                "default_panel": key in DEFAULT_PANEL,
            }
        )
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False))
        return
    t = Table(
        title=f"{c.name}: {len(rows)} language versions" + (" (default panel)" if panel else ""), title_justify="left"
    )
    for col in ("id", "name", "script", "dir", "Joshi", "CC %", "docs", "bytes", "panel"):
        t.add_column(col, justify="right" if col in ("Joshi", "CC %", "docs", "bytes") else "left")
    for r in rows:
        t.add_row(
            r["id"],
            r["name"],
            r["script"],
            r["direction"],
            "—" if r["joshi_class"] is None else str(r["joshi_class"]),
            "—" if r["cc_pct"] is None else f"{r['cc_pct']:.4f}",
            str(r["documents"]),
            f"{r['bytes']:,}",
            "*" if r["default_panel"] else "",
        )
    out.print(t)


@app.command()
def models() -> None:
    """List the bundled models, whether their packages are installed, and whether they are cached."""
    import importlib.util

    from rich.table import Table

    from .models import BUNDLED, DEFAULT_MODEL
    from .models.loading import gguf_cache_dir

    t = Table(
        title="bundled models (any Hugging Face id, model directory or .gguf file works too)", title_justify="left"
    )
    for col in ("alias", "description", "installed", "cached", "install"):
        t.add_column(col)
    for alias, b in BUNDLED.items():
        installed = importlib.util.find_spec(b.module) is not None
        cached = (gguf_cache_dir(b.sha256) / "quant_disparity.json").exists()
        t.add_row(
            alias + (" (default)" if alias == DEFAULT_MODEL else ""),
            b.description,
            "yes" if installed else "no",
            "yes" if cached else "no",
            b.install,
        )
    out.print(t)


@app.command()
def schemes() -> None:
    """Show the scheme grammar with the storage cost of each example."""
    from rich.table import Table

    from .quant import SCHEMES, parse_scheme

    t = Table(
        title="schemes (bits per weight for a 2048 x 2048 matrix, scales and zero points included)",
        title_justify="left",
    )
    t.add_column("scheme")
    t.add_column("bits/weight", justify="right")
    t.add_column("meaning")
    from .quant.backends.base import MissingExtra

    for kind in SCHEMES.values():  # the registry's kinds, plugins included, each with its own examples
        for name, meaning in kind.examples:
            try:
                s = parse_scheme(name)
            except MissingExtra as e:  # a kind whose library is not installed: its install command instead
                t.add_row(name, "not installed", f"{meaning} ({e.hint})")
                continue
            t.add_row(name, f"{s.storage_bits((2048, 2048), 32) / 2048**2:.3f}", meaning)
    out.print(t)


@app.command("scores")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option("--scheme", default="w4g128", show_default=True, help="Scheme whose quantization error is scored.")
@click.option("--granularity", default="layer", show_default=True, help="tensor, component or layer.")
@click.option("--scores", "names", help="Comma-separated scores (default: all that the options allow; see the README).")
@click.option("--seed", type=_SEED, default=0, show_default=True, help="Seed of the random baseline and the intervals.")
@click.option("--langs", callback=_nonempty_list, help="Languages of the per-language scores (their documents).")
@click.option("--split", default="select", show_default=True, help="Split of the per-language scores' documents.")
@click.option("--max-tokens", type=click.IntRange(min=0), default=512, show_default=True, help="Tokens per language.")
@click.option("--from-locate", "from_locate", type=click.Path(path_type=Path), help="A locate.json: measured scores.")
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/scores-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing scores.json in --out.")
def scores_cmd(
    model, scheme, granularity, names, seed, langs, split, max_tokens, from_locate, out_dir, overwrite
) -> None:
    """Sensitivity scores per unit: weight-only, per language (--langs) and measured (--from-locate), with
    how well each predicts the measured effect: scores.json, scores.md."""
    from .protect.command import run_scores_command

    result, markdown = run_scores_command(
        model=model,
        scheme=scheme,
        granularity=granularity,
        names=list(_csv(names)),
        seed=seed,
        langs=_csv(langs),
        split=split,
        max_tokens=max_tokens,
        from_locate=from_locate,
        log=lambda m: err.print(m, markup=False),
    )
    from ._io import OutputDir

    with OutputDir(out_dir or _default_out("scores"), "scores.json", overwrite) as staged:
        staged.write_text("scores.md", markdown)
        staged.write_text("scores.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    out.print(markdown, markup=False)


@app.command("search")
@click.option("--model", help="Bundled alias, HF id, model dir or .gguf file (default gemma-3-270m).")
@click.option(
    "--budget-bits", type=float, help="Effective bits per weight of the quantized universe, all costs counted."
)
@click.option("--budget-params", type=click.IntRange(min=1), help="Parameters that may be protected.")
@click.option("--frontier", help="Several bit budgets, e.g. 3.5,4.25,5 (a Pareto frontier; instead of --budget-bits).")
@click.option("--objective", default="worst", show_default=True, help="worst, mean or disparity (of relative Δbpb).")
@click.option("--target", type=float, help="Objective to reach (relative Δbpb, e.g. 0.05); if out of reach, said so.")
@click.option("--scheme", help="Base scheme of the universe (default w3g128).")
@click.option("--protect", help="keep (reference precision, default) or a higher-precision scheme, e.g. w8g128.")
@click.option("--granularity", help="Units: layer (default), component or layer×component.")
@click.option("--uniform", help="Uniform schemes evaluated beside (default w3g128,w4g128,w8g128).")
@click.option("--refine", type=click.IntRange(min=1), help="Candidate plans measured per budget (default 6).")
@click.option("--langs", callback=_nonempty_list, help="Comma-separated languages (default: the 12-language panel).")
@click.option("--corpus", help="udhr (bundled), a .jsonl file, a txt dir or a FLORES-style dir.")
@click.option("--max-tokens", type=int, help="Selection tokens per language (default 512; 0 = all).")
@click.option("--heldout-max-tokens", type=int, help="Held-out tokens per language (default 1024; 0 = all).")
@click.option("--seed", type=_SEED)
@click.option("--n-boot", type=_n_boot_range())
@click.option("--out", "out_dir", callback=_out_path, help="Output directory (default runs/search-<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing search.json in --out.")
@click.option("--device")
@click.option("--dtype")
def search_cmd(
    model,
    budget_bits,
    budget_params,
    frontier,
    objective,
    target,
    scheme,
    protect,
    granularity,
    uniform,
    refine,
    langs,
    corpus,
    max_tokens,
    heldout_max_tokens,
    seed,
    n_boot,
    out_dir,
    overwrite,
    device,
    dtype,
) -> None:
    """The plan that protects what matters most for an objective over languages, within a budget (or a frontier of
    budgets), chosen on selection documents and evaluated on held-out ones: search.json, search.md, pareto.png,
    and each plan as TOML."""
    from ._io import OutputDir
    from .protect.search import SearchConfig, run_search, validate
    from .report import plots
    from .report.search import pareto_figure, search_markdown

    try:
        budgets = tuple(float(x) for x in _csv(frontier))
    except ValueError:
        raise UserError(f"--frontier {frontier!r}: expected numbers, e.g. 3.5,4.25,5") from None
    if frontier is not None and not budgets:
        raise UserError("--frontier is empty", "give bit budgets, e.g. 3.5,4.25,5")
    values = {
        "model": model,
        "budget_bits": budget_bits,
        "budget_params": budget_params,
        "frontier": budgets or None,
        "objective": objective,
        "target": target,
        "scheme": scheme,
        "protect": protect,
        "granularity": granularity,
        "uniform": _csv(uniform) or None,
        "refine": refine,
        "langs": _csv(langs) or None,
        "corpus": corpus,
        "max_tokens": max_tokens,
        "heldout_max_tokens": heldout_max_tokens,
        "seed": seed,
        "n_boot": n_boot,
        "device": device,
        "dtype": dtype,
    }
    cfg = SearchConfig(**{k: v for k, v in values.items() if v is not None})
    validate(cfg)
    with OutputDir(out_dir or _default_out("search"), "search.json", overwrite) as staged:
        data = _run_with_progress(lambda log, prog: run_search(cfg, log=log, progress=None), "searching")
        for i, p in enumerate(data["points"]):
            name = "plan.toml" if len(data["points"]) == 1 else f"plan-{i + 1}.toml"
            staged.write_text(name, p["plan_toml"])
            p["plan_file"] = name
        plots.save(pareto_figure(data), staged.path("pareto.png"))
        md = search_markdown(data)
        staged.write_text("search.md", md)
        staged.write_text("search.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    out.print(md, markup=False)
    out.print(f"wrote {staged.target / 'search.json'}, search.md, pareto.png and the plan TOML")


@app.command("export")
@click.argument("plan")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Bundled alias, HF id, model dir or .gguf.")
@click.option("--to", "target", required=True, help="llmcompressor, gptqmodel, transformers, torchao or llamacpp.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), help="Write to this new file (default: stdout).")
def export_cmd(plan, model, target, out_file) -> None:
    """Write PLAN (compact or .toml) as the configuration of another quantizer, for this model's modules."""
    from .export import TARGETS, export, resolve_export
    from .models import load_model
    from .models.modules import build_module_map
    from .quant.plan import load_plan

    entry = TARGETS.get(target)  # an unknown target is an error before anything loads
    parsed = load_plan(plan)
    if out_file is not None and (out_file.exists() or out_file.is_dir()):
        raise UserError(f"--out {out_file} already exists", "choose a new file name")
    lm = load_model(model, log=lambda m: err.print(m))
    text = export(resolve_export(parsed, lm.model, build_module_map(lm.model)), entry)
    if out_file is None:
        click.echo(text, nl=False)
    else:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {out_file}", markup=False)


class Interrupted(Exception):
    """Ctrl-C, with the one line to print about what was kept (that depends on the command)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s stop), raised where the program is so that it unwinds as from Ctrl-C:
    locks released, staging directories removed, what was committed kept; the exit status is then 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _interrupt_status() -> int:
    """128 + the signal that stopped the command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    seen: set[int] = set()
    e = sys.exc_info()[1]
    while e is not None and id(e) not in seen:  # Interrupted is raised from the KeyboardInterrupt it replaces
        if isinstance(e, Terminated):
            return 143
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return 130


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        click.echo(app.get_help(click.Context(app, info_name="quant-disparity")))
        return
    _install_warning_handler()
    if argv is None:  # the console script (not a call from Python, whose own handlers stay as they are)
        import signal

        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app.main(args=args, prog_name="quant-disparity", standalone_mode=False)
    except UserError as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(2)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "quant-disparity"
        err.print(f"error: {e.format_message()} (see `{where} --help`)", markup=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Interrupted as e:
        err.print(str(e), markup=False, soft_wrap=True)
        sys.exit(_interrupt_status())
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted; nothing was written", markup=False)
        sys.exit(_interrupt_status())


if __name__ == "__main__":
    main()
