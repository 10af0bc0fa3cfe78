"""Apply quantization to a model in place, reversibly, touching only what changes.

Switching from one assignment to another re-points only the parameters whose scheme changed
(``param.data = tensor``: no copy into the model's own storage, so a head or tensor captured earlier keeps the
values it had). Quantized tensors are made one at a time, from the original, in the parameter's own dtype and
device.

Two memory modes (:func:`engine_for` chooses):

* **fast** (the default when the model fits twice): every quantized tensor is cached per (parameter, scheme)
  and every replaced original is kept, so sweeps over many plans cost a dictionary lookup per changed tensor
  after the first quantization; restoring puts back the very tensor objects that were there, bit for bit.
* **lean** (``cache=False`` and ``originals=`` a :class:`~quant_disparity.models.originals.CheckpointOriginals`):
  nothing is cached; an original that the checkpoint file reproduces bit for bit (checked once, tensor by
  tensor) is dropped while replaced and re-read from the file to restore it; the others are kept only while
  replaced. Memory stays at about one copy of the weights, at the price of re-quantizing and re-reading what
  each switch changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from ..errors import UserError
from ..models.modules import ModuleMap, from_2d, weight_2d
from .schemes import NONE, Scheme

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..models.originals import CheckpointOriginals
    from .calibration import CalibrationStats

#: Environment variable that forces the memory mode: ``fast``, ``lean`` or ``auto`` (the default).
MEMORY_ENV = "QUANT_DISPARITY_MEMORY"
MEMORY_MODES = ("auto", "fast", "lean")


@dataclass
class Manifest:
    """What an in-place call changed: parameter -> (old scheme, new scheme)."""

    changed: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def n_changed(self) -> int:
        return len(self.changed)


class QuantEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        modmap: ModuleMap,
        *,
        cache: bool = True,
        originals: CheckpointOriginals | None = None,
    ):
        self.model = model
        self.modmap = modmap
        self.cache = cache
        self._params = {p.name: model.get_parameter(p.name) for p in modmap.params}
        self._saved: dict[str, torch.Tensor] = {}  # originals of replaced parameters held in memory
        self._store = originals
        # parameters whose original the checkpoint reproduces exactly: dropped while replaced, re-read to restore
        self._from_file: set[str] = set()
        if originals is not None:
            for name, p in self._params.items():
                if name in originals and originals.matches(name, p.data):
                    self._from_file.add(name)
        self._active: dict[str, Scheme] = {}
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self._calibrated: set[tuple[str, str]] = set()  # cache keys of tensors made with calibration statistics
        #: calibration statistics by key; a calibrated scheme names its key (``gptq:w4g128@cal-...``), so the
        #: cache key (parameter, scheme name) includes the calibration
        self.calibrations: dict[str, CalibrationStats] = {}

    def add_calibration(self, stats: CalibrationStats) -> None:
        self.calibrations[stats.key] = stats

    def drop_calibrations(self) -> None:
        """Forget every calibration's statistics and the quantized tensors made with them (their scheme names
        carry the calibration key, so no later configuration of another calibration could use them): a study over
        many calibrations holds one calibration's tensors at a time, not all of them. Call after ``restore_``."""
        assert not self._active, "restore_() before dropping the calibrated tensors"
        self.calibrations.clear()
        for key in self._calibrated:
            self._cache.pop(key, None)
        self._calibrated.clear()

    @property
    def mode(self) -> str:
        return "fast" if self.cache and self._store is None else "lean"

    @property
    def active(self) -> dict[str, Scheme]:
        """Parameters currently not at their original value, with their scheme."""
        return dict(self._active)

    @property
    def file_backed(self) -> int:
        """How many parameters are restored from the checkpoint file rather than from memory."""
        return len(self._from_file)

    def original(self, name: str) -> torch.Tensor:
        """``name``'s original value (the tensor itself when it is in memory, else read from the checkpoint)."""
        if name not in self._active:
            return self._params[name].data
        if name in self._saved:
            return self._saved[name]
        assert self._store is not None
        return self._store.read(name, self._params[name].data)

    def quantized(self, name: str, scheme: Scheme) -> torch.Tensor:
        stats = None
        calibration = getattr(scheme, "calibration", "")
        if scheme.needs_calibration and calibration in self.calibrations:
            stats = self.calibrations[calibration].for_param(name)
            if stats is None:
                raise UserError(
                    f"{name}: no calibration statistics for {scheme.name} (only linear layers' inputs are recorded)",
                    "keep this tensor or give it an uncalibrated scheme in a plan",
                )
        key = (name, scheme.name)
        if key in self._cache:
            return self._cache[key]
        info = self.modmap[name]
        orig = self.original(name)
        with torch.no_grad():
            w2d = weight_2d(orig, info)
            scheme.check_shape(cast("tuple[int, int]", tuple(w2d.shape)), name)  # weight_2d: 2-D
            q = from_2d(scheme.fake_quantize(w2d, stats), info)
        del orig, w2d
        if self.cache:
            self._cache[key] = q
            if stats is not None:
                self._calibrated.add(key)
        return q

    def _put_back(self, name: str) -> None:
        param = self._params[name]
        if name in self._saved:
            param.data = self._saved.pop(name)
        else:
            assert self._store is not None
            current = param.data
            param.data = torch.empty(0, dtype=current.dtype, device=current.device)  # drop it before reading
            del current
            param.data = self._store.read(name, param.data)

    def assign_(self, assignment: Mapping[str, Scheme]) -> Manifest:
        """Make the model hold ``assignment`` (parameters not named, or named with ``none``, are original)."""
        manifest = Manifest()
        wanted = {n: s for n, s in assignment.items() if not s.is_identity}
        for name in list(self._active):
            if name not in wanted:
                manifest.changed[name] = (self._active.pop(name).name, NONE.name)
                self._put_back(name)
        for name, scheme in wanted.items():
            current = self._active.get(name)
            if current == scheme:
                continue
            q = self.quantized(name, scheme)
            if current is None and name not in self._from_file:
                self._saved[name] = self._params[name].data
            self._params[name].data = q
            del q
            manifest.changed[name] = ((current or NONE).name, scheme.name)
            self._active[name] = scheme
        if not self.cache and manifest.changed:
            _trim_heap()  # the freed per-tensor buffers go back to the OS instead of fragmenting the heap
        return manifest

    def restore_(self) -> Manifest:
        return self.assign_({})


def _trim_heap() -> None:
    """glibc ``malloc_trim``: return free heap pages to the OS (a no-op elsewhere). Without it, tensors freed and
    re-made one at a time leave the heap fragmented and the resident size grows past one copy of the weights."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (CUDA: the driver's free memory; CPU: ``MemAvailable``)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_mode() -> str:
    """The memory mode asked for by :data:`MEMORY_ENV` (``auto`` when unset)."""
    mode = os.environ.get(MEMORY_ENV, "auto").strip().lower() or "auto"
    if mode not in MEMORY_MODES:
        raise UserError(f"{MEMORY_ENV}={mode!r} is not a memory mode", f"use one of {', '.join(MEMORY_MODES)}")
    return mode


def engine_for(lm: LoadedModel, modmap: ModuleMap, mode: str | None = None) -> QuantEngine:
    """A :class:`QuantEngine` for ``lm`` in ``mode`` (default :func:`memory_mode`).

    ``auto`` is lean when the model was read from safetensors files and a second copy of its quantizable
    weights would not fit in the memory free on its device now; otherwise fast. ``lean`` without a checkpoint
    file still caches nothing and keeps only the originals of the tensors currently replaced.
    """
    mode = memory_mode() if mode is None else mode
    if mode == "auto":
        params = [lm.model.get_parameter(p.name) for p in modmap.params]
        second_copy = sum(p.numel() * p.element_size() for p in params)
        device = params[0].device if params else torch.device("cpu")
        free = _available_bytes(device)
        mode = "lean" if lm.checkpoint is not None and free is not None and second_copy > 0.8 * free else "fast"
    if mode == "fast":
        return QuantEngine(lm.model, modmap)
    from ..models.originals import CheckpointOriginals

    store = CheckpointOriginals(lm.checkpoint) if lm.checkpoint is not None else None
    return QuantEngine(lm.model, modmap, cache=False, originals=store)


def cost(modmap: ModuleMap, assignment: Mapping[str, Scheme]) -> dict:
    """Honest size of a model under ``assignment``: every tensor at its stored width, scales included."""
    total_bits = 0.0
    quantized_params = 0
    quantized_bits = 0.0
    block_params = 0
    block_bits = 0.0
    for p in modmap.params:
        scheme = assignment.get(p.name, NONE)
        shape = cast("tuple[int, int]", tuple(weight_2d(torch.empty(p.shape, device="meta"), p).shape))
        bits = scheme.storage_bits(shape, p.bits)
        total_bits += bits
        if not scheme.is_identity:
            quantized_params += p.numel
            quantized_bits += bits
        if p.role == "matrix" and p.layer is not None:
            block_params += p.numel
            block_bits += bits
    total = modmap.total_params
    return {
        "total_params": total,
        "quantized_params": quantized_params,
        "quantized_fraction": quantized_params / total if total else 0.0,
        "kept_fraction": 1 - quantized_params / total if total else 0.0,
        "bits_per_weight": total_bits / total if total else 0.0,
        "bits_per_quantized_weight": quantized_bits / quantized_params if quantized_params else None,
        "block_linear_params": block_params,
        "bits_per_block_linear_weight": block_bits / block_params if block_params else None,
        "total_bytes": total_bits / 8,
    }
