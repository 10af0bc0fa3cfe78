"""Documents per language: the bundled UDHR and user corpora, with language ids and metadata."""

from .documents import SPLITS, Corpus, Document, base_language, filter_split, split_of, take_until_tokens
from .languages import LanguageInfo, language_info, resolve_language
from .readers import READERS, CorpusReader, ReadOptions, load_corpus, load_udhr
from .resources import MEASURES, Resources, resources_for

#: The default panel: spans Joshi classes 2-5 and eight scripts.
DEFAULT_PANEL = (
    "eng_Latn", "deu_Latn", "fra_Latn", "rus_Cyrl", "cmn_Hans", "jpn_Jpan",
    "arb_Arab", "heb_Hebr", "hin_Deva", "swh_Latn", "yor_Latn", "amh_Ethi",
)

__all__ = [
    "DEFAULT_PANEL", "MEASURES", "READERS", "SPLITS", "Corpus", "CorpusReader", "Document", "LanguageInfo",
    "ReadOptions", "Resources", "base_language", "filter_split", "language_info", "load_corpus", "load_udhr",
    "resolve_language", "resources_for", "split_of", "take_until_tokens",
]
