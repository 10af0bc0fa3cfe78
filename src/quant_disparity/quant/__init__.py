"""Weight quantization: pure tensor math (:mod:`.rtn`), scheme kinds (:mod:`.backends`), the scheme registry
(:mod:`.schemes`), and the in-place apply engine."""

from .engine import Manifest, QuantEngine, cost, engine_for
from .schemes import GGUF_TYPES, NONE, SCHEMES, Scheme, SchemeKind, parse_scheme

__all__ = [
    "GGUF_TYPES",
    "NONE",
    "SCHEMES",
    "Manifest",
    "QuantEngine",
    "Scheme",
    "SchemeKind",
    "cost",
    "engine_for",
    "parse_scheme",
]
