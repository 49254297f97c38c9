"""The model an evaluation samples from, and the client that runs it.

Three sources (:class:`ModelSource`):

- ``model``: a Hugging Face checkpoint directory or hub id, loaded as is.
- ``model`` + ``lora``: a peft LoRA adapter merged into the base weights
  (``PeftModel.from_pretrained(base, adapter).merge_and_unload()``) and saved to a
  directory, which both backends then load like any checkpoint. Merging first is the
  simplest path that works the same for transformers and vLLM (no LoRA request
  plumbing, no ``max_lora_rank`` engine setting) and costs one save.
- ``verl_checkpoint``: an FSDP checkpoint of verl's trainer (``global_step_N/actor``, or
  ``global_step_N``), turned into a Hugging Face model by verl's own merger
  (``python -m verl.model_merger merge --backend fsdp --local_dir ... --target_dir ...``,
  run as a subprocess, so verl is imported only there). The merger writes a LoRA run's
  base weights plus ``lora_adapter/``; the adapter is then merged as above. The
  checkpoint's ``huggingface/`` folder gives config and tokenizer, so no base model is
  named. Not supported: Megatron checkpoints and ``checkpoint.save_lora_only=true`` ones
  (which hold no base weights); both are refused or fail with verl's own message.

Merged models go to a work folder (the evaluation's ``merged_model/``) stamped with the
source's identity, reused by a resumed run and deleted when the evaluation completes.
torch, transformers, peft and verl are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgsd.atomic import atomic_write_json

__all__ = ["BACKENDS", "ModelError", "ModelSource", "make_eval_client", "merge_lora", "pick_backend",
           "prepare_model", "verl_merge"]

BACKENDS = ("auto", "vllm", "transformers")
_STAMP = "sgsd_source.json"


class ModelError(ValueError):
    """A model source that cannot be used; the message names the path and the problem."""


def _local(value: str) -> str:
    """An existing local path made absolute; anything else (a hub id) unchanged."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of ``model`` and ``verl_checkpoint``; ``lora`` only with ``model``."""

    model: str | None = None
    lora: str | None = None
    verl_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.verl_checkpoint is None):
            raise ModelError("name exactly one model source: --model PATH_OR_ID or --verl-checkpoint DIR")
        if self.lora is not None and self.model is None:
            raise ModelError("--lora needs --model (the base model the adapter was trained on)")

    def resolved(self) -> ModelSource:
        """Paths made absolute and checked; raises :class:`ModelError` for a bad folder."""
        if self.lora is not None:
            lora = Path(self.lora).expanduser()
            if not (lora / "adapter_config.json").is_file():
                raise ModelError(f"--lora {self.lora}: not a peft adapter folder (no adapter_config.json)")
        if self.verl_checkpoint is not None:
            actor = Path(self.verl_checkpoint).expanduser()
            if (actor / "actor").is_dir():
                actor = actor / "actor"  # global_step_N given
            if not actor.is_dir():
                raise ModelError(f"--verl-checkpoint {self.verl_checkpoint}: no such directory")
            if not (actor / "fsdp_config.json").is_file():
                raise ModelError(f"--verl-checkpoint {actor}: not an FSDP actor checkpoint (no fsdp_config.json); "
                                 "merge other checkpoints with verl's model merger and pass the result as --model")
            return ModelSource(verl_checkpoint=str(actor.resolve()))
        model = Path(self.model).expanduser()
        if not model.exists() and (self.model.startswith(("/", ".", "~")) or self.model.count("/") > 1):
            raise ModelError(f"--model {self.model}: no such directory (nor a hub id such as Qwen/Qwen3-8B)")
        if model.exists() and not (model / "config.json").is_file():
            raise ModelError(f"--model {self.model}: a folder without config.json is not a Hugging Face model")
        return ModelSource(model=_local(self.model), lora=None if self.lora is None else _local(self.lora))

    def identity(self) -> dict[str, str | None]:
        return {"model": self.model, "lora": self.lora, "verl_checkpoint": self.verl_checkpoint}

    @property
    def needs_merge(self) -> bool:
        return self.lora is not None or self.verl_checkpoint is not None


def prepare_model(source: ModelSource, work_dir: str | os.PathLike[str], *, log: Any = None) -> str:
    """The path or hub id to load for ``source``: merged into ``work_dir/model`` when needed.

    A finished merge is stamped with the source's identity and reused; anything else in
    ``work_dir`` (a merge cut short) is redone.
    """
    if not source.needs_merge:
        return str(source.model)
    work = Path(work_dir)
    target = work / "model"
    stamp = target / _STAMP
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == source.identity():
        return str(target)
    shutil.rmtree(target, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if source.verl_checkpoint is not None:
        merged = work / "verl"
        verl_merge(source.verl_checkpoint, merged, log_path=work / "verl_merge.log", log=log)
        adapter = merged / "lora_adapter"
        if adapter.is_dir():
            merge_lora(str(merged), adapter, target, log=log)
            shutil.rmtree(merged)
        else:
            merged.rename(target)
    else:
        merge_lora(str(source.model), Path(str(source.lora)), target, log=log)
    atomic_write_json(stamp, source.identity())
    return str(target)


def merge_lora(base: str, adapter: Path, target: Path, *, log: Any = None) -> Path:
    """Save ``base`` with the LoRA ``adapter`` merged into its weights (plus a tokenizer) to ``target``."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("r") or not config.get("lora_alpha"):
        # verl's merger writes lora_alpha=0 when the checkpoint lacks lora_train_meta.json:
        # merged as is, the adapter would silently vanish (scale alpha / r = 0).
        raise ModelError(f"{adapter}: LoRA rank {config.get('r')!r} / alpha {config.get('lora_alpha')!r}; "
                         "a zero scale would evaluate the base model; fix adapter_config.json")
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelError("merging a LoRA adapter needs peft: pip install 'sgsd-verl[verl]' (or peft)") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if log:
        log(f"merging LoRA adapter {adapter} into {base}")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").is_file() else base)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot merge LoRA adapter {adapter} into {base}: {exc}") from exc
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def verl_merge(actor_dir: str, target: Path, *, log_path: Path, log: Any = None) -> Path:
    """Run verl's FSDP model merger on ``actor_dir`` into ``target``; its output goes to ``log_path``."""
    import importlib.util

    if importlib.util.find_spec("verl") is None:
        raise ModelError("--verl-checkpoint needs verl's model merger: pip install 'sgsd-verl[verl]'")
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
               "--local_dir", actor_dir, "--target_dir", str(target)]
    if log:
        log(f"merging verl checkpoint {actor_dir} (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not (target / "config.json").is_file():
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise ModelError(f"verl's model merger failed on {actor_dir} (exit {done.returncode}): "
                         f"{lines[-1] if lines else 'no output'}; full log: {log_path}")
    return target


def pick_backend(backend: str) -> str:
    """``auto``: vLLM when it is installed and a GPU is visible, else transformers."""
    if backend not in BACKENDS:
        raise ModelError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "transformers"


def make_eval_client(model: str, backend: str, options: str = "") -> Any:
    """A :mod:`sgsd.llm` client for ``model`` on ``backend`` (``vllm`` or ``transformers``).

    ``options`` is a ``KEY=VALUE&KEY=VALUE`` string of client constructor arguments
    (``tensor_parallel_size=2&max_model_len=40960``; ``batch_size=16&device=cuda``), as
    in :func:`sgsd.llm.factory.make_client` specs. Defaults: transformers on ``cuda`` when
    a GPU is visible, without its own progress bar (the evaluation draws one).
    """
    from sgsd.llm.factory import make_client, parse_spec

    try:
        _, kwargs = parse_spec(f"{backend}:{model}" + (f"?{options}" if options else ""))
        if backend == "transformers":
            import torch

            kwargs = {"device": "cuda" if torch.cuda.is_available() else "cpu", "show_progress": False, **kwargs}
        return make_client({"backend": backend, **kwargs})
    except (ImportError, ValueError, TypeError, OSError) as exc:
        raise ModelError(f"cannot start the {backend} client for {model}: {exc}") from exc
