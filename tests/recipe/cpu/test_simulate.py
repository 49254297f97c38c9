"""The GPU scripts' own geometry on CPU ranks (recipe/sgsd/cpu/simulate.py,
``bash scripts/simulate_gpu_run.sh SCRIPT``).

In-process: what the simulation scales and swaps, that its per-rank counts are the GPU run's,
and what it refuses. Real launches, ONE step of the script's config on 2 CPU ranks through
verl's real trainer (the session's shared launches, tests/launches.py): the 8B SGSD script,
with the checks the one-rank end-to-end tests make, now across two ranks (teacher log-probs
vs an independent forward, every micro-batch's loss vs the library objective, the bank's
window sees every rollout once); the 8B GRPO script; the SGSD script on its pre-fix geometry,
where verl itself asserts (the simulation catches what the 8-GPU run would have hit); and, in
the ``--all`` tier, the frozen-teacher variant.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from recipe.sgsd.cpu import simulate
from recipe.sgsd.cpu.simulate import Simulation, SimulationError, compare_geometries, compose, geometry_of

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "scripts"
AR = "actor_rollout_ref"
# the SGSD scripts' batching before the fix: fixed micro-batches of 2 (update) and 4 (log-probs)
PRE_FIX = [f"{AR}.actor.use_dynamic_bsz=false", f"{AR}.rollout.log_prob_use_dynamic_bsz=false",
           f"{AR}.ref.log_prob_use_dynamic_bsz=false", f"{AR}.actor.ppo_micro_batch_size_per_gpu=2",
           f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4", f"{AR}.ref.log_prob_micro_batch_size_per_gpu=4"]
VERL_ASSERTION = "data size must be divisible by force_group_size * micro_batch_size_per_gpu"


def _recorded(script: str, *args: str, variant: str | None = None) -> list[str]:
    env = dict(os.environ)
    if variant:
        env["VARIANT"] = variant
    return simulate.record_script(SCRIPTS / script, list(args), env=env)


def _simulation(tmp_path, script: str, *args: str, variant: str | None = None, ranks: int = 2) -> Simulation:
    return Simulation(_recorded(script, *args, variant=variant), tmp_path / "sim", ranks=ranks,
                      model_dir=tmp_path / "model", data_dir=tmp_path / "data")


# ----------------------------------------------------------------------------- in-process
def test_the_8b_script_is_scaled_to_two_ranks_and_keeps_every_per_rank_count(tmp_path):
    sim = _simulation(tmp_path, "run_sgsd_qwen3_8b.sh")
    overrides = sim.overrides()
    assert {c.key: (c.before, c.after) for c in sim.scaled} == {
        "data.train_batch_size": ("16", "4"), f"{AR}.actor.ppo_mini_batch_size": ("16", "4")}
    swapped = {c.key: c.after for c in sim.swapped}
    assert swapped[f"{AR}.rollout.name"] == "hf" and swapped[f"{AR}.model.path"] == str(tmp_path / "model")
    assert swapped[f"{AR}.model.override_config.attn_implementation"] == "sdpa"
    assert swapped["trainer.n_gpus_per_node"] == "2" and swapped["trainer.total_training_steps"] == "1"
    assert f"{AR}.rollout.log_prob_max_token_len_per_gpu" not in swapped  # the script's budgets stay
    gpu, cpu = compose(sim.script_overrides), compose(overrides)
    # everything else as the script has it
    for key in (f"{AR}.actor.use_dynamic_bsz", f"{AR}.rollout.log_prob_max_token_len_per_gpu",
                f"{AR}.actor.ppo_max_token_len_per_gpu", f"{AR}.rollout.n", f"{AR}.model.lora_rank",
                "sgsd.top_k", "sgsd.teacher", "sgsd.bank_path", "sgsd.max_teacher_prompt_length",
                "trainer.test_freq", "trainer.save_freq"):
        assert _select(cpu, key) == _select(gpu, key), key
    assert cpu.sgsd["update"] == gpu.sgsd["update"]
    gpu_geometry, cpu_geometry = geometry_of(gpu), geometry_of(cpu)
    assert (gpu_geometry.world, cpu_geometry.world) == (8, 2)
    assert compare_geometries(gpu_geometry, cpu_geometry) == []
    per_rank = {p.name: p.per_rank for p in cpu_geometry.passes}
    assert per_rank["old log-prob"] == 2 and per_rank["teacher pass (<= 8 per rollout)"] == 16


def test_the_grpo_script_and_a_frozen_variant_keep_their_per_rank_counts(tmp_path):
    for script, variant, passes in (("run_grpo_qwen3_8b.sh", None, 2), ("run_sgsd_qwen3_8b.sh", "frozen_teacher", 3)):
        sim = _simulation(tmp_path, script, variant=variant)
        cpu = compose(sim.overrides())
        assert compare_geometries(geometry_of(compose(sim.script_overrides)), geometry_of(cpu)) == []
        assert len(geometry_of(cpu).passes) == passes
    assert cpu.sgsd.teacher == "frozen"


@pytest.mark.parametrize("script", ["run_sdar_qwen3_4b_sokoban.sh", "run_sgsd_qwen3_4b_sokoban.sh"])  # n = 8, n = 1
def test_the_sokoban_scripts_simulate_on_episode_data_with_their_per_rank_counts(tmp_path, script):
    """The Sokoban scripts keep their per-rank counts on 2 CPU ranks, train on episode rows
    written here, and cap what only sets CPU generation time (the turn and trajectory budgets)."""
    sim = _simulation(tmp_path, script)
    assert sim.episodes
    overrides = sim.overrides()
    swapped = {c.key: c.after for c in sim.swapped}
    assert swapped["data.train_files"] == str(tmp_path / "data" / "sokoban_train.parquet")
    assert swapped["data.val_files"] == str(tmp_path / "data" / "sokoban_test.parquet")
    assert swapped["sgsd.agent.max_turn_tokens"] == "24" and int(swapped["data.max_response_length"]) <= 448
    gpu, cpu = compose(sim.script_overrides), compose(overrides)
    for key in (f"{AR}.rollout.n", "sgsd.method", "sgsd.distill_coef", "sgsd.skills.files", "sgsd.bank_path",
                f"{AR}.actor.optim.lr", f"{AR}.rollout.log_prob_max_token_len_per_gpu"):
        assert _select(cpu, key) == _select(gpu, key), key
    assert compare_geometries(geometry_of(gpu), geometry_of(cpu)) == []
    sim.prepare()  # the levels: episode rows, the test boards disjoint from the training ones
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "data" / "sokoban_train.parquet").to_pylist()
    assert rows[0]["agent_name"] == "sgsd_episode" and rows[0]["extra_info"]["env"]["name"] == "sokoban"


def test_a_count_that_does_not_scale_is_refused(tmp_path):
    with pytest.raises(SimulationError, match="3 CPU ranks cannot stand in for 8 GPUs"):
        _simulation(tmp_path, "run_sgsd_qwen3_8b.sh", ranks=3).overrides()
    with pytest.raises(SimulationError, match=r"data\.train_batch_size=2 on 8 GPUs does not scale to 2 CPU ranks"):
        _simulation(tmp_path, "run_sgsd_qwen3_8b.sh", "data.train_batch_size=2",
                    f"{AR}.actor.ppo_mini_batch_size=2").overrides()


def test_the_pre_fix_geometry_is_refused_before_anything_starts(tmp_path, capsys):
    code = simulate.main([str(SCRIPTS / "run_sgsd_qwen3_8b.sh"), "--workdir", str(tmp_path / "sim"), *PRE_FIX])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4 does not divide the 2 sequences" in err
    assert not (tmp_path / "sim").exists()  # nothing built, nothing launched


def test_the_wrapper_names_its_usage():
    done = subprocess.run(["bash", str(SCRIPTS / "simulate_gpu_run.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash scripts/simulate_gpu_run.sh SCRIPT" in done.stderr


# ----------------------------------------------------------------------------- the 8B SGSD script, 2 ranks
def _dump(workdir: Path) -> dict:
    return torch.load(workdir / "dump" / "teacher_pass_step0001.pt")


@pytest.mark.slow
def test_the_8b_sgsd_script_trains_one_step_on_two_cpu_ranks(sgsd_8b_simulation):
    out = (sgsd_8b_simulation / "simulate.out").read_text()
    assert "[simulate] scaled  data.train_batch_size: 16 -> 4  (2 CPU ranks for 8 GPUs)" in out
    assert "[simulate] swapped actor_rollout_ref.rollout.name: vllm -> hf" in out
    assert "[simulate] geometry on the GPUs:  8 ranks, DP 8, 16 rollouts per step" in out
    assert "[cpu_run] step 1/1" in out
    steps = {r["step"]: r["data"] for r in map(json.loads, (sgsd_8b_simulation / "metrics.jsonl").open())}
    step = steps[1]
    assert math.isfinite(step["sgsd/loss"]) and step["actor/grad_norm"] > 0
    assert step["sgsd/teachers_per_problem"] == 8 and step["sgsd/success_rate"] == 0.5
    assert "val-core/math/acc/mean@12" in steps[0]  # validation before training, as the script runs it
    actor = sgsd_8b_simulation / "checkpoints" / "global_step_1" / "actor"
    assert {p.name for p in actor.glob("model_world_size_2_rank_*.pt")} == {
        "model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"}


@pytest.mark.slow
def test_teacher_log_probs_on_both_ranks_equal_an_independent_forward(sgsd_8b_simulation, run_model_dir):
    """Step 1 scores with the initial weights (LoRA's B starts at zero): a fresh model agrees."""
    from tests.tiny_policy import LOGGED_TOLERANCE as TOLERANCE
    from tests.tiny_policy import load_model, response_log_probs

    dump = _dump(sgsd_8b_simulation)
    model = load_model(run_model_dir)
    assert set(dump["scoring_rank"]) == {0, 1} and len(dump["owner"]) == 4 * 8
    for j, owner in enumerate(dump["owner"]):
        response = dump["responses"][owner]
        reference = response_log_probs(model, torch.tensor(dump["prompt_ids"][j]), response, dump["temperature"])
        assert (reference - dump["scored"][j].float()).abs().mean().item() < TOLERANCE, (j, dump["scoring_rank"][j])
        if dump["slot"][j] == 0:  # ...and the teacher's context mattered
            student = response_log_probs(model, dump["student_prompts"][owner], response, dump["temperature"])
            assert (student - dump["scored"][j].float()).abs().mean().item() > 4 * TOLERANCE


@pytest.mark.slow
def test_every_micro_batch_loss_on_both_ranks_is_the_library_objective(sgsd_8b_simulation, tmp_path):
    from sgsd.config import SGSDConfig
    from sgsd.objective import sgsd_objective

    sim = _simulation(tmp_path, "run_sgsd_qwen3_8b.sh")
    sgsd = compose(sim.overrides()).sgsd
    from omegaconf import OmegaConf

    cfg = SGSDConfig.from_mapping(OmegaConf.to_container(sgsd, resolve=True)).objective_config()
    dump = _dump(sgsd_8b_simulation)
    by_response = {}
    for j, (owner, slot) in enumerate(zip(dump["owner"], dump["slot"])):
        by_response.setdefault(tuple(dump["responses"][owner].tolist()), {"alpha": dump["alpha"][owner]})[slot] = \
            dump["scored"][j]
    files = sorted(glob.glob(str(sgsd_8b_simulation / "dump" / "loss_*.pt")))
    assert len({Path(f).name.split("_")[1] for f in files}) == 2  # written by both ranks' processes
    seen = 0
    for mb in map(torch.load, files):
        assert mb["dp_size"].item() == 2 and mb["global_batch_size"].item() == 4
        out = sgsd_objective(mb["student"], mb["teacher"], mb["token_mask"], mb["alpha"], mb["sign"], cfg,
                             response_mask=mb["response_mask"])
        assert mb["loss"].item() == pytest.approx((out.loss.sum() / 4 * 2).item(), rel=1e-5, abs=1e-7)
        for b in range(mb["student"].shape[0]):
            length = int(mb["response_mask"][b].sum())
            entry = by_response[tuple(mb["responses"][b, :length].tolist())]
            torch.testing.assert_close(mb["alpha"][b], entry["alpha"].to(mb["alpha"].dtype))
            for k in range(8):
                torch.testing.assert_close(mb["teacher"][b, k, :length].float(), entry[k].float())
            seen += 1
    assert seen == 4  # every rollout of the step reached the loss exactly once, on one of the ranks


@pytest.mark.slow
def test_the_bank_window_holds_every_rollout_of_both_ranks_exactly_once(sgsd_8b_simulation):
    dump = _dump(sgsd_8b_simulation)
    state = json.loads((sgsd_8b_simulation / "checkpoints" / "global_step_1" / "sgsd" / "evolution_state.json")
                       .read_text())["window"]
    records = state["success"] + state["failure"]
    # 4 training rollouts; the 2 x 48 validation rollouts (before and after the step) stay out
    assert state["seen"] == {"success": 2, "failure": 2}
    assert sorted(r["problem"] for r in records) == sorted(dump["problems"])
    assert len({r["response"] for r in records}) == 4


# ----------------------------------------------------------------------------- GRPO, and the pre-fix geometry
@pytest.mark.slow
def test_the_8b_grpo_script_trains_one_step_on_two_cpu_ranks(grpo_8b_simulation):
    out = (grpo_8b_simulation / "simulate.out").read_text()
    assert "[simulate] scaled  data.train_batch_size: 16 -> 4  (2 CPU ranks for 8 GPUs)" in out
    assert "[simulate] swapped data.max_response_length: 16000 -> 256" in out
    step = {r["step"]: r["data"] for r in map(json.loads, (grpo_8b_simulation / "metrics.jsonl").open())}[1]
    # a reward by response parity: the 8 rollouts of a problem differ, advantages are not all 0
    assert 0 < step["critic/score/mean"] < 1 and math.isfinite(step["actor/pg_loss"]) and step["actor/grad_norm"] > 0
    assert "sgsd/loss" not in step
    assert step["global_seqlen/mean"] > 0  # 32 rollouts balanced over the 2 ranks
    assert len(list((grpo_8b_simulation / "checkpoints" / "global_step_1" / "actor")
                    .glob("model_world_size_2_rank_*.pt"))) == 2


@pytest.mark.slow
@pytest.mark.sweep  # --all only since the learning tests joined the default tier; in the default tier
# test_the_pre_fix_geometry_is_refused_before_anything_starts checks the same geometry in process
def test_on_the_pre_fix_geometry_verl_itself_asserts_at_the_first_log_prob_pass(tmp_path, run_model_dir,
                                                                                 run_data_dir):
    """The simulation can catch defect 1: with main_sgsd's check off, verl's own assertion."""
    from tests.launches import simulate as launch_simulation

    done = launch_simulation("run_sgsd_qwen3_8b.sh", tmp_path / "sim", run_model_dir, run_data_dir,
                             "--max-response-length", "32", *PRE_FIX, "trainer.val_before_train=false",
                             env={"SGSD_GEOMETRY_CHECK": "0"})
    assert done.returncode != 0
    assert VERL_ASSERTION in (tmp_path / "sim" / "train.log").read_text()
    assert "training failed" in done.stderr


@pytest.mark.sweep
def test_the_frozen_teacher_variant_trains_one_step_on_two_cpu_ranks(tmp_path, run_model_dir, run_data_dir):
    from tests.launches import REWARD
    from tests.launches import simulate as launch_simulation

    done = launch_simulation("run_sgsd_qwen3_8b.sh", tmp_path / "sim", run_model_dir, run_data_dir,
                             "--max-response-length", "128", *REWARD, env={"VARIANT": "frozen_teacher"})
    assert done.returncode == 0, done.stderr[-4000:]
    step = {r["step"]: r["data"] for r in map(json.loads, (tmp_path / "sim" / "metrics.jsonl").open())}[1]
    assert math.isfinite(step["sgsd/loss"]) and step["sgsd/teachers_per_problem"] == 8


def _select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


@pytest.mark.slow
@pytest.mark.sweep
def test_sdar_on_the_8b_grpo_script_trains_one_step_on_two_cpu_ranks(tmp_path, run_model_dir, run_data_dir):
    """SDAR as its GPU command composes it (VARIANT=sdar on run_grpo_qwen3_8b.sh: n = 8, KL, the
    shipped math skill files) on 2 CPU ranks: every micro-batch of both ranks is the library's
    L_SDAR on what it received, scaled with the global token count both ranks agree on."""
    from sgsd.sd_objectives import GlobalBatch, SDARConfig, sdar_loss
    from tests.launches import REWARD
    from tests.launches import simulate as launch_simulation

    done = launch_simulation("run_grpo_qwen3_8b.sh", tmp_path / "sim", run_model_dir, run_data_dir,
                             "--max-response-length", "64", REWARD[0],
                             "reward.custom_reward_function.name=compute_score_by_response",
                             env={"VARIANT": "sdar", "SGSD_DEBUG_DUMP_DIR": str(tmp_path / "dump")})
    assert done.returncode == 0, done.stderr[-4000:]
    step = {r["step"]: r["data"] for r in map(json.loads, (tmp_path / "sim" / "metrics.jsonl").open())}[1]
    assert step["sgsd/teachers_per_problem_retrieved"] == 1 and 0 < step["sgsd/sdar/gate_mean"] < 1
    assert step["actor/kl_coef"] == 0.01 and math.isfinite(step["actor/pg_loss"])
    files = sorted(glob.glob(str(tmp_path / "dump" / "loss_*.pt")))
    dumps = [torch.load(f) for f in files]
    assert len({f.split("_")[-2] for f in files}) == 2  # both ranks' worker processes
    assert len({d["batch_num_tokens"].item() for d in dumps}) == 1  # one global count
    assert {d["dp_size"].item() for d in dumps} == {2.0}
    # verl's count is every response token of the mini-batch, each micro-batch of each rank once
    assert sum(d["response_mask"].sum().item() for d in dumps) == dumps[0]["batch_num_tokens"].item()
    for d in dumps:
        batch = GlobalBatch(dp_size=2, global_batch_size=int(d["global_batch_size"]),
                            batch_num_tokens=d["batch_num_tokens"].item())
        ref = sdar_loss(d["student"], d["teacher"], d["mask"], SDARConfig(), batch)
        assert d["loss"].item() == pytest.approx(ref.loss.item(), rel=1e-5, abs=1e-9)


# ----------------------------------------------------------------------------- Sokoban, 2 ranks (--all)
@pytest.mark.slow
@pytest.mark.sweep
def test_the_sokoban_sdar_script_trains_one_step_on_two_cpu_ranks(tmp_path, run_model_dir, capsys):
    """The SDAR Sokoban command (n = 8, 16 levels on 8 GPUs -> 4 levels x 8 episodes on 2 ranks):
    multi-turn episodes through the agent loop on both ranks, its teacher on the Sokoban skills."""
    code = simulate.main([str(SCRIPTS / "run_sdar_qwen3_4b_sokoban.sh"), "--workdir", str(tmp_path / "sim"),
                          "--model-dir", str(run_model_dir)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "[simulate] swapped sgsd.agent.max_turn_tokens: 512 -> 24" in out
    assert "[simulate] geometry on CPU ranks: 2 ranks, DP 2, 32 rollouts per step" in out
    step = {r["step"]: r["data"] for r in map(json.loads, (tmp_path / "sim" / "metrics.jsonl").open())}[1]
    assert math.isfinite(step["sgsd/sdar/loss"]) and 1 <= step["episode/turns"] <= 3
    assert step["training/num_turns/mean"] == 2 * step["episode/turns"]
