"""Calibration data and the statistics calibrated schemes (GPTQ, AWQ) quantize with.

**The spec** (``--calibration``): ``eng`` (one corpus language), ``mix:eng,heb,arb`` (an equal share of each),
``target`` (the evaluated language: each evaluated language gets its own quantized model) or a file
(``file:PATH`` or a path ending in ``.jsonl`` / ``.txt``: JSON lines with a ``text`` field, or plain text with
documents separated by blank lines). ``tokens`` is the budget of the whole calibration set, in tokens of the
model's tokenizer, taken as whole documents (a mix gives each language ``tokens // k``); ``seed`` shuffles the
order in which documents are taken.

**No overlap with what is evaluated.** Corpus calibration documents come from the ``select`` split only, and
a calibration set is refused when any of its documents shares an id with an evaluated document (in any
language: UDHR ids are aligned articles, so a translation of an evaluated article is leakage too) or has the
same text (whitespace-normalized) as one. A file's paragraph equal to an evaluated document is refused the
same way (not silently dropped), so what is recorded is what was used.

**The statistics** (:func:`collect_statistics`): forward hooks on the input of each quantizable linear layer
of the full-precision model, run over the calibration documents in the evaluation's windows and batches
(padding excluded). Per input site (tensors reading the same input, such as q/k/v, share one entry): the
Hessian ``H = Σ x xᵀ`` accumulated in float64 (GPTQ), the per-channel ``Σ |x|`` (AWQ's activation scale) and a
bounded, seeded subsample of input rows (AWQ's output-error objective). Inputs always come from the
full-precision model (non-sequential); GPTQ's reference code feeds each layer the output of the already
quantized earlier ones instead, which this module does not do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..corpus.documents import Corpus, Document, filter_split, take_until_tokens
from ..errors import UserError
from .site_stats import SiteStats

if TYPE_CHECKING:  # torch is imported where statistics are collected: the spec's checks need none
    import torch

    from .backends.base import Scheme
    from .plan import Plan

#: Default calibration budget, tokens of the whole set (the bundled UDHR's select split holds a few thousand
#: tokens per language; real GPTQ calibration sets hold ~10^5).
DEFAULT_TOKENS = 4096
#: Input rows kept per site for AWQ's output-error objective.
DEFAULT_MAX_ROWS = 2048
FILE_LANG = "file"
_SYNTAX = "eng, mix:eng,heb,arb, target, or a file (file:PATH, *.jsonl, *.txt)"


@dataclass(frozen=True)
class Calibration:
    """What to calibrate on. ``source`` empty: no calibration."""

    source: str = ""
    tokens: int = DEFAULT_TOKENS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source:
            parse_source(self.source)
        if self.tokens < 1:
            raise UserError(f"calibration tokens must be >= 1, got {self.tokens}", f"e.g. {DEFAULT_TOKENS}")
        if self.seed < 0:
            raise UserError(f"calibration seed must be >= 0, got {self.seed}")

    def __bool__(self) -> bool:
        return bool(self.source)

    @property
    def is_target(self) -> bool:
        return parse_source(self.source)[0] == "target" if self.source else False

    @property
    def name(self) -> str:
        """The spec as one string (trial keys, cache keys): ``eng@4096s0``."""
        return f"{self.source}@{self.tokens}s{self.seed}" if self.source else ""

    def to_dict(self) -> dict:
        return {"source": self.source, "tokens": self.tokens, "seed": self.seed}


def parse_source(text: str) -> tuple[str, tuple[str, ...]]:
    """``("langs", (l1, ...))``, ``("target", ())`` or ``("file", (path,))``; one-line UserError otherwise."""
    raw = text.strip()
    if not raw:
        raise UserError("--calibration is empty", f"write {_SYNTAX}")
    if raw.lower() == "target":
        return "target", ()
    if raw.startswith("file:") or raw.lower().endswith((".jsonl", ".txt")):
        return "file", (raw.removeprefix("file:"),)
    langs = raw[4:] if raw.lower().startswith("mix:") else raw
    parts = tuple(x.strip() for x in langs.split(","))
    if not all(parts) or any(c in p for p in parts for c in " :;/\\"):
        raise UserError(f"--calibration {text!r} is not a calibration spec", f"write {_SYNTAX}")
    if "," in langs and not raw.lower().startswith("mix:"):
        raise UserError(f"--calibration {text!r}: several languages are a mix", f"write mix:{langs}")
    return "langs", parts


@dataclass
class CalibrationSet:
    """The calibration documents chosen, their tokens, and where they came from."""

    calibration: Calibration
    target: str | None  # the evaluated language, for ``target``
    docs: list[Document]
    tokens: list[list[int]]

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for d, t in zip(self.docs, self.tokens):
            h.update(f"{d.lang}/{d.id}\0".encode())
            h.update(np.asarray(t, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    @property
    def key(self) -> str:
        """``cal-<digest>`` of the spec, the target and the documents' tokens: what a bound scheme names."""
        text = f"{self.calibration.name}|{self.target or ''}|{self.digest}"
        return "cal-" + hashlib.sha256(text.encode()).hexdigest()[:12]

    def record(self) -> dict:
        """What results store about the calibration: spec, documents, token count, digest."""
        return {
            **self.calibration.to_dict(),
            **({"target": self.target} if self.target else {}),
            "split": "select" if parse_source(self.calibration.source)[0] != "file" else None,
            "documents": [f"{d.lang}/{d.id}" for d in self.docs],
            "n_tokens": self.n_tokens,
            "digest": self.digest,
            "key": self.key,
            "inputs": "full-precision model (non-sequential)",
        }


def read_calibration_file(path: Path) -> list[Document]:
    """Documents of a calibration file: JSON lines (``text`` field, or a bare JSON string) or plain text with
    documents separated by blank lines."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"calibration file {path} not found", f"write {_SYNTAX}") from None
    except IsADirectoryError:
        raise UserError(f"calibration file {path} is a directory", "name a .jsonl or .txt file") from None
    except UnicodeDecodeError:
        raise UserError(f"calibration file {path} is not UTF-8 text", "save it as UTF-8") from None
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"calibration file {path} line {n}: not JSON ({e.msg})") from None
            text = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise UserError(f"calibration file {path} line {n}: no string 'text' field")
            texts.append(text)
    else:
        texts = [p for p in (part.strip() for part in raw.replace("\r\n", "\n").split("\n\n"))]
    docs = [Document(FILE_LANG, f"{path.name}#{i}", t) for i, t in enumerate(texts, 1) if t.strip()]
    if not docs:
        raise UserError(f"calibration file {path} holds no text", "give at least one non-empty document")
    return docs


def _norm(text: str) -> str:
    return " ".join(text.split())


def check_no_overlap(calibration: Sequence[Document], evaluated: Sequence[Document]) -> None:
    """Refuse a calibration document that is an evaluated one: the same id (corpus documents, any language) or
    the same whitespace-normalized text."""
    ids = {d.id: d for d in evaluated}
    texts = {_norm(d.text): d for d in evaluated}
    for c in calibration:
        hit = ids.get(c.id) if c.lang != FILE_LANG else None
        hit = hit or texts.get(_norm(c.text))
        if hit is not None:
            raise UserError(
                f"calibration document {c.lang}/{c.id} overlaps the evaluated document {hit.lang}/{hit.id}",
                "evaluate on --split heldout (calibration draws on the select split) or remove it from the file",
            )


def choose_documents(
    calibration: Calibration,
    corpus: Corpus,
    count_tokens: Callable[[Sequence[Document]], list[list[int]]],
    evaluated: Sequence[Document],
    target: str | None = None,
) -> CalibrationSet:
    """The calibration set for ``calibration`` (``target``: the evaluated language, for ``target`` specs).

    ``count_tokens`` tokenizes documents (the model's tokenizer). Raises :class:`UserError` for a language
    absent from the corpus, one without select-split documents, an empty file, or any overlap with
    ``evaluated``."""
    kind, args = parse_source(calibration.source)
    rng = np.random.default_rng(calibration.seed)
    if kind == "file":
        pool = read_calibration_file(Path(args[0]))
        docs = [pool[i] for i in rng.permutation(len(pool))]
        toks = count_tokens(docs)
        counts = {d.id: len(t) for d, t in zip(docs, toks)}
        chosen = take_until_tokens(docs, calibration.tokens, lambda d: counts[d.id])
        tokens = toks[: len(chosen)]
    else:
        if kind == "target":
            if target is None:
                raise UserError("--calibration target needs an evaluated language", "name the language instead")
            langs = [target]
        else:
            langs = []
            for lang in args:
                try:
                    langs.append(corpus.resolve(lang))
                except UserError as e:
                    raise UserError(f"calibration language {lang!r}: {e.message}", e.hint) from None
            langs = list(dict.fromkeys(langs))
        share = max(1, calibration.tokens // len(langs))
        chosen, tokens = [], []
        for lang in langs:
            pool = filter_split(corpus.documents(lang), "select")
            if not pool:
                raise UserError(f"calibration language {lang} has no documents in the select split")
            pool = [pool[i] for i in rng.permutation(len(pool))]
            toks = count_tokens(pool)
            counts = {d.id: len(t) for d, t in zip(pool, toks)}
            took = take_until_tokens(pool, share, lambda d: counts[d.id])
            chosen.extend(took)
            tokens.extend(toks[: len(took)])
    check_no_overlap(chosen, evaluated)
    return CalibrationSet(calibration=calibration, target=target, docs=list(chosen), tokens=list(tokens))


# -- statistics ------------------------------------------------------------------------------------


@dataclass
class CalibrationStats:
    """Per quantizable parameter name, its input site's statistics; ``key`` names the calibration set."""

    key: str
    sites: dict[str, SiteStats] = field(default_factory=dict)  # parameter name -> its (shared) site
    shared: dict[str, list[str]] = field(default_factory=dict)  # site label -> the parameter names reading it

    def for_param(self, name: str) -> SiteStats | None:
        return self.sites.get(name)


def collect_statistics(
    model: torch.nn.Module,
    param_names: Sequence[str],
    cal: CalibrationSet,
    prefix: int | None,
    *,
    max_length: int | None = None,
    window: int = 1024,
    batch_tokens: int = 2048,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> CalibrationStats:
    """Run ``model`` (full precision) over ``cal``'s documents (windows of ``window`` tokens, or the model's
    ``max_length`` when shorter, with no context carried over; the subsample drawn with the calibration's seed) and gather :class:`SiteStats` for each linear
    layer whose weight is in ``param_names`` (other parameters are ignored). Memory: one ``[in, in]`` float64
    matrix and ``max_rows`` rows per site, whatever the calibration size."""
    import torch

    from ..evaluate.forward import pack_batch
    from ..evaluate.windows import batch_windows, make_windows

    wanted = {n.removesuffix(".weight"): n for n in param_names if n.endswith(".weight")}
    modules = {mod: model.get_submodule(mod) for mod in wanted}
    modules = {m: mod for m, mod in modules.items() if isinstance(mod, torch.nn.Linear) or hasattr(mod, "nf")}
    seed = cal.calibration.seed
    window = min(window, max_length or window)
    windows = []
    for i, toks in enumerate(cal.tokens):
        windows.extend(make_windows(i, toks, prefix, window, 0))
    batches = batch_windows(windows, batch_tokens)
    total = sum(len(w.input_ids) for w in windows)
    # the subsample: max_rows positions of the whole stream, chosen once (seeded), in stream order
    pick = np.sort(np.random.default_rng(seed).permutation(total)[: min(max_rows, total)])
    device = next(model.parameters()).device
    state: dict = {"mask": None, "offset": 0, "pick": None}
    site_of: dict[str, str] = {}  # module -> site label (the first module seen reading that input)
    sites: dict[str, SiteStats] = {}
    # (input data pointer, shape) -> (site, the input): sites are found on the first batch, whose inputs are held
    # until it ends so that no freed input's memory is reused by another input (which would look shared)
    seen: dict[tuple[int, tuple[int, ...]], tuple[str, torch.Tensor]] = {}

    def hook(name: str):
        def fn(module: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in site_of:
                key = (x.data_ptr(), tuple(x.shape))
                site_of[name] = seen[key][0] if key in seen else name
                seen.setdefault(key, (site_of[name], x))
            site = site_of[name]
            if site != name:
                return  # another module already counted this input
            rows = x.reshape(-1, x.shape[-1])[state["mask"]].double()
            st = sites.get(site)
            if st is None:
                d = rows.shape[1]
                st = sites[site] = SiteStats(
                    xtx=torch.zeros(d, d, dtype=torch.float64, device=rows.device),
                    abs_sum=torch.zeros(d, dtype=torch.float64, device=rows.device),
                    rows=torch.zeros(0, d),
                    n=0,
                )
            st.xtx.addmm_(rows.t(), rows)
            st.abs_sum += rows.abs().sum(0)
            st.n += rows.shape[0]
            if state["pick"].numel():
                st.rows = torch.cat([st.rows, rows[state["pick"]].float().cpu()])

        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.inference_mode():
            for batch in batches:
                ids, mask, _, _, _ = pack_batch(batch, device)
                flat = mask.reshape(-1).bool()
                n = int(flat.sum())
                lo = state["offset"]
                sel = pick[(pick >= lo) & (pick < lo + n)] - lo
                state.update(mask=flat, offset=lo + n, pick=torch.as_tensor(sel, dtype=torch.long, device=device))
                model(input_ids=ids, attention_mask=mask, use_cache=False)
                seen.clear()
    finally:
        for h in handles:
            h.remove()
    out = CalibrationStats(key=cal.key)
    for mod, pname in wanted.items():
        if mod in site_of:
            out.sites[pname] = sites[site_of[mod]]
            out.shared.setdefault(site_of[mod], []).append(pname)
    return out


def bind_calibration(assignment: Mapping[str, Scheme], key: str) -> dict[str, Scheme]:
    """``assignment`` with every calibrated scheme bound to the calibration ``key`` (others unchanged)."""
    return {n: dataclasses.replace(s, calibration=key) if s.needs_calibration else s for n, s in assignment.items()}


def plan_needs_calibration(plan: Plan) -> bool:
    """Whether any scheme a plan names is calibrated (GPTQ, AWQ)."""
    from .schemes import parse_scheme

    needs = False
    for rule in plan.rules:
        try:
            needs = needs or parse_scheme(rule.action).needs_calibration
        except UserError:  # keep, zero: not a scheme
            pass
    return needs


def check_calibration_use(needs: bool, calibration: Calibration, what: str) -> None:
    """A calibrated scheme without calibration, or a calibration for schemes that use none: one-line UserError
    (a calibration that changes nothing is refused rather than recorded)."""
    if needs and not calibration:
        raise UserError(f"{what} needs calibration data", "pass --calibration eng (or mix:eng,heb, target, a file)")
    if calibration and not needs:
        raise UserError(
            f"--calibration {calibration.source!r} has no effect on {what}",
            "leave --calibration out, or use a calibrated scheme (gptq:..., awq:...)",
        )


def check_calibration_source(calibration: Calibration, corpus: Corpus, split: str) -> None:
    """What can be checked before a model is loaded: the languages are in the corpus with select-split
    documents, the evaluated ``split`` holds none of them, the file exists and holds text."""
    if not calibration:
        return
    kind, args = parse_source(calibration.source)
    if kind == "file":
        read_calibration_file(Path(args[0]))
        return
    if split != "heldout":
        raise UserError(
            f"calibration documents (select split) overlap the evaluated documents (split {split!r})",
            "evaluate on --split heldout",
        )
    for lang in args:
        try:
            key = corpus.resolve(lang)
        except UserError as e:
            raise UserError(f"calibration language {lang!r}: {e.message}", e.hint) from None
        if not filter_split(corpus.documents(key), "select"):
            raise UserError(f"calibration language {key} has no documents in the select split")
