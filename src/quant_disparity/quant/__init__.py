"""Weight quantization: pure tensor math (:mod:`.rtn`), schemes, and the in-place apply engine."""

from .engine import Manifest, QuantEngine, cost
from .schemes import GGUF_TYPES, NONE, Scheme, parse_scheme

__all__ = ["GGUF_TYPES", "NONE", "Manifest", "QuantEngine", "Scheme", "cost", "parse_scheme"]
