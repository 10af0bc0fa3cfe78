"""Original parameter values re-read from the safetensors checkpoint a model was loaded from.

Lets the quantization engine drop an original tensor while a quantized one stands in for it, and read it back
(one tensor at a time) to restore it, so a model that fits in memory once need not fit twice. Each read opens
the file afresh: the memory mapping is released with the tensor's bytes, so a restore of the whole model never
holds more than one tensor's worth of mapped pages.
"""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointOriginals:
    """Tensors by name from the ``*.safetensors`` files of a checkpoint directory (sharded or not)."""

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        self._file: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        for f in sorted(self.directory.glob("*.safetensors")):
            with safe_open(str(f), framework="pt", device="cpu") as h:
                for key in h.keys():
                    self._file.setdefault(key, f)
                    self._shape.setdefault(key, tuple(h.get_slice(key).get_shape()))

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self._shape.get(name)

    def read(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """``name``'s stored value in ``like``'s dtype and device (rounded as loading rounds it)."""
        from safetensors import safe_open

        with safe_open(str(self._file[name]), framework="pt", device="cpu") as h:
            t = h.get_tensor(name)
        return t.to(device=like.device, dtype=like.dtype).contiguous()

    def matches(self, name: str, current: torch.Tensor) -> bool:
        """Whether re-reading ``name`` gives ``current`` bit for bit (so a restore from the file is exact)."""
        if self._shape.get(name) != tuple(current.shape):
            return False
        stored = self.read(name, current)
        return bool(torch.equal(stored.reshape(-1).view(torch.uint8), current.detach().reshape(-1).view(torch.uint8)))
