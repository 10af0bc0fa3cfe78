"""Documents per language: the bundled UDHR and user corpora, with language ids and metadata."""

from .documents import SPLITS, Corpus, Document, base_language, filter_split, split_of, take_until_tokens
from .languages import LanguageInfo, language_info, resolve_language
from .readers import READERS, CorpusReader, ReadOptions, load_corpus, load_udhr
from .resources import MEASURES, Resources, resources_for
from .selection import DEFAULT_PANEL, CorpusSelection, Selection, open_corpus, select_documents

__all__ = [
    "DEFAULT_PANEL",
    "MEASURES",
    "READERS",
    "SPLITS",
    "Corpus",
    "CorpusReader",
    "CorpusSelection",
    "Document",
    "LanguageInfo",
    "ReadOptions",
    "Resources",
    "Selection",
    "base_language",
    "filter_split",
    "language_info",
    "load_corpus",
    "load_udhr",
    "open_corpus",
    "resolve_language",
    "resources_for",
    "select_documents",
    "split_of",
    "take_until_tokens",
]
