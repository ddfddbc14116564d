"""Turn document files (JSONL, plain text, Markdown) into passages.

``load_documents`` reads files and directories, splits text files into paragraphs (Markdown
into sections under their headings, then paragraphs), and cuts long units into overlapping
word windows. Every problem raises ``IngestError`` naming the file and, where known, the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import IngestError, RetrieverError
from .types import Passage

__all__ = ["SUPPORTED_EXTENSIONS", "demo_corpus_path", "load_documents"]

SUPPORTED_EXTENSIONS = (".jsonl", ".txt", ".md", ".markdown")
_SUPPORTED = ", ".join(SUPPORTED_EXTENSIONS)
_TEXT_KEYS = ("text", "page_content", "content")
_ID_KEYS = ("id", "context_id")
_RESERVED = {*_TEXT_KEYS, *_ID_KEYS, "title", "source", "metadata"}
_JSONL_HINT = 'each line must be one JSON object with a "text" field'
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class _Unit:
    """A paragraph (or JSONL record) before chunking."""

    text: str
    line: int
    title: str = ""


def demo_corpus_path() -> Path:
    """Path of the bundled demo corpus (2,067 SQuAD 1.1 dev paragraphs, CC BY-SA 4.0)."""
    path = Path(str(files("retrievers") / "data" / "squad11_contexts.jsonl"))
    if not path.is_file():
        raise RetrieverError(
            f"demo corpus not found at {path}; reinstall guardrail-rag (package data is missing)"
        )
    return path


def load_documents(
    paths: Iterable[str | Path] | str | Path, *, max_words: int = 180, overlap_words: int = 30
) -> list[Passage]:
    """Read files and directories into passages with unique ids.

    Text files split on blank lines; Markdown on ATX (``#``) headings, then blank lines.
    Directories are searched recursively for *.jsonl, *.txt, *.md and *.markdown files (hidden
    ones skipped), in sorted order. Units longer than ``max_words`` words become windows of
    ``max_words`` words overlapping by ``overlap_words``; a JSONL record cut this way gets ids
    ``<id>#0``, ``<id>#1``... and ``metadata["parent_id"] = <id>``.
    """
    if max_words < 1:
        raise RetrieverError(f"max_words must be at least 1, got {max_words}")
    if not 0 <= overlap_words < max_words:
        raise RetrieverError(
            f"overlap_words must be in [0, max_words={max_words}), got {overlap_words}"
        )
    if isinstance(paths, str | Path):
        paths = [paths]
    passages: list[Passage] = []
    seen: dict[str, tuple[Path, int]] = {}
    for path, label in _expand(paths):
        for passage, line in _read_file(path, label, max_words, overlap_words):
            if passage.id in seen:
                first_path, first_line = seen[passage.id]
                raise IngestError(
                    f"duplicate id {passage.id!r} (first seen at {first_path} line {first_line}); "
                    "ids must be unique across the ingest: give records distinct ids or "
                    "ingest the files separately",
                    path=path,
                    line=line,
                )
            seen[passage.id] = (path, line)
            passages.append(passage)
    return passages


def _expand(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str]]:
    """Yield (file, label) pairs; the label names the file in ids and ``source``."""
    given = [Path(p) for p in paths]
    if not given:
        raise IngestError(f"no paths given; pass files or directories ({_SUPPORTED})", path=None)
    done: set[Path] = set()
    for path in given:
        if path.is_dir():
            found = [
                file
                for file in sorted(path.rglob("*"))
                if file.suffix.lower() in SUPPORTED_EXTENSIONS
                and file.is_file()
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            ]
            if not found:
                raise IngestError(
                    f"directory holds no supported files; supported extensions: {_SUPPORTED}",
                    path=path,
                )
            pairs = [(file, file.relative_to(path).as_posix()) for file in found]
        elif path.exists():
            if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                raise IngestError(
                    f"unsupported file type {path.suffix or '(no extension)'!r}; supported "
                    f"extensions: {_SUPPORTED}",
                    path=path,
                )
            pairs = [(path, path.name)]
        else:
            raise IngestError("no such file or directory; check the path", path=path)
        for file, label in pairs:
            # The same file reached twice (a directory and a file in it) is read once.
            key = file.resolve()
            if key not in done:
                done.add(key)
                yield file, label


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(
            f"cannot read file ({exc.strerror or exc}); check that it exists and is readable",
            path=path,
        ) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise IngestError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`",
            path=path,
            line=line,
        ) from exc


def _read_file(
    path: Path, label: str, max_words: int, overlap_words: int
) -> list[tuple[Passage, int]]:
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        out = list(_jsonl_passages(path, label, text, max_words, overlap_words))
    else:
        units = _markdown_units(text) if path.suffix.lower() != ".txt" else _text_units(text)
        out = []
        for unit in units:
            for chunk in _chunk(unit.text, max_words, overlap_words):
                passage = Passage(
                    id=f"{label}#{len(out)}", text=chunk, source=label, title=unit.title
                )
                out.append((passage, unit.line))
    if not out:
        raise IngestError(
            "empty corpus file: no passages found; add text or leave the file out", path=path
        )
    return out


def _chunk(text: str, max_words: int, overlap_words: int) -> list[str]:
    words = text.split()
    if len(words) <= max_words:
        return [text]
    step = max_words - overlap_words
    windows = []
    for start in range(0, len(words), step):
        windows.append(" ".join(words[start : start + max_words]))
        if start + max_words >= len(words):
            break
    return windows


def _scalar_fields(record: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in record.items():
        if isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, bool | int | float):
            out[str(key)] = json.dumps(value)
    return out


def _jsonl_passages(
    path: Path, label: str, text: str, max_words: int, overlap_words: int
) -> Iterator[tuple[Passage, int]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"invalid JSON ({exc.msg} at column {exc.colno}); {_JSONL_HINT}",
                path=path,
                line=number,
            ) from None
        if not isinstance(record, dict):
            raise IngestError(
                f"expected a JSON object, got {type(record).__name__}; {_JSONL_HINT}",
                path=path,
                line=number,
            )
        key = next((k for k in _TEXT_KEYS if k in record), None)
        if key is None:
            raise IngestError(
                f"no text field (keys: {', '.join(sorted(record)) or 'none'}); expected one of "
                f"{', '.join(_TEXT_KEYS)}; {_JSONL_HINT}",
                path=path,
                line=number,
            )
        body = record[key]
        if not isinstance(body, str) or not body.strip():
            raise IngestError(
                f"field {key!r} must be a non-empty string, got {json.dumps(body)[:60]}; "
                "remove the line or fill in its text",
                path=path,
                line=number,
            )
        # LangChain dumps keep source/title in a nested "metadata" object; top level wins.
        nested = record.get("metadata")
        fields = {**(_scalar_fields(nested) if isinstance(nested, dict) else {})}
        fields.update(_scalar_fields(record))
        base_id = next((fields[k] for k in _ID_KEYS if k in fields), f"{label}:{number}")
        metadata = {k: v for k, v in fields.items() if k not in _RESERVED}
        chunks = _chunk(body.strip(), max_words, overlap_words)
        if len(chunks) > 1:
            metadata["parent_id"] = base_id  # lets evaluation map a window to its record
        for index, chunk in enumerate(chunks):
            passage = Passage(
                id=base_id if len(chunks) == 1 else f"{base_id}#{index}",
                text=chunk,
                source=fields.get("source", label),
                title=fields.get("title", ""),
                metadata=metadata,
            )
            yield passage, number


def _paragraphs(lines: list[tuple[int, str]], title: str, *, fences: bool = True) -> list[_Unit]:
    """Split numbered lines into paragraphs on blank lines (outside fenced code blocks)."""
    units: list[_Unit] = []
    block: list[tuple[int, str]] = []
    fence = ""
    for number, line in lines:
        if fence:
            block.append((number, line))
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = ""
            continue
        opening = _FENCE.match(line) if fences else None
        if opening:
            fence = opening.group(1)
        if line.strip() or fence:
            block.append((number, line))
        elif block:
            units.append(_Unit("\n".join(t for _, t in block).strip(), block[0][0], title))
            block = []
    if block:
        units.append(_Unit("\n".join(t for _, t in block).strip(), block[0][0], title))
    return units


def _text_units(text: str) -> list[_Unit]:
    return _paragraphs(list(enumerate(text.splitlines(), start=1)), "", fences=False)


def _markdown_units(text: str) -> list[_Unit]:
    lines = list(enumerate(text.splitlines(), start=1))
    # YAML front matter is metadata, not content.
    if lines and lines[0][1].strip() == "---":
        end = next((i for i, (_, t) in enumerate(lines[1:], 1) if t.strip() in ("---", "...")), 0)
        lines = lines[end + 1 :] if end else lines
    units: list[_Unit] = []
    title = ""
    section: list[tuple[int, str]] = []
    fence = ""
    for number, line in lines:
        heading = None if fence else _HEADING.match(line)
        if heading:
            units.extend(_paragraphs(section, title))
            title, section = (heading.group(2) or "").strip(), []
            continue
        section.append((number, line))
        marker = _FENCE.match(line)
        if fence and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = ""
        elif not fence and marker:
            fence = marker.group(1)
    units.extend(_paragraphs(section, title))
    return units
