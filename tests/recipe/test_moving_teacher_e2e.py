"""Moving teachers (sgsd.teacher=ema|periodic, paper Fig. 3b) through verl 0.9.1's real trainer on CPU.

The default tier's launch (``moving_teacher_run``, tests/launches.py): an EMA teacher of decay 0.5
in verl's reference model, full fine-tuning, 2 steps, a checkpoint after each. Every step's
student (the checkpoint's hf_model) and teacher (``global_step_N/sgsd/teacher/``) are read back
and checked against what they must be, computed here independently: the EMA recursion from the
initial model, the teacher log-probs the pass dumped (``SGSD_DEBUG_DUMP_DIR``) against a plain
transformers forward of the tiny model loaded with the teacher's weights, and the logged metrics.
``--all`` adds that run resumed to step 3 and a periodic teacher kept as a LoRA adapter copy.
The update's arithmetic on two FSDP2 ranks: tests/recipe/test_teacher_shards.py.
"""

from __future__ import annotations

import glob
import math

import pytest
import torch

from recipe.sgsd.cpu.run import CPURun
from recipe.sgsd.teacher_shards import consolidate, read_meta
from sgsd.teacher_schedule import TeacherSchedule
from tests.tiny_policy import LOGGED_TOLERANCE, load_model, response_log_probs

pytestmark = pytest.mark.slow

EMA = TeacherSchedule("ema", decay=0.5)  # tests/launches.py EMA_TEACHER
PERIODIC = TeacherSchedule("periodic", period=2)  # PERIODIC_LORA_TEACHER
LORA_SCALE = 16 / 8  # lora_alpha / lora_rank


def _initial(run: CPURun) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run.model_dir / "model.safetensors")


def _student(run: CPURun, step: int) -> dict[str, torch.Tensor]:
    """The actor after ``step`` (its checkpoint's hf_model copy)."""
    from safetensors.torch import load_file

    return load_file(run.checkpoint_dir / f"global_step_{step}" / "actor" / "huggingface" / "model.safetensors")


def _teacher(run: CPURun, step: int) -> dict[str, torch.Tensor]:
    """The teacher after ``step``, its per-rank shards put back together."""
    return consolidate(run.checkpoint_dir / f"global_step_{step}" / "sgsd" / "teacher")


def _model(run: CPURun, state: dict[str, torch.Tensor]):
    model = load_model(run.model_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)  # tied to the embedding
    return model


def _errors(model, dump) -> list[float]:
    """Mean |log-prob difference| of each scored teacher sequence against ``model``'s forward."""
    return [(response_log_probs(model, torch.tensor(dump["prompt_ids"][j]), dump["responses"][owner],
                                dump["temperature"]) - dump["scored"][j].float()).abs().mean().item()
            for j, owner in enumerate(dump["owner"])]


def _dump(run: CPURun, step: int) -> dict:
    return torch.load(run.workdir / "dump" / f"teacher_pass_step{step:04d}.pt")


def _max_abs(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _check_ema(run: CPURun, steps: int) -> None:
    theta0 = _initial(run)
    students = [_student(run, s) for s in range(1, steps + 1)]
    for step in range(1, steps + 1):
        teacher = _teacher(run, step)
        assert set(teacher) == set(theta0)  # full fine-tuning: every parameter
        for name, tensor in teacher.items():
            expected = EMA.expected(theta0[name], [s[name] for s in students[:step]])
            torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6, msg=f"step {step}: {name}")
        assert _max_abs(teacher, theta0) > 1e-3 and _max_abs(teacher, students[step - 1]) > 1e-3  # between the two


def test_ema_teacher_in_the_reference_model_is_the_recursion_at_every_checkpoint(moving_teacher_run):
    _check_ema(moving_teacher_run, 2)
    meta = read_meta(moving_teacher_run.checkpoint_dir / "global_step_2" / "sgsd" / "teacher")
    assert (meta["kind"], meta["where"], meta["decay"], meta["step"], meta["updates"], meta["world"]) == (
        "ema", "reference_model", 0.5, 2, 2, 1)
    # one file of local shards per rank, then teacher.json, in verl's global_step_N/ (its
    # latest-iteration marker is written after them)
    folder = moving_teacher_run.checkpoint_dir / "global_step_2" / "sgsd" / "teacher"
    assert sorted(p.name for p in folder.iterdir()) == ["teacher.json", "teacher_rank00000_of00001.pt"]


def test_the_teacher_pass_scores_with_the_teacher_weights_not_the_students(moving_teacher_run):
    run = moving_teacher_run
    # step 1: theta_T(0) = the initial policy
    assert max(_errors(load_model(run.model_dir), _dump(run, 1))) < LOGGED_TOLERANCE
    # step 2: theta_T(1) = (theta_0 + theta_S(1)) / 2, neither the student of step 1 nor the initial model
    dump = _dump(run, 2)
    assert max(_errors(_model(run, _teacher(run, 1)), dump)) < LOGGED_TOLERANCE
    for other in (_student(run, 1), _initial(run)):
        errors = _errors(_model(run, other), dump)
        assert sum(errors) / len(errors) > 2 * LOGGED_TOLERANCE


def test_the_logged_update_is_the_one_the_checkpoints_hold(moving_teacher_run):
    run = moving_teacher_run
    steps = {s["step"]: s["data"] for s in run.metrics()}
    teachers = {0: _initial(run), 1: _teacher(run, 1)}
    for step in (1, 2):
        m, student = steps[step], _student(run, step)
        assert (m["sgsd/teacher/update_weight"], m["sgsd/teacher/updates"]) == (0.5, float(step))
        # the distance before the update: the teacher of the previous step vs this step's student
        distance = math.sqrt(sum(float((teachers[step - 1][k].double() - student[k].double()).square().sum())
                                 for k in student))
        norm = math.sqrt(sum(float(v.double().square().sum()) for v in student.values()))
        assert m["sgsd/teacher/rel_distance"] == pytest.approx(distance / norm, rel=1e-5)
        assert m["timing_s/sgsd_teacher_update"] >= 0


@pytest.mark.sweep
def test_a_resumed_run_continues_the_same_teacher(moving_teacher_resumed):
    """verl resumes from global_step_2: the teacher saved there scores step 3 and takes its update."""
    run = moving_teacher_resumed
    assert [s["step"] for s in run.metrics()] == [1, 2, 3]
    _check_ema(run, 3)  # theta_T(3) = d theta_T(2) [restored] + (1 - d) theta_S(3)
    dump = _dump(run, 3)
    assert max(_errors(_model(run, _teacher(run, 2)), dump)) < LOGGED_TOLERANCE
    # a teacher rebuilt from the initial model instead of restored would score like theta_0
    errors = _errors(load_model(run.model_dir), dump)
    assert sum(errors) / len(errors) > 2 * LOGGED_TOLERANCE
    assert {s["step"]: s["data"] for s in run.metrics()}[3]["sgsd/teacher/updates"] == 3.0


# ----------------------------------------------------------------------------- LoRA: an adapter copy
def _adapter(run: CPURun, step: int) -> dict[str, torch.Tensor]:
    """The student's LoRA adapter after ``step`` (the hf_model copy holds it unmerged)."""
    return {k: v for k, v in _student(run, step).items() if ".lora_" in k}


def _merged(run: CPURun, adapter: dict[str, torch.Tensor]):
    """The tiny model with ``adapter`` merged by hand: W + (alpha / r) B A."""
    state = dict(_initial(run))
    for name, a in adapter.items():
        if ".lora_A." in name:
            b = adapter[name.replace(".lora_A.", ".lora_B.")]
            target = name.removeprefix("base_model.model.").replace(".lora_A.default.weight", ".weight")
            state[target] = state[target] + LORA_SCALE * b.float() @ a.float()
    return _model(run, state)


@pytest.mark.sweep
def test_periodic_lora_teacher_is_the_adapter_of_its_last_copy_step(periodic_lora_run):
    run = periodic_lora_run
    teachers = {s: _teacher(run, s) for s in (1, 2, 3)}
    students = {s: _adapter(run, s) for s in (1, 2, 3)}
    assert set(teachers[1]) == set(students[1]) and all(".lora_" in k for k in teachers[1])  # the adapter only
    # before the first copy: the initial adapter, whose B = 0 makes it the base model
    assert all(not v.any() for k, v in teachers[1].items() if ".lora_B." in k)
    for step in (2, 3):  # copied after step 2 (2 % 2 == 0), kept after step 3
        assert all(torch.equal(teachers[step][k], students[2][k]) for k in students[2])
    assert not all(torch.equal(teachers[3][k], students[3][k]) for k in students[3])
    logged = {s["step"]: s["data"]["sgsd/teacher/update_weight"] for s in run.metrics()}
    assert logged == {s: PERIODIC.weight(s) or 0.0 for s in (1, 2, 3)}
    # the teacher pass scored with the swapped-in adapter: the base at step 2, the student of step 2 at step 3
    base, dump2 = load_model(run.model_dir), _dump(run, 2)
    assert max(_errors(base, dump2)) < LOGGED_TOLERANCE
    errors = _errors(_merged(run, students[1]), dump2)
    assert sum(errors) / len(errors) > 2 * LOGGED_TOLERANCE
    assert max(_errors(_merged(run, teachers[3]), _dump(run, 3))) < LOGGED_TOLERANCE
    # ...and swapped the student's adapter back: the live log-probs of step 2's update are the student
    # of step 1 (not the base the teacher pass had just scored with)
    by_response = {tuple(r.tolist()): i for i, r in enumerate(dump2["responses"])}
    student1, checked = _merged(run, students[1]), 0
    for path in glob.glob(str(run.workdir / "dump" / "loss_*.pt")):
        mb = torch.load(path)
        for b in range(mb["student"].shape[0]):
            length = int(mb["response_mask"][b].sum())
            i = by_response.get(tuple(mb["responses"][b, :length].tolist()))
            if i is None:
                continue  # another step's micro-batch
            live = mb["student"][b, :length].float()
            prompt, response = dump2["student_prompts"][i], dump2["responses"][i]
            assert (response_log_probs(student1, prompt, response) - live).abs().mean() < LOGGED_TOLERANCE
            assert (response_log_probs(base, prompt, response) - live).abs().mean() > 2 * LOGGED_TOLERANCE
            checked += 1
    assert checked == len(dump2["responses"])



@pytest.mark.sweep
def test_the_ema_teacher_variant_of_the_8b_script_updates_each_ranks_adapter_shards(tmp_path, run_model_dir,
                                                                                    run_data_dir):
    """``VARIANT=ema_teacher`` on the 8B script's own config (LoRA rank 64, FSDP2) on 2 CPU ranks: each
    rank saved only its half of every adapter tensor, and together they are the EMA of the step."""
    from torch.distributed.tensor import DTensor

    from tests.launches import REWARD, simulate

    work = tmp_path / "sim"
    done = simulate("run_sgsd_qwen3_8b.sh", work, run_model_dir, run_data_dir, "--max-response-length", "64",
                    *REWARD, "sgsd.teacher_ema_decay=0.5", "actor_rollout_ref.actor.optim.lr=5e-2",
                    env={"VARIANT": "ema_teacher"})
    assert done.returncode == 0, done.stderr[-4000:]
    step = work / "checkpoints" / "global_step_1"
    folder = step / "sgsd" / "teacher"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["teacher_rank00000_of00002.pt",
                                                           "teacher_rank00001_of00002.pt"]
    teacher = consolidate(folder)
    ranks = [torch.load(step / "actor" / f"model_world_size_2_rank_{r}.pt", weights_only=False) for r in (0, 1)]
    local = [{n: (t.to_local() if isinstance(t, DTensor) else t) for n, t in r.items()} for r in ranks]
    assert teacher and all(".lora_" in name for name in teacher)
    for name, tensor in teacher.items():
        assert local[0][name].shape[0] < tensor.shape[0]  # a shard, not the whole tensor
        student = torch.cat([local[0][name], local[1][name]])
        if ".lora_B." in name:  # B starts at 0: theta_T(1) = 0.5 * 0 + 0.5 * theta_S(1)
            torch.testing.assert_close(tensor, 0.5 * student, rtol=0, atol=1e-7)
    assert any(local[0][n].abs().max() > 1e-3 for n in teacher if ".lora_B." in n)  # the student moved
