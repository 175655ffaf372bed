"""Words for lexical search: accent-folded, stop words dropped, Snowball-stemmed per language;
and the language of a question, among the languages a knowledge base has."""

from __future__ import annotations

import re
import unicodedata

import py3langid.langid as langid
import Stemmer
from bm25s import stopwords

# The languages the lexical analyser stems; a chunk in another language is indexed unstemmed.
STEMMED = {"pt": "portuguese", "es": "spanish", "en": "english"}
_STOP_WORDS = {"pt": stopwords.STOPWORDS_PORTUGUESE, "es": stopwords.STOPWORDS_SPANISH, "en": stopwords.STOPWORDS_EN}
WORD = re.compile(r"\w+")


def fold(text: str) -> str:
    """Case- and accent-free: "Olá, PREÇO" and "ola, preco" become the same words."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


class Analyzer:
    """Turns text into index terms; one per process (the stemmers are not thread-safe, the loop is one thread)."""

    def __init__(self) -> None:
        self._stemmers = {language: Stemmer.Stemmer(name) for language, name in STEMMED.items()}
        self._stop = {language: frozenset(fold(word) for word in words) for language, words in _STOP_WORDS.items()}

    def terms(self, text: str, language: str) -> list[str]:
        """The terms of a text in a known language (any other language: folded words as they are)."""
        words = WORD.findall(fold(text))
        stemmer = self._stemmers.get(language)
        if stemmer is None:
            return words
        stop = self._stop[language]
        return list(stemmer.stemWords([word for word in words if word not in stop]))

    def query_terms(self, text: str, languages: tuple[str, ...]) -> list[str]:
        """A question's terms stemmed for each language searched, so a chunk in any of them can match."""
        seen: dict[str, None] = {}
        for language in languages or ("",):
            seen.update(dict.fromkeys(self.terms(text, language)))
        return list(seen)


class LanguageDetector:
    """py3langid's model (shipped in its wheel), restricted to the languages a knowledge base has."""

    def __init__(self) -> None:
        self._identifier = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE)
        self._restricted: tuple[str, ...] | None = None
        self.known = frozenset(str(language) for language in self._identifier.nb_classes)

    def detect(self, text: str, languages: tuple[str, ...] | None = None) -> str:
        """The most likely of `languages` (sorted, all in `known`; None: any the model knows) for the text."""
        if self._restricted != languages:
            self._identifier.set_languages(list(languages) if languages is not None else None)
            self._restricted = languages
        language, _ = self._identifier.classify(text)
        return str(language)
