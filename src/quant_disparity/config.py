"""Versioned, frozen configurations that round-trip through dict and TOML."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import tomli_w

from .corpus import DEFAULT_PANEL
from .errors import UserError, did_you_mean
from .evaluate.runner import EvalSettings
from .models.bundled import DEFAULT_MODEL

C = TypeVar("C")


def _from_dict(cls: type[C], data: dict[str, Any], where: str) -> C:
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        k = unknown[0]
        raise UserError(f"{where}: unknown field {k!r}{did_you_mean(k, known)}", f"known: {', '.join(known)}")
    kwargs = {}
    for k, v in data.items():
        if k == "eval" and isinstance(v, dict):
            v = _from_dict(EvalSettings, v, f"{where}.eval")
        elif isinstance(v, list):
            v = tuple(v)
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
        if self.n_boot < 0:
            raise UserError(f"--n-boot must be >= 0, got {self.n_boot}")
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
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"audit config is not valid TOML ({e})") from None


INCLUDE_CHOICES = ("embeddings", "lm_head")
