"""A moving teacher's weights as each rank holds them: FSDP2 local shards, never gathered.

verl's FSDP2 engine keeps every parameter as a ``DTensor``: each rank stores only its local
shard. The student (the actor) and the teacher (the reference model of a full fine-tuning run,
or a copy of the actor's LoRA adapter) are sharded alike, so the update
``theta_T <- (1 - w) theta_T + w theta_S`` (:func:`sgsd.teacher_schedule.blend_`) runs shard by
shard on each rank, one tensor at a time, with no communication. This module holds the
torch-only parts (no verl import): pairing the two models' shards (refused, naming the
parameter, when their layouts differ), the update, and the checkpoint files (one per rank) with
:func:`consolidate`, which puts a saved teacher back together as full tensors (tests, evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sgsd.atomic import atomic_path, atomic_write_json
from sgsd.teacher_schedule import blend_

__all__ = ["ShardLayoutError", "TeacherShards", "local_shard", "layout_of", "reshard", "trainable_shards",
           "paired_shards", "blend_shards", "save_rank", "load_rank", "consolidate", "rank_file", "write_meta",
           "read_meta", "META_FILE"]

FORMAT = 1
META_FILE = "teacher.json"


class ShardLayoutError(RuntimeError):
    """Student and teacher shards cannot be paired rank-locally (the message names the parameter)."""


def local_shard(param: torch.Tensor) -> torch.Tensor:
    """The tensor this rank stores: a DTensor's local shard (aliasing its storage, so in-place
    writes reach the parameter), else the parameter's data."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        with torch.no_grad():
            return param.to_local()
    return param.data


def layout_of(param: torch.Tensor) -> dict:
    """How ``param`` is split over ranks: global shape, placements, mesh shape, this rank's
    mesh coordinate and local shape (a plain tensor: unsplit)."""
    from torch.distributed.tensor import DTensor

    local = local_shard(param)
    if not isinstance(param, DTensor):
        return {"shape": list(param.shape), "placements": None, "mesh": None, "coordinate": None,
                "local_shape": list(local.shape), "dtype": str(local.dtype)}
    return {"shape": list(param.shape), "placements": [repr(p) for p in param.placements],
            "mesh": list(param.device_mesh.shape), "coordinate": list(param.device_mesh.get_coordinate() or []),
            "local_shape": list(local.shape), "dtype": str(local.dtype)}


def reshard(module: torch.nn.Module) -> None:
    """Every FSDP2 unit back to its sharded parameters, so ``named_parameters`` are the stored
    shards and not an unsharded copy a forward left behind (a no-op when already sharded)."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def _trainable(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def trainable_shards(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: local shard}`` of the parameters the optimizer trains (a LoRA adapter's only)."""
    reshard(module)
    return {name: local_shard(p) for name, p in _trainable(module)}


def paired_shards(student: torch.nn.Module, teacher: torch.nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, student shard, teacher shard)`` for every trained parameter of ``student``.

    Both models must split each parameter alike (same placements, mesh and local shape): then
    the rank-local update is the update of the full tensors. Anything else is refused, naming
    the parameter and both layouts (e.g. a reference model with another ``fsdp_size``)."""
    reshard(student)
    reshard(teacher)
    teacher_params = dict(teacher.named_parameters())
    pairs = []
    for name, param in _trainable(student):
        if name not in teacher_params:
            raise ShardLayoutError(f"the teacher model has no parameter {name!r} (student and teacher must be the "
                                   "same architecture, built from the same actor_rollout_ref.model)")
        other = teacher_params[name]
        mine, theirs = layout_of(param), layout_of(other)
        keys = ("shape", "placements", "mesh", "coordinate", "local_shape")
        if any(mine[k] != theirs[k] for k in keys):
            raise ShardLayoutError(
                f"cannot update the teacher shard-wise: parameter {name!r} is split differently in the student "
                f"(actor: {_describe(mine)}) and the teacher (reference: {_describe(theirs)}); give "
                "actor_rollout_ref.ref.fsdp_config the actor's fsdp_size and strategy")
        pairs.append((name, local_shard(param), local_shard(other)))
    return pairs


def _describe(layout: dict) -> str:
    return ", ".join(f"{k} {layout[k]}" for k in ("shape", "placements", "mesh", "local_shape"))


@dataclass
class BlendStats:
    """Squared norms summed over this rank's shards, taken BEFORE the update."""

    sq_distance: float = 0.0  # ||theta_T - theta_S||^2
    sq_student: float = 0.0  # ||theta_S||^2
    tensors: int = 0
    elements: int = 0

    def as_dict(self) -> dict:
        return {"sq_distance": self.sq_distance, "sq_student": self.sq_student, "tensors": self.tensors,
                "elements": self.elements}


@torch.no_grad()
def blend_shards(pairs, weight: float) -> BlendStats:
    """``theta_T <- (1 - weight) theta_T + weight theta_S`` for each ``(name, student, teacher)``
    shard pair (the teacher shard in place), one tensor at a time."""
    stats = BlendStats()
    for _name, student, teacher in pairs:
        source = student.to(device=teacher.device)
        stats.sq_distance += float((teacher.double() - source.double()).square().sum())
        stats.sq_student += float(source.double().square().sum())
        stats.tensors += 1
        stats.elements += source.numel()
        blend_(teacher, source, weight)
    return stats


@dataclass
class TeacherShards:
    """One rank's saved teacher: its local shards and their layouts."""

    rank: int
    world: int
    tensors: dict[str, torch.Tensor]
    layouts: dict[str, dict]


def rank_file(folder: Path, rank: int, world: int) -> Path:
    return Path(folder) / f"teacher_rank{rank:05d}_of{world:05d}.pt"


def save_rank(folder: Path, rank: int, world: int, tensors: dict[str, torch.Tensor], layouts: dict[str, dict]) -> Path:
    """Atomically write this rank's shards (CPU copies) to ``folder``."""
    path = rank_file(folder, rank, world)
    payload = {"format": FORMAT, "rank": rank, "world": world,
               "tensors": {name: t.detach().to("cpu", copy=True) for name, t in tensors.items()},
               "layouts": layouts}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_rank(folder: Path, rank: int, world: int) -> TeacherShards:
    """This rank's saved shards; a checkpoint of another world size is refused, naming both."""
    path = rank_file(folder, rank, world)
    if not path.exists():
        found = sorted(p.name for p in Path(folder).glob("teacher_rank*_of*.pt"))
        raise FileNotFoundError(f"{path}: no teacher shards of rank {rank} of {world} "
                                f"(found: {', '.join(found) or 'none'}); a moving teacher resumes on the "
                                "world size it was saved with")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: teacher shard format {payload.get('format')!r}, expected {FORMAT}")
    return TeacherShards(payload["rank"], payload["world"], payload["tensors"], payload["layouts"])


def write_meta(folder: Path, meta: dict) -> Path:
    """The folder's ``teacher.json``, written after every rank's file: a complete teacher."""
    return atomic_write_json(Path(folder) / META_FILE, {"format": FORMAT, **meta})


def read_meta(folder: Path) -> dict | None:
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.exists() else None


def consolidate(folder: Path) -> dict[str, torch.Tensor]:
    """The saved teacher as full tensors: each parameter's shards put back in mesh order (FSDP2's
    ``Shard(d)`` is a contiguous split of dim ``d``; replicated mesh dims are read once)."""
    meta = read_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{Path(folder) / META_FILE}: not a complete teacher checkpoint")
    world = int(meta["world"])
    ranks = [load_rank(folder, r, world) for r in range(world)]
    full = {}
    for name in ranks[0].tensors:
        layout = ranks[0].layouts[name]
        if layout["placements"] is None:
            full[name] = ranks[0].tensors[name]
            continue
        dims = [(axis, int(p[len("Shard(dim="):-1])) for axis, p in enumerate(layout["placements"])
                if p.startswith("Shard(dim=")]
        if len(dims) > 1:
            raise ValueError(f"{name}: sharded over several mesh dims {layout['placements']}; not supported")
        if not dims:
            full[name] = ranks[0].tensors[name]
            continue
        axis, dim = dims[0]
        pieces = {}
        for shard in ranks:
            coordinate = shard.layouts[name]["coordinate"]
            if all(c == 0 for i, c in enumerate(coordinate) if i != axis):  # one replica of each shard
                pieces[coordinate[axis]] = shard.tensors[name]
        full[name] = torch.cat([pieces[i] for i in sorted(pieces)], dim=dim)
        if list(full[name].shape) != layout["shape"]:
            raise ValueError(f"{name}: shards make {list(full[name].shape)}, the parameter is {layout['shape']}")
    return full
