"""Versioned, frozen configurations that round-trip through dict and TOML."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import tomli_w

from .corpus import DEFAULT_PANEL
from .errors import UserError, did_you_mean
from .evaluate.runner import EvalSettings
from .models.bundled import DEFAULT_MODEL

C = TypeVar("C")

#: Bootstrap replicates: at least 50, so that each 2.5 % tail of a 95 % percentile interval holds at least one
#: replicate (below 40 the ends are interpolated between the most extreme replicates; with 1 the "interval" is a
#: single replicate, which the point estimate usually lies outside); at most 100,000 (the resampling weights are
#: an [n_boot x documents] array: 0.8 GB for 1,000 documents). The test suite's 50 is the minimum.
N_BOOT_MIN, N_BOOT_MAX = 50, 100_000
#: Joshi et al. (2020) resource classes.
JOSHI_CLASSES = range(0, 6)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for quoting a bad value in a one-line error)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_KIND = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def check_value(value: Any, tp: Any, name: str, where: str) -> Any:
    """``value`` as field type ``tp`` (str, int, float, bool, tuple[str, ...]); else a one-line UserError."""
    if typing.get_origin(tp) is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
            return tuple(value)
        raise UserError(f"{where}: {name} must be a list of strings, got {shown(value)}",
                        f'e.g. {name} = ["eng", "heb"]')
    if tp in _KIND:
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise UserError(f"{where}: {name} must be {_KIND[tp]}, got {shown(value)}")
    return value


def check_n_boot(n_boot: int, name: str = "n_boot") -> None:
    if not N_BOOT_MIN <= n_boot <= N_BOOT_MAX:
        raise UserError(f"{name} must be in {N_BOOT_MIN}..{N_BOOT_MAX} (bootstrap replicates), got {n_boot}",
                        "1000 is the default; fewer than 50 cannot give a 95% interval")


def check_eval(ev: EvalSettings, name: str = "vocab_chunk") -> None:
    """What EvalSettings itself leaves open: a vocabulary slice of at least one word."""
    if ev.vocab_chunk < 1:
        raise UserError(f"{name} must be at least 1, got {ev.vocab_chunk}", "4096 is the default")


def _from_dict(cls: type[C], data: dict[str, Any], where: str, prefix: str = "") -> C:
    if not isinstance(data, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a table, got {shown(data)}")
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        k = unknown[0]
        loc = f"{where}.{prefix.rstrip('.')}" if prefix else where
        raise UserError(f"{loc}: unknown field {k!r}{did_you_mean(k, known)}", f"known: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if hints[k] is EvalSettings:
            if not isinstance(v, EvalSettings):
                if not isinstance(v, dict):
                    raise UserError(f"{where}: {prefix}{k} must be a table, got {shown(v)}",
                                    "e.g. [eval] window = 1024")
                v = _from_dict(EvalSettings, v, where, f"{prefix}{k}.")
        else:
            v = check_value(v, hints[k], prefix + k, where)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


def to_dict(cfg) -> dict:
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


@dataclass(frozen=True)
class AuditConfig:
    """Everything that defines an audit. ``max_tokens = 0`` means every selected document."""

    model: str = DEFAULT_MODEL
    scheme: str = "w4g128"
    plan: str = ""  # a plan (compact string or .toml path); when given it replaces scheme + include
    langs: tuple[str, ...] = DEFAULT_PANEL
    corpus: str = "udhr"
    split: str = "all"
    max_tokens: int = 2048
    min_docs: int = 1  # at least this many documents per language, past max_tokens if need be
    include: tuple[str, ...] = ()  # also quantize: "embeddings", "lm_head"
    seed: int = 0
    n_boot: int = 1000
    lr_max_class: int = 3  # Joshi class <= this is "low-resource"
    resource_measure: str = "joshi_class"
    flores_split: str = "devtest"
    sentences_per_doc: int = 10
    device: str = "cpu"
    dtype: str = "float32"
    eval: EvalSettings = field(default_factory=EvalSettings)
    version: int = 1

    def __post_init__(self):
        bad = [x for x in self.include if x not in INCLUDE_CHOICES]
        if bad:
            raise UserError(f"unknown --include value {bad[0]!r}", f"use {', '.join(INCLUDE_CHOICES)}")
        if self.max_tokens < 0:
            raise UserError(f"--max-tokens must be >= 0 (0 = no cap), got {self.max_tokens}")
        if self.min_docs < 1:
            raise UserError(f"--min-docs must be >= 1, got {self.min_docs}")
        check_n_boot(self.n_boot)
        check_eval(self.eval, "eval.vocab_chunk")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")
        if self.lr_max_class not in JOSHI_CLASSES:
            raise UserError(f"lr_max_class must be a Joshi class (0-5), got {self.lr_max_class}")
        if not self.langs:
            raise UserError("no languages given", "pass --langs eng,heb,... or leave it out for the default panel")

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AuditConfig:
        return _from_dict(cls, data, "audit config")

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> AuditConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"audit config is not valid TOML ({e})") from None
        except RecursionError:
            raise UserError("audit config: TOML nested too deeply") from None
        return cls.from_dict(data)


INCLUDE_CHOICES = ("embeddings", "lm_head")
