"""Versioned, frozen configurations that round-trip through dict and TOML.

A config is composed of shared parts (which documents: :class:`CorpusSelection`; which model where:
:class:`ModelRuntime`) and settings of its own; its keys, in Python, dicts and TOML, stay flat.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import tomli_w

from .corpus.selection import CorpusSelection
from .errors import UserError, did_you_mean
from .evaluate.batching import EvalSettings
from .models.bundled import DEFAULT_MODEL
from .quant.calibration import DEFAULT_TOKENS as DEFAULT_CALIBRATION_TOKENS
from .quant.calibration import Calibration

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
        raise UserError(
            f"{where}: {name} must be a list of strings, got {shown(value)}", f'e.g. {name} = ["eng", "heb"]'
        )
    if tp in _KIND:
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise UserError(f"{where}: {name} must be {_KIND[tp]}, got {shown(value)}")
    return value


def check_n_boot(n_boot: int, name: str = "n_boot") -> None:
    if not N_BOOT_MIN <= n_boot <= N_BOOT_MAX:
        raise UserError(
            f"{name} must be in {N_BOOT_MIN}..{N_BOOT_MAX} (bootstrap replicates), got {n_boot}",
            "1000 is the default; fewer than 50 cannot give a 95% interval",
        )


def check_eval(ev: EvalSettings, name: str = "vocab_chunk") -> None:
    """What EvalSettings itself leaves open: a vocabulary slice of at least one word."""
    if ev.vocab_chunk < 1:
        raise UserError(f"{name} must be at least 1, got {ev.vocab_chunk}", "4096 is the default")


@dataclass(frozen=True)
class ModelRuntime:
    """Which model runs, on which device, in which dtype."""

    model: str = DEFAULT_MODEL
    device: str = "cpu"
    dtype: str = "float32"


class FlatConfig:
    """A frozen config composed of parts (a :class:`CorpusSelection`, a :class:`ModelRuntime`) whose surface is
    flat: keyword arguments, attributes, dicts and TOML name every setting by one key (``max_tokens = 512``, not
    ``selection.max_tokens``), in the order of :attr:`KEYS`.

    Subclasses are ``@dataclass(frozen=True, init=False)`` with ``__post_init__`` checks, and set :attr:`KEYS`:
    each flat key mapped to ``(part field, attribute of the part)``, or to ``None`` for a field of its own.
    """

    KEYS: ClassVar[dict[str, tuple[str, str] | None]]
    NAME: ClassVar[str]  # how errors name the config, e.g. "audit config"
    if TYPE_CHECKING:  # set by @dataclass on each subclass
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init__(self, **values: Any):
        for f in fields(self):
            object.__setattr__(
                self,
                f.name,
                f.default if f.default is not dataclasses.MISSING else cast(Callable[[], Any], f.default_factory)(),
            )
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key not in self.KEYS:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {key!r}")
            where = self.KEYS[key]
            if where is None:
                object.__setattr__(self, key, value)
            else:
                changes.setdefault(where[0], {})[where[1]] = value
        for part, attrs in changes.items():
            object.__setattr__(self, part, dataclasses.replace(getattr(self, part), **attrs))
        self.__post_init__()

    def __post_init__(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields: the parts' flat keys
        where = type(self).KEYS.get(name)
        if where is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, where[0]), where[1])

    @classmethod
    def key_types(cls) -> dict[str, Any]:
        """Flat key -> its type (as declared on the config or on its part)."""
        own = typing.get_type_hints(cls)
        parts = {name: typing.get_type_hints(own[name]) for name in {w[0] for w in cls.KEYS.values() if w}}
        return {key: own[key] if where is None else parts[where[0]][where[1]] for key, where in cls.KEYS.items()}

    def to_dict(self) -> dict:
        return {key: plain(getattr(self, key)) for key in self.KEYS}

    @classmethod
    def from_dict(cls, data: dict):
        return from_dict(cls, data, cls.NAME)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{cls.NAME} is not valid TOML ({e})") from None
        except RecursionError:
            raise UserError(f"{cls.NAME}: TOML nested too deeply") from None
        return cls.from_dict(data)


def plain(value: Any) -> Any:
    """A config value as dict/list/scalars (dataclasses become dicts, tuples lists)."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [plain(x) for x in value]
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str, prefix: str = "") -> C:
    """``cls`` (a :class:`FlatConfig` or a plain dataclass such as EvalSettings) from a dict of its keys, every
    value checked against its type; a one-line :class:`UserError` naming the key otherwise."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a table, got {shown(data)}")
    types = cls.key_types() if issubclass(cls, FlatConfig) else typing.get_type_hints(cls)
    unknown = [k for k in data if k not in types]
    if unknown:
        k = unknown[0]
        loc = f"{where}.{prefix.rstrip('.')}" if prefix else where
        raise UserError(f"{loc}: unknown field {k!r}{did_you_mean(k, types)}", f"known: {', '.join(types)}")
    kwargs = {}
    for k, v in data.items():
        if types[k] is EvalSettings:
            if not isinstance(v, EvalSettings):
                if not isinstance(v, dict):
                    raise UserError(
                        f"{where}: {prefix}{k} must be a table, got {shown(v)}", "e.g. [eval] window = 1024"
                    )
                v = from_dict(EvalSettings, v, where, f"{prefix}{k}.")
        else:
            v = check_value(v, types[k], prefix + k, where)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


def check_common(config: FlatConfig) -> None:
    """The checks an audit config and a locate config share (a spec checks its tables itself, by line)."""
    bad = [x for x in config.include if x not in INCLUDE_CHOICES]
    if bad:
        raise UserError(f"unknown --include value {bad[0]!r}", f"use {', '.join(INCLUDE_CHOICES)}")
    if config.selection.max_tokens < 0:
        raise UserError(f"--max-tokens must be >= 0 (0 = no cap), got {config.selection.max_tokens}")
    if config.selection.min_docs < 1:
        raise UserError(f"--min-docs must be >= 1, got {config.selection.min_docs}")
    check_n_boot(config.n_boot)
    check_eval(config.eval, "eval.vocab_chunk")
    if config.seed < 0:
        raise UserError(f"seed must be >= 0, got {config.seed}")


def check_langs(selection: CorpusSelection) -> None:
    if not selection.langs:
        raise UserError("no languages given", "pass --langs eng,heb,... or leave it out for the default panel")


@dataclass(frozen=True, init=False)
class AuditConfig(FlatConfig):
    """Everything that defines an audit. ``max_tokens = 0`` means every selected document."""

    runtime: ModelRuntime = ModelRuntime()
    selection: CorpusSelection = CorpusSelection()
    scheme: str = "w4g128"
    plan: str = ""  # a plan (compact string or .toml path); when given it replaces scheme + include
    include: tuple[str, ...] = ()  # also quantize: "embeddings", "lm_head"
    seed: int = 0
    n_boot: int = 1000
    lr_max_class: int = 3  # Joshi class <= this is "low-resource"
    #: a pre-quantized artifact of ``model`` (GGUF file or checkpoint directory); when given, its tensors are the
    #: quantized arm and it replaces scheme, plan and include
    quantized: str = ""
    resource_measure: str = "joshi_class"
    eval: EvalSettings = field(default_factory=EvalSettings)
    version: int = 1
    #: calibration data for calibrated schemes (gptq:..., awq:...): quant.calibration's spec ("" none)
    calibration: str = ""
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    calibration_seed: int = 0

    NAME = "audit config"
    KEYS = {
        "model": ("runtime", "model"),
        "scheme": None,
        "plan": None,
        "quantized": None,
        "langs": ("selection", "langs"),
        "corpus": ("selection", "name"),
        "split": ("selection", "split"),
        "max_tokens": ("selection", "max_tokens"),
        "min_docs": ("selection", "min_docs"),
        "include": None,
        "seed": None,
        "n_boot": None,
        "lr_max_class": None,
        "resource_measure": None,
        "flores_split": ("selection", "flores_split"),
        "sentences_per_doc": ("selection", "sentences_per_doc"),
        "device": ("runtime", "device"),
        "dtype": ("runtime", "dtype"),
        "eval": None,
        "version": None,
        "calibration": None,
        "calibration_tokens": None,
        "calibration_seed": None,
    }

    def __post_init__(self):
        check_common(self)
        self.calibration_spec  # checks the spec
        if self.lr_max_class not in JOSHI_CLASSES:
            raise UserError(f"lr_max_class must be a Joshi class (0-5), got {self.lr_max_class}")
        check_langs(self.selection)
        if self.quantized and (self.plan or self.include):
            raise UserError(
                f"--quantized does not combine with --{'plan' if self.plan else 'include'}",
                "the artifact's tensors are the quantized arm",
            )

    def to_dict(self) -> dict:
        """Every key, ``quantized`` only when set (configs and results written before it keep their shape)."""
        data = super().to_dict()
        if not self.quantized:
            del data["quantized"]
        return data

    @property
    def calibration_spec(self) -> Calibration:
        return Calibration(self.calibration, self.calibration_tokens, self.calibration_seed)


INCLUDE_CHOICES = ("embeddings", "lm_head")
