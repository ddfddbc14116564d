"""Tests for the retrievers package: passages, embedders, ingestion, the FAISS index, LangChain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from pydantic import ValidationError

from retrievers import (
    Embedder,
    HashingEmbedder,
    IndexMismatchError,
    IndexNotFoundError,
    IndexRetriever,
    IngestError,
    Passage,
    PassageIndex,
    RetrieverError,
    SentenceTransformerEmbedder,
    demo_corpus_path,
    load_documents,
)

# ---------------------------------------------------------------- helpers and fixtures


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *records: object) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


TOY = [
    Passage("cats", "Cats are small domesticated felines that purr and hunt mice.", "toy"),
    Passage("rockets", "Rockets burn fuel to lift satellites into orbit around Earth.", "toy"),
    Passage("bread", "Bread is baked from flour, water, yeast and salt in an oven.", "toy"),
    Passage("rivers", "Rivers carry fresh water from mountains down to the sea.", "toy"),
    Passage("chess", "Chess is a board game where each player moves sixteen pieces.", "toy"),
]


@pytest.fixture
def toy_index() -> PassageIndex:
    return PassageIndex.build(TOY, HashingEmbedder(dim=512), progress=False)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def demo_index(minilm: SentenceTransformerEmbedder) -> PassageIndex:
    """The first 300 passages of the demo corpus, embedded once with the real model."""
    passages = load_documents([demo_corpus_path()])[:300]
    return PassageIndex.build(passages, minilm, progress=False)


# ---------------------------------------------------------------- Passage


def test_passage_round_trips_through_json() -> None:
    passage = Passage("p1", "Some text.", "a.txt", title="T", score=0.5, metadata={"k": "v"})
    again = Passage.from_dict(json.loads(json.dumps(passage.to_dict())))
    assert again == passage
    assert Passage.from_dict(Passage("p2", "x", "s").to_dict()) == Passage("p2", "x", "s")


def test_passage_with_score_copies_and_is_frozen() -> None:
    metadata = {"k": "v"}
    passage = Passage("p1", "text", "src", metadata=metadata)
    metadata["k"] = "changed"
    scored = passage.with_score(0.25)
    assert (scored.score, passage.score, scored.id) == (0.25, None, "p1")
    assert passage.metadata == {"k": "v"}
    assert hash(passage) == hash(Passage("p1", "text", "src"))
    with pytest.raises(AttributeError):
        passage.text = "other"  # type: ignore[misc]


def test_passage_from_dict_rejects_missing_fields() -> None:
    with pytest.raises(RetrieverError, match="lacks text, source"):
        Passage.from_dict({"id": "x"})


# ---------------------------------------------------------------- embedders


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    texts = ["The cat sat on the mat.", "THE CAT sat on the MAT", "Quantum chromodynamics"]
    first, second = HashingEmbedder(dim=64).embed(texts), HashingEmbedder(dim=64).embed(texts)
    assert first.dtype == np.float32 and first.shape == (3, 64)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(first[0], first[1], rtol=1e-6)  # case and punctuation ignored
    assert float(first[0] @ first[2]) < 0.9
    assert HashingEmbedder(dim=64).name == "hashing-64"


def test_hashing_embedder_is_stable_across_processes() -> None:
    code = "import retrievers; print(retrievers.HashingEmbedder(32).embed(['a b c']).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    here = HashingEmbedder(32).embed(["a b c"])
    np.testing.assert_allclose(np.array(json.loads(out.stdout)), here, rtol=1e-6)


def test_hashing_embedder_edge_cases() -> None:
    embedder = HashingEmbedder(dim=16)
    assert embedder.embed([]).shape == (0, 16)
    assert not embedder.embed(["  ...  "]).any()  # no word token: the zero vector
    with pytest.raises(RetrieverError, match="positive int"):
        HashingEmbedder(dim=0)
    with pytest.raises(RetrieverError, match="single str"):
        embedder.embed("not a list")


@pytest.fixture(params=["hashing", pytest.param("minilm", marks=pytest.mark.slow)])
def any_embedder(request: pytest.FixtureRequest) -> Embedder:
    if request.param == "hashing":
        return HashingEmbedder(dim=128)
    embedder: Embedder = request.getfixturevalue("minilm")
    return embedder


def test_embedder_contract(any_embedder: Embedder) -> None:
    assert isinstance(any_embedder, Embedder)
    vectors = any_embedder.embed(["first text", "second, different text", "first text"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, any_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.99
    assert any_embedder.embed([]).shape == (0, any_embedder.dim)


def test_sentence_transformer_embedder_is_lazy_and_checks_its_folder(tmp_path: Path) -> None:
    embedder = SentenceTransformerEmbedder(str(tmp_path / "nowhere"))
    assert (embedder.name, embedder.dim) == ("all-MiniLM-L6-v2", 384)
    assert embedder.embed([]).shape == (0, 384)  # no model needed for no input
    with pytest.raises(RetrieverError, match="no model folder"):
        embedder.embed(["text"])


# ---------------------------------------------------------------- ingestion


def test_load_jsonl_fields(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "corpus.jsonl",
        {"id": "a", "title": "Alpha", "text": "First.", "year": 2020, "ok": True, "tags": [1]},
        {"context_id": "b", "page_content": "Second.", "source": "wiki"},
        {"content": "Third.", "metadata": {"source": "nested", "lang": "en"}},
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n   \n" + json.dumps({"text": "Fifth line."}) + "\n")
    passages = load_documents([path])
    assert [p.id for p in passages] == ["a", "b", "corpus.jsonl:3", "corpus.jsonl:6"]
    assert [p.text for p in passages] == ["First.", "Second.", "Third.", "Fifth line."]
    assert [p.source for p in passages] == ["corpus.jsonl", "wiki", "nested", "corpus.jsonl"]
    assert passages[0].title == "Alpha"
    assert passages[0].metadata == {"year": "2020", "ok": "true"}
    assert passages[2].metadata == {"lang": "en"}


def test_load_text_paragraphs(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "First paragraph\nstill first.\n\n\n  Second one.  \n")
    passages = load_documents(path)
    assert [(p.id, p.text, p.source, p.title) for p in passages] == [
        ("notes.txt#0", "First paragraph\nstill first.", "notes.txt", ""),
        ("notes.txt#1", "Second one.", "notes.txt", ""),
    ]


def test_load_markdown_sections(tmp_path: Path) -> None:
    text = (
        "---\nlayout: post\n---\nIntro text.\n\n# Install\n\nRun pip.\n\nThen test.\n"
        "## Usage ##\n```python\n# not a heading\n\nprint(1)\n```\n"
    )
    passages = load_documents([write(tmp_path / "guide.md", text)])
    assert [(p.id, p.title) for p in passages] == [
        ("guide.md#0", ""),
        ("guide.md#1", "Install"),
        ("guide.md#2", "Install"),
        ("guide.md#3", "Usage"),
    ]
    assert passages[0].text == "Intro text."
    assert passages[3].text == "```python\n# not a heading\n\nprint(1)\n```"


def test_long_units_become_overlapping_windows(tmp_path: Path) -> None:
    jsonl(tmp_path / "c.jsonl", {"id": "long", "text": words(0, 25)}, {"id": "short", "text": "ok"})
    write(tmp_path / "t.txt", words(0, 12) + "\n\nshort paragraph")
    passages = load_documents([tmp_path], max_words=10, overlap_words=3)
    by_id = {p.id: p.text for p in passages}
    assert passages[0].metadata == {"parent_id": "long"}
    assert passages[4].metadata == {} and passages[5].metadata == {}
    assert [p.id for p in passages] == [
        "long#0", "long#1", "long#2", "long#3", "short", "t.txt#0", "t.txt#1", "t.txt#2",
    ]  # fmt: skip
    assert by_id["long#0"] == words(0, 10)
    assert by_id["long#1"] == words(7, 17)
    assert by_id["long#2"] == words(14, 24)
    assert by_id["long#3"] == words(21, 25)
    assert (by_id["t.txt#0"], by_id["t.txt#1"]) == (words(0, 10), words(7, 12))
    assert by_id["t.txt#2"] == "short paragraph"


def test_directory_recursion_is_sorted_and_skips_other_files(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "a" / "z.md", "# Zed\nzed")
    write(tmp_path / "a" / "deeper" / "y.markdown", "why")
    write(tmp_path / "ignored.csv", "x,y")
    write(tmp_path / ".hidden" / "secret.txt", "hidden")
    passages = load_documents([tmp_path, tmp_path / "b.txt"])  # b.txt reached twice: read once
    assert [(p.id, p.text) for p in passages] == [
        ("a/deeper/y.markdown#0", "why"),
        ("a/z.md#0", "zed"),
        ("b.txt#0", "bee"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "line", "fragment"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": "oops",,}\n', 2, "invalid JSON"),
        ("list.jsonl", '{"text": "ok"}\n\n["not", "object"]\n', 3, "expected a JSON object"),
        ("notext.jsonl", '{"title": "no body"}\n', 1, "no text field"),
        ("blank.jsonl", '{"text": "   "}\n', 1, "non-empty string"),
        ("empty.jsonl", "\n\n", None, "empty corpus file"),
        ("empty.md", "# Only a heading\n", None, "empty corpus file"),
        ("table.csv", "a,b\n", None, "supported extensions: .jsonl, .txt, .md, .markdown"),
    ],
)
def test_bad_files_raise_ingest_error(
    tmp_path: Path, name: str, content: str, line: int | None, fragment: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(IngestError, match=fragment) as caught:
        load_documents([path])
    assert name in str(caught.value)
    assert (caught.value.path, caught.value.line) == (path, line)
    if line is not None:
        assert f"line {line}:" in str(caught.value)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file") as caught:
        load_documents([tmp_path / "absent.txt"])
    assert "absent.txt" in str(caught.value)
    write(tmp_path / "only.csv", "a")
    with pytest.raises(IngestError, match="no supported files"):
        load_documents([tmp_path])
    with pytest.raises(IngestError, match="no paths given"):
        load_documents([])


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("first line\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(IngestError, match="not valid UTF-8") as caught:
        load_documents([path])
    assert "latin.txt line 2" in str(caught.value)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_unreadable_file(tmp_path: Path) -> None:
    # Reading /proc/self/mem at offset 0 fails with EIO, even for root (chmod would not).
    path = tmp_path / "mem.txt"
    path.symlink_to("/proc/self/mem")
    with pytest.raises(IngestError, match="cannot read file") as caught:
        load_documents([path])
    assert "mem.txt" in str(caught.value)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    jsonl(tmp_path / "one.jsonl", {"id": "x", "text": "a"})
    jsonl(tmp_path / "two.jsonl", {"id": "y", "text": "b"}, {"id": "x", "text": "c"})
    with pytest.raises(IngestError, match="duplicate id 'x'") as caught:
        load_documents([tmp_path])
    assert "two.jsonl line 2" in str(caught.value)
    assert "one.jsonl line 1" in str(caught.value)


def test_chunking_parameters_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "text")
    with pytest.raises(RetrieverError, match="overlap_words"):
        load_documents([path], max_words=10, overlap_words=10)
    with pytest.raises(RetrieverError, match="max_words"):
        load_documents([path], max_words=0)


def test_demo_corpus_loads() -> None:
    passages = load_documents([demo_corpus_path()])
    assert passages[0].id == "1973_oil_crisis#0"
    assert passages[0].source == "squad11_contexts.jsonl"
    assert len({p.id for p in passages}) == len(passages) > 2067  # long paragraphs split
    assert len({p.metadata.get("parent_id", p.id) for p in passages}) == 2067
    assert max(len(p.text.split()) for p in passages) <= 180


# ---------------------------------------------------------------- PassageIndex


def test_search_ranks_by_cosine(toy_index: PassageIndex) -> None:
    hits = toy_index.search("Which rockets lift satellites into orbit?", k=3)
    assert hits[0].id == "rockets"
    assert len(hits) == 3
    scores = [h.score for h in hits if h.score is not None]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    embedder = toy_index.embedder
    query, passage = embedder.embed(["Which rockets lift satellites into orbit?", TOY[1].text])
    assert hits[0].score == pytest.approx(float(query @ passage), abs=1e-5)
    assert toy_index.search(TOY[2].text, k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_k_and_query_validation(toy_index: PassageIndex) -> None:
    assert len(toy_index.search("water", k=50)) == len(TOY) == len(toy_index)
    for bad_query in ("", "   \n"):
        with pytest.raises(RetrieverError, match="non-empty string"):
            toy_index.search(bad_query)
    with pytest.raises(RetrieverError, match="positive int"):
        toy_index.search("water", k=0)


def test_search_many_matches_search(toy_index: PassageIndex) -> None:
    queries = ["bread baked in an oven", "board game pieces"]
    assert toy_index.search_many(queries, k=2) == [toy_index.search(q, k=2) for q in queries]
    assert toy_index.search_many([], k=2) == []


def test_build_rejects_bad_input() -> None:
    with pytest.raises(RetrieverError, match="no passages"):
        PassageIndex.build([], HashingEmbedder(), progress=False)
    with pytest.raises(RetrieverError, match="duplicate passage id 'cats'"):
        PassageIndex.build([TOY[0], TOY[0]], HashingEmbedder(), progress=False)


def test_build_shows_progress(capsys: pytest.CaptureFixture[str]) -> None:
    index = PassageIndex.build(TOY, HashingEmbedder(), batch_size=2, progress=True)
    assert "Embedding passages" in capsys.readouterr().err
    assert [p.id for p in index.passages] == [p.id for p in TOY]
    assert all(p.score is None for p in index.passages)


def test_save_load_round_trip(toy_index: PassageIndex, tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "index"
    toy_index.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == [
        "index.faiss", "manifest.json", "passages.jsonl",
    ]  # fmt: skip
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest == {
        "format": 1,
        "embedder": "hashing-512",
        "dim": 512,
        "count": 5,
        "corpus_version": toy_index.corpus_version,
    }
    loaded = PassageIndex.load(directory, HashingEmbedder(dim=512))
    assert loaded.passages == toy_index.passages
    assert loaded.corpus_version == toy_index.corpus_version
    assert loaded.search("fresh water sea", k=5) == toy_index.search("fresh water sea", k=5)
    toy_index.save(directory)  # overwriting an existing index works
    assert PassageIndex.load(directory, HashingEmbedder(dim=512)).corpus_version == (
        toy_index.corpus_version
    )


def test_corpus_version_tracks_content() -> None:
    base = PassageIndex.build(TOY, HashingEmbedder(), progress=False)
    assert len(base.corpus_version) == 16
    int(base.corpus_version, 16)
    same = PassageIndex.build(list(TOY), HashingEmbedder(), progress=False)
    edited = [TOY[0], Passage("rockets", "Edited text.", "toy"), *TOY[2:]]
    assert same.corpus_version == base.corpus_version
    assert PassageIndex.build(edited, HashingEmbedder(), progress=False).corpus_version != (
        base.corpus_version
    )
    assert PassageIndex.build(TOY, HashingEmbedder(64), progress=False).corpus_version != (
        base.corpus_version
    )


def test_load_missing_or_incomplete_index(toy_index: PassageIndex, tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="guardrail ingest") as caught:
        PassageIndex.load(tmp_path / "absent", HashingEmbedder(512))
    assert "absent" in str(caught.value)
    toy_index.save(tmp_path / "idx")
    (tmp_path / "idx" / "passages.jsonl").unlink()
    with pytest.raises(IndexNotFoundError, match=r"missing passages\.jsonl"):
        PassageIndex.load(tmp_path / "idx", HashingEmbedder(512))


def test_load_with_other_embedder(toy_index: PassageIndex, tmp_path: Path) -> None:
    toy_index.save(tmp_path)
    with pytest.raises(IndexMismatchError, match="'hashing-512' \\(512 dims\\)") as caught:
        PassageIndex.load(tmp_path, HashingEmbedder(dim=32))
    assert (caught.value.index_embedder, caught.value.given_dim) == ("hashing-512", 32)


def test_load_detects_inconsistent_files(toy_index: PassageIndex, tmp_path: Path) -> None:
    toy_index.save(tmp_path)
    path = tmp_path / "passages.jsonl"
    path.write_text(path.read_text().replace("Cats are", "Dogs are"))
    with pytest.raises(RetrieverError, match="inconsistent"):
        PassageIndex.load(tmp_path, HashingEmbedder(512))


# ---------------------------------------------------------------- LangChain


def test_index_retriever_returns_documents(toy_index: PassageIndex) -> None:
    retriever = IndexRetriever(index=toy_index, k=2)
    docs = retriever.invoke("purring felines")
    assert len(docs) == 2 and all(isinstance(d, Document) for d in docs)
    assert docs[0].id == "cats" and docs[0].page_content == TOY[0].text
    assert docs[0].metadata["id"] == "cats" and docs[0].metadata["source"] == "toy"
    assert docs[0].metadata["score"] >= docs[1].metadata["score"]
    with pytest.raises(ValidationError):
        IndexRetriever(index=toy_index, k=0)


# ---------------------------------------------------------------- real model (slow)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "expected_id"),
    [
        ("When did the 1973 oil crisis begin?", "1973_oil_crisis#0"),
        ("Where is the Black Death thought to have originated?", "Black_Death#0"),
    ],
)
def test_real_model_finds_the_paragraph(
    demo_index: PassageIndex, question: str, expected_id: str
) -> None:
    hits = demo_index.search(question, k=4)
    assert hits[0].id == expected_id
    assert hits[0].score is not None and 0.3 < hits[0].score <= 1.0 + 1e-5
    assert hits[0].score > (hits[1].score or 0.0)


@pytest.mark.slow
def test_real_index_save_load_same_results(
    demo_index: PassageIndex, minilm: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    demo_index.save(tmp_path)
    loaded = PassageIndex.load(tmp_path, minilm)
    assert loaded.corpus_version == demo_index.corpus_version
    questions = ["When did the 1973 oil crisis begin?", "What is a chloroplast?"]
    for before, after in zip(
        demo_index.search_many(questions), loaded.search_many(questions), strict=True
    ):
        assert [p.id for p in before] == [p.id for p in after]
        assert [p.score for p in before] == pytest.approx([p.score for p in after], abs=1e-6)
    with pytest.raises(IndexMismatchError):
        PassageIndex.load(tmp_path, HashingEmbedder(384))


@pytest.mark.slow
def test_real_index_retriever(demo_index: PassageIndex) -> None:
    docs = IndexRetriever(index=demo_index, k=3).invoke("Who landed on the Moon with Apollo 11?")
    assert len(docs) == 3
    assert all(d.id and d.metadata["id"] == d.id for d in docs)
    assert docs[0].metadata["title"] == "Apollo program"
    assert all(isinstance(d.metadata["score"], float) for d in docs)


def test_import_loads_no_model_or_faiss() -> None:
    code = (
        "import sys, retrievers; "
        "print(sorted(m for m in ('faiss', 'torch', 'sentence_transformers') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
