"""verl's actor/rollout/ref worker with a moving teacher (``sgsd.teacher=ema|periodic``).

:class:`TeacherWeightsWorker` is verl 0.9.1's ``ActorRolloutRefWorker`` plus four worker
methods; the SGSD trainer uses it in place of verl's class only for a moving teacher
(:class:`recipe.sgsd.teacher_weights.TeacherWeightsMixin`). Where the teacher's weights live:

* **full fine-tuning**: in verl's reference model (``self.ref``, a forward-only FSDP2 engine in
  the same process as the actor: the trainer's role is ``actor_rollout_ref``); the teacher
  pass scores with ``compute_ref_log_prob`` as for a frozen teacher;
* **LoRA**: in a copy of the actor's trainable (adapter) shards, kept in CPU memory (the base
  weights are shared); :meth:`compute_teacher_log_prob` swaps it into the actor, runs verl's own
  log-prob pass, and swaps the student's adapter back, bit for bit.

After every actor step the trainer calls :meth:`update_teacher` with the schedule's weight:
each rank blends its own shards (:mod:`recipe.sgsd.teacher_shards`), never gathering a full
tensor. Offload: the reference engine's parameters sit in CPU memory (verl gives a forward-only
FSDP2 model ``CPUOffloadPolicy``); the actor's are wherever verl left them after its update (on
the device, or in CPU memory with ``param_offload``); each student shard is moved to the
teacher's device one tensor at a time.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from recipe.sgsd import teacher_shards as shards
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.workers.engine_workers import ActorRolloutRefWorker

logger = logging.getLogger(__name__)


class TeacherWeightsWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` + the moving teacher's weights (see the module docstring)."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        self._lora_teacher: dict[str, torch.Tensor] | None = None
        if self.actor is None:
            return
        if self._teacher_in_adapter:
            # theta_T(0) = theta_0: the adapter as built (or loaded from lora_adapter_path), taken
            # before any checkpoint is resumed; restored teacher state replaces it.
            self._lora_teacher = {name: t.detach().to("cpu", copy=True)
                                  for name, t in shards.trainable_shards(self._actor_module).items()}

    # ----------------------------------------------------------------- where the teacher is
    @property
    def _actor_module(self) -> torch.nn.Module:
        return self.actor.engine.module

    @property
    def _teacher_in_adapter(self) -> bool:
        """A LoRA actor (a peft model): the teacher is a copy of its adapter."""
        return self.actor is not None and hasattr(self._actor_module, "peft_config")

    def _teacher_pairs(self):
        """(name, student shard, teacher shard) of every trained parameter."""
        if self._teacher_in_adapter:
            live = shards.trainable_shards(self._actor_module)
            missing = sorted(set(live) - set(self._lora_teacher))
            if missing:
                raise shards.ShardLayoutError(f"the teacher adapter has no copy of {missing[0]!r}")
            return [(name, t, self._lora_teacher[name]) for name, t in live.items()]
        if self.ref is None:
            raise RuntimeError("a moving teacher without LoRA lives in verl's reference model, but this worker "
                               f"(role {self.role!r}) has none: the SGSD trainer needs the actor_rollout_ref role")
        return shards.paired_shards(self._actor_module, self.ref.engine.module)

    # ----------------------------------------------------------------- worker methods
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_teacher(self, weight: float) -> dict:
        """``theta_T <- (1 - weight) theta_T + weight theta_S`` on this rank's shards; returns the
        squared distance and student norm before the update (summed over this rank's shards)."""
        return shards.blend_shards(self._teacher_pairs(), float(weight)).as_dict()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_teacher(self, folder: str) -> str:
        """This rank's teacher shards to ``folder`` (one file per rank)."""
        rank, world = self._rank_world()
        teacher = self._teacher_tensors()
        layouts = {name: shards.layout_of(p) for name, p in self._teacher_params().items()}
        return str(shards.save_rank(Path(folder), rank, world, teacher, layouts))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_teacher(self, folder: str) -> int:
        """Copy this rank's saved shards into the teacher; refused, naming the parameter, when a
        saved shard's name or shape does not match. Returns the number of tensors restored."""
        rank, world = self._rank_world()
        saved = shards.load_rank(Path(folder), rank, world)
        teacher = self._teacher_tensors()
        if set(saved.tensors) != set(teacher):
            extra = sorted(set(saved.tensors) ^ set(teacher))
            raise shards.ShardLayoutError(f"{folder}: the saved teacher and this run's trained parameters differ "
                                          f"(first: {extra[0]!r}); was it saved with another model or LoRA setting?")
        with torch.no_grad():
            for name, target in teacher.items():
                source = saved.tensors[name]
                if source.shape != target.shape:
                    raise shards.ShardLayoutError(f"{folder}: teacher shard {name!r} of rank {rank} is "
                                                  f"{tuple(source.shape)}, this run's is {tuple(target.shape)}")
                target.copy_(source.to(device=target.device, dtype=target.dtype))
        return len(teacher)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_teacher_log_prob(self, data):
        """LoRA: verl's actor log-prob pass with the teacher's adapter swapped in."""
        if not self._teacher_in_adapter:
            raise RuntimeError("compute_teacher_log_prob swaps a teacher LoRA adapter in; without LoRA the "
                               "teacher is the reference model (compute_ref_log_prob)")
        with self._teacher_adapter():
            output = self.actor.infer_batch(data)
        return output.cpu() if output is not None else None

    # ----------------------------------------------------------------- helpers
    @contextmanager
    def _teacher_adapter(self):
        """The teacher's adapter in the actor's parameters, the student's back on exit (kept in
        CPU memory meanwhile). In place, wherever verl's offloading has put the parameters."""
        live = shards.trainable_shards(self._actor_module)
        student = {name: t.detach().to("cpu", copy=True) for name, t in live.items()}
        with torch.no_grad():
            for name, t in live.items():
                t.copy_(self._lora_teacher[name].to(device=t.device, dtype=t.dtype))
        try:
            yield
        finally:
            # re-read: an offload between the copies may have moved the parameters
            live = shards.trainable_shards(self._actor_module)
            with torch.no_grad():
                for name, t in live.items():
                    t.copy_(student[name].to(device=t.device, dtype=t.dtype))

    def _teacher_params(self) -> dict[str, torch.Tensor]:
        """The parameters whose shards are the teacher's (LoRA: the student's adapter, for layouts)."""
        module = self._actor_module if self._teacher_in_adapter else self.ref.engine.module
        shards.reshard(module)
        trained = {name for name, p in self._actor_module.named_parameters() if p.requires_grad}
        return {name: p for name, p in module.named_parameters() if name in trained}

    def _teacher_tensors(self) -> dict[str, torch.Tensor]:
        """``{name: the teacher's local shard}`` (writable views)."""
        if self._teacher_in_adapter:
            return dict(self._lora_teacher)
        return {name: shards.local_shard(p) for name, p in self._teacher_params().items()}

    def _rank_world(self) -> tuple[int, int]:
        return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
