#!/usr/bin/env python3
"""Write a copy of a GGUF file whose block Linear weights are re-quantized to one llama.cpp type.

Makes a real artifact to audit with ``quant-disparity audit --quantized``: every metadata field (the tokenizer
included) and every other tensor is copied as it is stored; each ``blk.N.attn_{q,k,v,output}`` and
``blk.N.ffn_{gate,up,down}`` weight is dequantized by the ``gguf`` package and quantized again to ``--type``
(the ``gguf`` package's reference quantizer, bit-exact with the ``gguf:<type>`` scheme):

    python scripts/requantize_gguf.py SRC.gguf OUT.gguf --type q4_0
    python scripts/requantize_gguf.py --bundled gemma-3-270m OUT.gguf --type q8_0

``--bundled`` assembles the bundled model's GGUF into a temporary directory first.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

BLOCK_LINEAR = re.compile(r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")


def requantize(src: Path, dst: Path, qtype_name: str) -> dict[str, int]:
    """Copy ``src`` to ``dst`` with the block Linear weights re-quantized; returns {stored type: tensors}."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants

    qtype = GGMLQuantizationType[qtype_name.upper()]
    reader = GGUFReader(str(src))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    writer = GGUFWriter(str(dst), arch)
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = fld.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = fld.types[-1]
            if sub == GGUFValueType.STRING:
                value = [str(bytes(fld.parts[i]), "utf-8") for i in fld.data]
            else:
                value = [fld.parts[i].tolist()[0] for i in fld.data]
            writer.add_key_value(name, value, vtype, sub_type=sub)
        elif vtype == GGUFValueType.STRING:
            writer.add_key_value(name, str(bytes(fld.parts[-1]), "utf-8"), vtype)
        else:
            writer.add_key_value(name, fld.parts[-1].tolist()[0], vtype)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # numpy order: rows first
        if BLOCK_LINEAR.match(t.name) and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            values = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            writer.add_tensor(t.name, quants.quantize(values, qtype), raw_dtype=qtype)
            kind = qtype.name
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
            kind = t.tensor_type.name
        counts[kind] = counts.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", type=Path, help="the GGUF to copy")
    ap.add_argument("out", type=Path, help="the GGUF to write (must not exist)")
    ap.add_argument("--type", default="q4_0", help="llama.cpp type of the block Linear weights (default q4_0)")
    ap.add_argument("--bundled", help="copy a bundled model's GGUF instead of SRC (e.g. gemma-3-270m)")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists; not overwritten", file=sys.stderr)
        return 2
    if args.bundled:
        from quant_disparity.models import BUNDLED

        with tempfile.TemporaryDirectory() as tmp:
            src = BUNDLED.get(args.bundled).gguf_path(Path(tmp))
            counts = requantize(src, args.out, args.type)
    elif args.src is not None:
        counts = requantize(args.src, args.out, args.type)
    else:
        ap.error("give SRC or --bundled")
    print(f"wrote {args.out}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
