"""llama.cpp's own quantizers through ctypes: ``ggml_quantize_chunk`` and the types' ``to_float`` in
``libggml-base``, the library every llama.cpp build links (the one ``llama-quantize`` calls).

Where the library comes from (first found): ``$QUANT_DISPARITY_GGML_BASE`` (a path to ``libggml-base.so``), else
the copy that the ``llama-cpp-python`` package ships in ``llama_cpp/lib/`` (the ``llamacpp`` extra). Nothing here
imports ``llama_cpp`` itself.

Also llama.cpp's fallback for tensors whose rows a type cannot hold (``tensor_type_fallback`` in
src/llama-quant.cpp): a 256-element super-block type on a row length that is not a multiple of 256 becomes a
32-element block type (q2_k and q3_k -> q4_0, q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0), and a row that type
cannot hold either (not a multiple of 32) is stored as f16.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from ...errors import UserError

INSTALL = "pip install 'quant-disparity[llamacpp]'"
ENV = "QUANT_DISPARITY_GGML_BASE"

#: ggml type names (lower case) of the types used here; their numbers are the gguf package's enum's.
K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def block_size(ggml_type: str) -> int:
    import gguf

    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type.upper()]][0])


def stored_type(ggml_type: str, row_length: int) -> str:
    """The type llama.cpp stores a tensor of rows of ``row_length`` elements in when asked for ``ggml_type``."""
    if row_length % block_size(ggml_type) == 0:
        return ggml_type
    fallback = FALLBACK.get(ggml_type, ggml_type)  # a 32-block type has no smaller block to fall back to
    return fallback if row_length % block_size(fallback) == 0 else "f16"


def storage_bits(ggml_type: str, shape: tuple[int, int]) -> float:
    """Bits of a ``[rows, row_length]`` tensor stored in ``ggml_type`` (``gguf.GGML_QUANT_SIZES``: blocks of
    ``block`` elements of ``type_size`` bytes, scales and minima included)."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type.upper()]]
    return float(shape[0] * (shape[1] // block) * type_size * 8)


class _Traits(ctypes.Structure):
    # struct ggml_type_traits (ggml/include/ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def library_path() -> Path:
    """Where ``libggml-base`` is; a :class:`UserError` naming the install command when it is nowhere."""
    env = os.environ.get(ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(f"{ENV}={env} is not a file", f"point it at a libggml-base.so, or unset it and {INSTALL}")
        return path
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib = Path(spec.origin).parent / "lib"
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            if (lib / name).is_file():
                return lib / name
        raise UserError(
            f"llama-cpp-python is installed but ships no libggml-base in {lib}",
            f"reinstall it: {INSTALL} --force-reinstall",
        )
    raise UserError("llama.cpp's K-quants need libggml-base (from llama-cpp-python)", f"run: {INSTALL}")


@functools.cache
def _lib() -> ctypes.CDLL:
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise UserError(f"cannot load {path} ({e})", f"reinstall it: {INSTALL} --force-reinstall") from None
    if not hasattr(lib, "ggml_quantize_chunk"):
        raise UserError(f"{path} does not export ggml_quantize_chunk", f"reinstall it: {INSTALL} --force-reinstall")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_float),
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


def _type_id(ggml_type: str) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[ggml_type.upper()])


def quantize(data: np.ndarray, ggml_type: str, importance: np.ndarray | None = None) -> np.ndarray:
    """``[rows, row_length]`` float32 -> llama.cpp's bytes of ``ggml_type`` (uint8 ``[rows, row_bytes]``), by
    ``ggml_quantize_chunk`` as llama-quantize calls it. ``importance``: per input channel (``row_length``
    values, e.g. mean squared activations), the importance matrix llama.cpp's quantizers weight the error by."""
    lib = _lib()
    src = np.ascontiguousarray(data, dtype=np.float32)
    rows, n = src.shape
    tid = _type_id(ggml_type)
    row_bytes = lib.ggml_row_size(tid, n)
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    imatrix = None
    if importance is not None:
        imp = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
        if imp.shape[0] != n:
            raise UserError(f"an importance matrix needs {n} values (one per input channel), got {imp.shape[0]}")
        imatrix = imp.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    written = lib.ggml_quantize_chunk(
        tid, src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data, 0, rows, n, imatrix
    )
    assert written == out.nbytes, (written, out.nbytes)
    return out


def dequantize(raw: np.ndarray, ggml_type: str, shape: tuple[int, int]) -> np.ndarray:
    """llama.cpp's own ``to_float`` of ``ggml_type``: bytes ``[rows, row_bytes]`` -> float32 ``shape``."""
    lib = _lib()
    traits = lib.ggml_get_type_traits(_type_id(ggml_type)).contents
    to_float = _TO_FLOAT(traits.to_float)
    src = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty(shape, dtype=np.float32)
    to_float(src.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), shape[0] * shape[1])
    return out
