"""The moving teacher's shard-wise update on real FSDP2 shards, two CPU ranks, in-process (no verl).

Two gloo processes shard the tiny Qwen3 of the CPU runs as verl's FSDP2 engine does (each
decoder layer, then the root; the teacher copy with CPU offload like verl's reference model),
train the student a few SGD steps, and update the teacher with recipe/sgsd/teacher_shards.py
after each. Checked against full tensors gathered only for the check: the EMA recursion, the
periodic copy, the logged distance, the per-rank checkpoint (consolidated, and resumed into a
fresh teacher that then continues like the uninterrupted one), that an update needs no other
rank (one rank updates alone), and the refusals (another sharding, another world size).
The same code inside verl's trainer: tests/recipe/test_moving_teacher_e2e.py.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from sgsd.teacher_schedule import TeacherSchedule

WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded(model_dir: Path, *, offload: bool, placement=None):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    kwargs = {"mesh": init_device_mesh("cpu", (WORLD,)), "reshard_after_forward": True,
              "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
              "offload_policy": CPUOffloadPolicy(pin_memory=False) if offload else None}
    if placement is not None:
        kwargs["shard_placement_fn"] = placement
    for layer in model.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _full(model) -> dict[str, torch.Tensor]:
    """Test-only: every parameter gathered (the update itself never does this)."""
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}


def _chunk(full: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.chunk(full, WORLD, dim=0)[rank]  # FSDP2's Shard(0)


def _rank_main(rank: int, port: int, model_dir: str, folder: str) -> None:
    import torch.distributed as dist

    from recipe.sgsd import teacher_shards as ts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model_dir, folder = Path(model_dir), Path(folder)
        student = _sharded(model_dir, offload=False)
        ema_teacher = _sharded(model_dir, offload=True)  # verl's reference model: CPUOffloadPolicy
        periodic_teacher = _sharded(model_dir, offload=True)
        theta0 = _full(student)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
        ema, periodic = TeacherSchedule("ema", decay=0.5), TeacherSchedule("periodic", period=2)
        torch.manual_seed(0)
        inputs = torch.randint(0, student.config.vocab_size, (2, 12))
        students = []
        for step in range(1, STEPS + 1):
            optimizer.zero_grad()
            student(inputs).logits.float().logsumexp(-1).mean().backward()
            optimizer.step()
            students.append(_full(student))
            before = _full(ema_teacher)
            stats = ts.blend_shards(ts.paired_shards(student, ema_teacher), ema.weight(step))
            # the logged distance: this rank's sums add up to the full tensors' (taken before the update)
            total = torch.tensor([stats.sq_distance, stats.sq_student], dtype=torch.float64)
            dist.all_reduce(total)
            full_distance = sum(float((before[n].double() - students[-1][n].double()).square().sum()) for n in before)
            assert total[0].item() == pytest.approx(full_distance, rel=1e-9)
            if periodic.weight(step) is not None:
                ts.blend_shards(ts.paired_shards(student, periodic_teacher), periodic.weight(step))
        for teacher, schedule in ((ema_teacher, ema), (periodic_teacher, periodic)):
            got = _full(teacher)
            for name in theta0:
                expected = schedule.expected(theta0[name], [s[name] for s in students])
                torch.testing.assert_close(got[name].double(), expected, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(_full(periodic_teacher), students[1])  # the student of step 2, exactly

        # the checkpoint: one file per rank, consolidated to the full teacher
        params = dict(ema_teacher.named_parameters())
        ts.save_rank(folder, rank, WORLD, {n: ts.local_shard(p) for n, p in params.items()},
                     {n: ts.layout_of(p) for n, p in params.items()})
        dist.barrier()
        if rank == 0:
            ts.write_meta(folder, {"kind": "ema", "world": WORLD})
        dist.barrier()
        saved = ts.consolidate(folder)
        for name, tensor in _full(ema_teacher).items():
            assert torch.equal(saved[name], tensor), name

        # resume: a fresh teacher (theta_0) takes the saved shards and continues exactly like this one
        resumed = _sharded(model_dir, offload=True)
        restored = ts.load_rank(folder, rank, WORLD)
        with torch.no_grad():
            for name, p in resumed.named_parameters():
                ts.local_shard(p).copy_(restored.tensors[name])
        optimizer.zero_grad()
        student(inputs).logits.float().logsumexp(-1).mean().backward()
        optimizer.step()
        for teacher in (ema_teacher, resumed):
            ts.blend_shards(ts.paired_shards(student, teacher), ema.weight(STEPS + 1))
        for name, tensor in _full(ema_teacher).items():
            assert torch.equal(_full(resumed)[name], tensor), name

        # no communication: rank 0 updates alone (a collective would wait for rank 1 until the timeout)
        expected0 = {n: _chunk(t, 0) for n, t in _full(student).items()}
        dist.barrier()
        if rank == 0:
            ts.blend_shards(ts.paired_shards(student, resumed), 1.0)
            for name, p in resumed.named_parameters():
                assert torch.equal(ts.local_shard(p), expected0[name]), name
        dist.barrier()

        # refusals: a teacher split along another dim; a checkpoint of another world size
        from torch.distributed.tensor import Shard

        other = _sharded(model_dir, offload=True, placement=lambda p: Shard(1) if p.ndim == 2 else Shard(0))
        with pytest.raises(ts.ShardLayoutError, match=r"parameter 'model\.\S+\.weight' is split differently"):
            ts.paired_shards(student, other)
        with pytest.raises(FileNotFoundError, match="resumes on the world size it was saved with"):
            ts.load_rank(folder, rank, 4)
    finally:
        dist.destroy_process_group()


def test_shard_wise_ema_and_periodic_updates_checkpoint_and_resume_on_two_fsdp2_ranks(run_model_dir, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(_free_port(), str(run_model_dir), str(tmp_path / "teacher")), nprocs=WORLD,
             join=True)


def test_only_the_trained_parameters_are_paired(run_model_dir):
    """LoRA: the adapter is what the optimizer trains; the frozen base is shared, never copied."""
    from recipe.sgsd import teacher_shards as ts
    from tests.tiny_policy import load_model

    student, teacher = load_model(run_model_dir), load_model(run_model_dir)
    for name, p in student.named_parameters():
        p.requires_grad_("q_proj" in name)
    pairs = ts.paired_shards(student, teacher)
    assert pairs and all("q_proj" in name for name, _, _ in pairs)
    assert set(ts.trainable_shards(student)) == {name for name, _, _ in pairs}
    # plain (unsharded) tensors pair too: the local shard is the whole parameter
    name, mine, theirs = pairs[0]
    assert mine.data_ptr() == dict(student.named_parameters())[name].data_ptr()
    del teacher.model.layers[0].self_attn.q_proj
    with pytest.raises(ts.ShardLayoutError, match=r"the teacher model has no parameter 'model\.layers\.0\.self_attn"):
        ts.paired_shards(student, teacher)
