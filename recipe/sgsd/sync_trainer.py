"""verl 0.9.1's synchronous v1 trainer as the recipe runs it: under a registry name of its
own, and keeping a resumed run's metrics.

Two things verl does that a run of this recipe must not suffer:

* **Async branches by name.** verl's v1 base decides sync-vs-async behaviour by comparing
  ``trainer.v1.trainer_mode`` with ``"sync"`` (the replay buffer class, exact one-prompt
  refills, TransferQueue state in checkpoints, in-flight re-issue). That key is also the
  registry name of the trainer class, so a subclass registered as ``sgsd`` would run with
  the ASYNC replay buffer and refill logic. :class:`RecipeSyncTrainer` is the sync trainer
  whatever its name: ``self.trainer_mode`` is ``"sync"`` from before the replay buffer is
  built (its settings are read from ``trainer.v1.sync``).
* **Metrics lost on resume.** verl's ``file`` logger opens its JSONL with ``"wb"``, so a run
  that resumes from ``global_step_N`` empties the file that ``sgsd plot`` draws. Here, on
  resume, the records of steps ``<= N`` are read first (and copied to ``<file>.resume`` until
  they are written back, so a crash in between loses nothing: the next attempt reads the
  copy), and written back through the file logger before anything else is logged. Records
  of later steps (an attempt that died after its last checkpoint) are dropped: those steps
  are trained again.

It also logs the outcome of multi-turn episodes (``episode/*``: solved, boxes on target, turns,
invalid-action rate, truncated; :func:`recipe.sgsd.agent_loop.episode_metrics`) beside verl's
own metrics, for every estimator.

GRPO runs started by ``recipe.sgsd.main_sgsd`` use this class as ``trainer_mode=sgsd_sync``
(verl's algorithm, unchanged); :class:`recipe.sgsd.trainer.SGSDTrainer` builds on it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from recipe.sgsd.main_sgsd import SYNC_TRAINER
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

logger = logging.getLogger(__name__)


def file_logger_path(config) -> Path | None:
    """Where verl's ``file`` logger writes (``utils/tracking.py:FileLogger``), or None."""
    loggers = config.trainer.get("logger") or []
    if "file" not in (list(loggers) if not isinstance(loggers, str) else [loggers]):
        return None
    path = os.getenv("VERL_FILE_LOGGER_PATH")
    if path is None:
        root = os.path.expanduser(os.getenv("VERL_FILE_LOGGER_ROOT", "."))
        path = os.path.join(root, config.trainer.project_name, f"{config.trainer.experiment_name}.jsonl")
    return Path(path)


def read_history(path: Path, last_step: int) -> list[dict]:
    """The ``{"step", "data"}`` records of steps ``<= last_step`` (unreadable lines skipped)."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("data"), dict) \
                and record["step"] <= last_step:
            kept.append(record)
    return kept


@register_trainer(SYNC_TRAINER)
class RecipeSyncTrainer(PPOTrainerSync):
    """verl's ``PPOTrainerSync``, sync under any registry name, metrics kept on resume."""

    def _build_replay_buffer(self):
        # The base set trainer_mode from the config (our registry name) a line earlier.
        self.trainer_mode = "sync"
        self.parameter_sync_step = self.config.trainer.v1.get("sync", {}).get("parameter_sync_step", 1)
        return super()._build_replay_buffer()

    def _compute_advantage(self, batch, metrics):
        batch = super()._compute_advantage(batch, metrics)
        metrics.update(self._episode_metrics(batch))
        return batch

    def _episode_metrics(self, batch) -> dict[str, float]:
        """``episode/*`` of the step's rollouts (empty when none is an agent episode)."""
        import transfer_queue as tq

        from recipe.sgsd.agent_loop import episode_metrics

        if batch.fields and "extra_fields" not in batch.fields:
            return {}
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        if "extra_fields" not in data.keys():
            return {}
        extra = data["extra_fields"]
        extra = extra.tolist() if hasattr(extra, "tolist") else list(extra)
        real = [e for e, tag in zip(extra, batch.tags) if not tag.get("is_padding", False)]
        return episode_metrics(real)

    # ----------------------------------------------------------------- metrics history
    def fit(self, *args, **kwargs):
        self._metrics_history: list[dict] | None = None
        path = file_logger_path(self.config)
        if self.global_steps > 0 and path is not None:
            self._metrics_backup = backup = path.with_name(path.name + ".resume")
            source = backup if backup.exists() else path  # an earlier attempt died before writing back
            if source.exists():
                self._metrics_history = read_history(source, self.global_steps)
                if source == path:
                    shutil.copyfile(path, backup)
                logger.info("resuming at step %d: %d earlier metric records of %s are kept", self.global_steps,
                            len(self._metrics_history), path)
        return super().fit(*args, **kwargs)

    def _write_back_history(self) -> None:
        """Called before the first log line of this attempt (verl has just emptied the file)."""
        history, self._metrics_history = getattr(self, "_metrics_history", None), None
        if history is None:
            return
        file_logger = self.logger.logger.get("file")
        for record in history:
            file_logger.log(data=record["data"], step=record["step"])
        self._metrics_backup.unlink(missing_ok=True)

    def on_validate_begin(self):
        self._write_back_history()  # val_before_train logs before on_train_begin
        super().on_validate_begin()

    def on_train_begin(self):
        self._write_back_history()
        super().on_train_begin()
