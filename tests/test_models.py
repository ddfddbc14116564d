"""Model preparation: joining and verifying GGUF parts, named models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from guardrail.errors import ModelUnavailableError
from guardrail.models import MODELS, is_prepared, join_verified, model_spec


def _parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def test_join_verified_concatenates_in_order(tmp_path: Path) -> None:
    chunks = [b"GGUF\x03\x00", b"abc", b"def"]
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    target = join_verified(_parts(tmp_path, chunks), tmp_path / "m.gguf", sha256=digest)
    assert target.read_bytes() == b"GGUF\x03\x00abcdef"
    assert not (tmp_path / "m.partial").exists()


def test_join_verified_rejects_a_wrong_checksum(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [b"GGUF", b"data"])
    with pytest.raises(ModelUnavailableError, match="does not match the expected"):
        join_verified(parts, tmp_path / "m.gguf", sha256="0" * 64)
    assert not (tmp_path / "m.gguf").exists()


def test_join_verified_rejects_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    chunks = [b"PK\x03\x04", b"zip"]
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    with pytest.raises(ModelUnavailableError, match="not a GGUF file"):
        join_verified(_parts(tmp_path, chunks), tmp_path / "m.gguf", sha256=digest)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelUnavailableError) as info:
        model_spec("llama-70b")
    for name in MODELS:
        assert name in str(info.value)


def test_a_folder_without_its_marker_is_not_prepared(tmp_path: Path) -> None:
    (tmp_path / "models" / "gemma-3-270m").mkdir(parents=True)
    assert not is_prepared(tmp_path, "gemma-3-270m")
