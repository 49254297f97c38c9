"""The GPU launch scripts: they parse, validate through the real entry point (SGSD_DRY_RUN=1)
and carry the paper's values, read from the composed config rather than grepped."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
MATH_SCRIPTS = {  # script -> the estimator its dry run must report
    "run_sgsd_qwen3_8b.sh": "sgsd",
    "run_sgsd_qwen3_4b.sh": "sgsd",
    "run_sgsd_qwen3_1.7b.sh": "sgsd",
    "run_grpo_qwen3_8b.sh": "grpo",
}
SOKOBAN_SCRIPTS = {  # multi-turn episodes (scripts/lib/sokoban_body.sh): script -> (estimator, method)
    "run_grpo_qwen3_4b_sokoban.sh": ("grpo", None),
    "run_skillsd_qwen3_4b_sokoban.sh": ("sgsd", "skill_sd"),
    "run_sdar_qwen3_4b_sokoban.sh": ("sgsd", "sdar"),
    "run_sgsd_qwen3_4b_sokoban.sh": ("sgsd", "sgsd"),
}
# Dry runs (a verl process each, ~10 s of imports): the math scripts, and the two Sokoban scripts whose
# method adds keys to the shared body (SDAR's skill files, SGSD's bank); GRPO and Skill-SD add none,
# and every Sokoban script's composed values are checked below without a process.
RUN_SCRIPTS = {**MATH_SCRIPTS, **{script: SOKOBAN_SCRIPTS[script][0]
                                  for script in ("run_sdar_qwen3_4b_sokoban.sh", "run_sgsd_qwen3_4b_sokoban.sh")}}
EXTRA = ["sgsd.top_k=4", "actor_rollout_ref.rollout.temperature=0.7",
         "actor_rollout_ref.model.override_config.attn_implementation=sdpa"]
CONFIG_DIR = ROOT / "recipe" / "sgsd" / "config"
# Located without importing verl (seconds of imports this process does not need).
VERL_CONFIG = (Path(importlib.util.find_spec("verl").submodule_search_locations[0]) / "trainer" / "config"
               / "_generated_ppo_trainer.yaml")


def _env(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # The script's `python3` must be the one in bin_dir (this interpreter's venv, with verl),
    # and recipe.sgsd must come from this checkout.
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, dict]:
    """Every run script's real dry run, all at once: each process pays verl's ~10 s of imports."""
    cwd = tmp_path_factory.mktemp("dry_runs")  # Hydra's outputs/ lands here
    procs = {}
    for script in RUN_SCRIPTS:
        out = cwd / f"{script}.yaml"
        env = _env(Path(sys.executable).parent, SGSD_DRY_RUN="1", SGSD_DRY_RUN_OUT=str(out))
        procs[script] = (subprocess.Popen(["bash", str(SCRIPTS / script)], cwd=cwd, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE), out)
    results = {}
    for script, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        config = OmegaConf.load(out) if out.exists() else None
        results[script] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "config": config}
    return results


def _config(dry_runs, key):
    run = dry_runs[key]
    assert run["rc"] == 0, run["stderr"][-3000:]
    return run["config"]


@pytest.mark.parametrize("script", sorted(p.relative_to(SCRIPTS).as_posix() for p in SCRIPTS.rglob("*.sh")))
def test_every_shell_script_parses(script):
    done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


SGSD_BODY = 'source "$(dirname "${BASH_SOURCE[0]}")/lib/sgsd_body.sh" "$@"'
LAUNCH = "python3 -m recipe.sgsd.main_sgsd"


@pytest.mark.parametrize("script", MATH_SCRIPTS)
def test_run_script_shape(script):
    text = (SCRIPTS / script).read_text()
    assert "\nset -xeuo pipefail\n" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"' in text
    assert text.rstrip().endswith('"$@"')  # extra overrides come last, so they win
    # the launch: the GRPO script's own, or the one body every SGSD size sources last with "$@"
    launcher = SCRIPTS / "lib" / "sgsd_body.sh" if text.rstrip().endswith(SGSD_BODY) else SCRIPTS / script
    body = launcher.read_text()
    assert body.count(LAUNCH) == 1 and body.rstrip().endswith('"$@"')
    # one block chooses TRAIN_FILE (lib/common.sh), for every script
    assert "choose_train_file" in body and "student_skills" not in body
    assert not re.search(r"^\s*TRAIN_FILE=", body, re.M)


@pytest.mark.parametrize("script", [s for s, estimator in MATH_SCRIPTS.items() if estimator == "sgsd"])
def test_a_sgsd_size_script_holds_only_its_values(script):
    """What differs per model, then the shared body: nothing else to drift between sizes."""
    lines = [line for line in (SCRIPTS / script).read_text().splitlines()
             if line.strip() and not line.startswith(("#", "set ", "source "))]
    assert [line.split("=", 1)[0] for line in lines] == [
        "MODEL_PATH", "BANK_PATH", "MODEL_TAG", "LOGPROB_TOKENS_PER_GPU"]
    assert (SCRIPTS / script).read_text().rstrip().endswith(SGSD_BODY)
    assert LAUNCH not in (SCRIPTS / script).read_text()


def test_the_sgsd_body_refuses_to_run_on_its_own():
    done = subprocess.run(["bash", str(SCRIPTS / "lib" / "sgsd_body.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "run_sgsd_qwen3_" in done.stderr


def test_common_environment():
    text = (SCRIPTS / "lib" / "common.sh").read_text()
    assert "\nexport HF_HUB_ENABLE_HF_TRANSFER=1\n" in text
    assert "\nexport VERL_USE_EXTERNAL_MODULES=recipe.sgsd.plugin\n" in text


@pytest.mark.parametrize("script, estimator", RUN_SCRIPTS.items())
def test_dry_run_validates(dry_runs, script, estimator):
    _config(dry_runs, script)
    assert f"sgsd dry run: config OK ({estimator}, 8x1 GPUs)" in dry_runs[script]["stdout"]


def _common_paper_values(cfg):
    """App. E.1: every trainable method."""
    model, actor, rollout = cfg.actor_rollout_ref.model, cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert (model.lora_rank, model.lora_alpha, model.target_modules) == (64, 128, "all-linear")
    assert actor.optim.lr == 5e-6
    # the release's optimiser: linear decay to 0, no weight decay (recipe/sgsd/lr_schedule.py)
    assert (actor.optim.lr_scheduler_type, actor.optim.min_lr_ratio, actor.optim.weight_decay) == ("linear", 0.0, 0.0)
    assert model.enable_gradient_checkpointing is True and model.use_remove_padding is True
    assert model.override_config.attn_implementation == "flash_attention_2"
    assert actor.fsdp_config.dtype == "bfloat16" and rollout.dtype == "bfloat16"
    assert rollout.name == "vllm"
    # evaluation: avg@12 at temperature 1.0, top-p 0.95, no top-k
    val = rollout.val_kwargs
    assert (val.n, val.temperature, val.top_p, val.top_k, val.do_sample) == (12, 1.0, 0.95, -1, True)
    trainer = cfg.trainer
    assert (trainer.total_training_steps, trainer.save_freq, trainer.test_freq) == (200, 25, 25)
    assert (trainer.n_gpus_per_node, trainer.nnodes) == (8, 1)
    assert list(trainer.logger) == ["console", "file"]
    assert cfg.data.train_files.endswith("/data/sgsd/math_train.parquet")
    assert cfg.data.val_files.endswith("/data/sgsd/aime24.parquet")


@pytest.mark.parametrize("script, model, bank", [
    ("run_sgsd_qwen3_8b.sh", "Qwen/Qwen3-8B", "qwen3_4b"),
    ("run_sgsd_qwen3_4b.sh", "Qwen/Qwen3-4B", "qwen3_4b"),
    ("run_sgsd_qwen3_1.7b.sh", "Qwen/Qwen3-1.7B", "qwen3_1.7b"),
])
def test_sgsd_scripts_carry_the_paper_values(dry_runs, script, model, bank):
    cfg = _config(dry_runs, script)
    _common_paper_values(cfg)
    rollout, sgsd = cfg.actor_rollout_ref.rollout, cfg.sgsd
    assert cfg.actor_rollout_ref.model.path == model and sgsd.bank_path == bank
    assert cfg.algorithm.adv_estimator == "sgsd" and cfg.trainer.v1.trainer_mode == "sgsd"
    # Tab. 11, SGSD column
    assert (rollout.n, cfg.data.max_response_length, sgsd.max_teacher_prompt_length) == (1, 1024, 20000)
    assert (rollout.temperature, rollout.top_p, rollout.top_k) == (1.1, 0.95, 20)
    assert (sgsd.top_k, sgsd.teacher, sgsd.reference_answer_in_teacher) == (8, "live", False)
    # Tab. 12 and Sec. 4.1
    assert (sgsd.tau, sgsd.clip, sgsd.threshold) == (1.0, 3.0, 0.05)
    assert (sgsd.encoder, sgsd.encoder_device) == ("Qwen/Qwen3-Embedding-0.6B", "auto")
    assert (sgsd.student_thinking, sgsd.teacher_thinking) == (False, True)
    assert cfg.data.apply_chat_template_kwargs.enable_thinking is False  # the student's prompt
    update = sgsd["update"]  # not sgsd.update: DictConfig.update is a method
    assert (update.freq, update.success_threshold, update.max_new_items, update.capacity) == (25, 0.8, 5, 30)
    assert update.enable is True and update.writer == "policy"  # Alg. 4 on, the policy writes
    assert update.enable_thinking is True  # the release's writer thinks (Qwen3's template default)
    assert sgsd.ablation.loss_type == "gated" and sgsd.ablation.use_polarity is True


def test_grpo_script_is_the_same_recipe_with_grpo_values(dry_runs):
    cfg = _config(dry_runs, "run_grpo_qwen3_8b.sh")
    _common_paper_values(cfg)
    rollout = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.trainer.v1.trainer_mode == "sgsd_sync"
    # Tab. 11, GRPO column: 8 generations, 16000 completion / 2048 prompt tokens, temperature 1.2
    assert (rollout.n, cfg.data.max_response_length, cfg.data.max_prompt_length) == (8, 16000, 2048)
    assert (rollout.temperature, rollout.top_p, rollout.top_k) == (1.2, 1.0, -1)
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-8B"
    # graded by the same verifier as SGSD
    assert cfg.reward.custom_reward_function.path == "pkg://sgsd.verifier"
    assert cfg.reward.custom_reward_function.name == "compute_score"


def test_extra_command_line_overrides_win(tmp_path):
    """`"$@"` reaches the entry point last, so Hydra lets it win. A stand-in `python3` records
    the command line (a real dry run per script is above); Hydra composes it here."""
    from hydra import compose, initialize_config_dir

    fake = _recording_python(tmp_path)
    argv_out = tmp_path / "argv"
    done = subprocess.run(["bash", str(SCRIPTS / "run_sgsd_qwen3_1.7b.sh"), *EXTRA], cwd=tmp_path, text=True,
                          capture_output=True, env=_env(fake.parent, ARGV_OUT=str(argv_out)), timeout=60)
    assert done.returncode == 0, done.stderr
    argv = argv_out.read_text().split("\0")[:-1]
    assert argv[:2] == ["-m", "recipe.sgsd.main_sgsd"] and argv[-len(EXTRA):] == EXTRA
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="sgsd_trainer", overrides=argv[2:])
    assert cfg.sgsd.top_k == 4 and cfg.actor_rollout_ref.rollout.temperature == 0.7
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.model.lora_rank == 64  # the rest as the script sets it


@pytest.mark.parametrize("script", RUN_SCRIPTS)
def test_every_key_is_a_real_verl_or_sgsd_key(dry_runs, script):
    """`++key` bypasses Hydra's struct check, and plain keys are only checked when composed:
    read every key off the traced command line and find it in verl 0.9.1's full config."""
    verl = OmegaConf.load(VERL_CONFIG)
    sgsd = OmegaConf.load(CONFIG_DIR / "sgsd_trainer.yaml")
    trace = [line for line in dry_runs[script]["stderr"].splitlines()
             if re.match(r"^\++ python3 -m recipe\.sgsd\.main_sgsd ", line)]
    assert len(trace) == 1, dry_runs[script]["stderr"][-2000:]
    overrides = shlex.split(trace[0].lstrip("+ "))[3:]
    assert len(overrides) > 30
    for override in overrides:
        key = override.split("=", 1)[0]
        plus = key.startswith("+")
        key = key.lstrip("+")
        tree = sgsd if key.startswith("sgsd.") else verl
        parent_key, leaf = key.rsplit(".", 1)
        parent = OmegaConf.select(tree, parent_key, throw_on_missing=False)
        assert OmegaConf.is_dict(parent), f"{script}: no section {parent_key}"
        # `++` may add a key under a dict verl leaves empty (override_config, apply_chat_template_kwargs)
        assert plus or leaf in parent.keys(), f"{script}: no key {key}"  # keys(): `???` values count


def test_a_writer_spec_with_colons_and_hash_reaches_the_config_intact(tmp_path):
    """SKILL_WRITER=openai:URL#MODEL survives bash and Hydra's override grammar (':' and '#')."""
    from hydra import compose, initialize_config_dir

    fake = _recording_python(tmp_path)
    argv_out = tmp_path / "argv"
    spec = "openai:http://writer:8000/v1#Qwen/Qwen3-8B"
    done = subprocess.run(["bash", str(SCRIPTS / "run_sgsd_qwen3_8b.sh")], cwd=tmp_path, text=True,
                          capture_output=True, timeout=60,
                          env=_env(fake.parent, ARGV_OUT=str(argv_out), SKILL_WRITER=spec))
    assert done.returncode == 0, done.stderr
    argv = argv_out.read_text().split("\0")[:-1]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="sgsd_trainer", overrides=argv[2:])
    assert cfg.sgsd["update"].writer == spec and cfg.sgsd["update"].enable is True


def _recorded_config(tmp_path, script, *args, **env):
    """The config a script's command line composes to, launched through a recording `python3`."""
    from hydra import compose, initialize_config_dir

    fake = _recording_python(tmp_path)
    argv_out = tmp_path / "argv"
    done = subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=tmp_path, text=True, capture_output=True,
                          timeout=60, env=_env(fake.parent, ARGV_OUT=str(argv_out), **env))
    assert done.returncode == 0, done.stderr[-3000:]
    argv = argv_out.read_text().split("\0")[:-1]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="sgsd_trainer", overrides=argv[2:])


@pytest.mark.parametrize("script", MATH_SCRIPTS)
def test_environment_values_reach_the_config(tmp_path, script):
    """The per-size values and the shared body's `${VAR:-default}`s come from the environment;
    an explicit TRAIN_FILE wins over the one a skills variant would choose."""
    variant = "grpo_skill" if MATH_SCRIPTS[script] == "grpo" else "opsd_skill"
    env = dict(MODEL_PATH="/models/m", TRAIN_FILE="/data/mine.parquet", VAL_FILE="/data/val.parquet",
               EXPERIMENT_NAME="exp", N_GPUS_PER_NODE="4", NNODES="2", VARIANT=variant, SGSD_DRY_RUN="1")
    if MATH_SCRIPTS[script] == "sgsd":
        env.update(BANK_PATH="/banks/b.json", ENCODER_DEVICE="cpu", SKILL_UPDATE="false")
    cfg = _recorded_config(tmp_path, script, **env)
    assert cfg.actor_rollout_ref.model.path == "/models/m"
    assert (cfg.data.train_files, cfg.data.val_files) == ("/data/mine.parquet", "/data/val.parquet")
    assert (cfg.trainer.experiment_name, cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes) == ("exp", 4, 2)
    if MATH_SCRIPTS[script] == "sgsd":
        assert (cfg.sgsd.bank_path, cfg.sgsd.encoder_device) == ("/banks/b.json", "cpu")
        assert cfg.sgsd["update"].enable is False


@pytest.mark.parametrize("script, experiment, logprob_tokens", [
    ("run_sgsd_qwen3_8b.sh", "sgsd_qwen3_8b", 24576),
    ("run_sgsd_qwen3_4b.sh", "sgsd_qwen3_4b", 32768),
    ("run_sgsd_qwen3_1.7b.sh", "sgsd_qwen3_1_7b", 32768),
    ("run_grpo_qwen3_8b.sh", "grpo_qwen3_8b", 18432),
])
def test_each_script_sizes_its_own_model_and_passes_the_geometry_check_on_1_2_4_8_gpus(
        tmp_path, script, experiment, logprob_tokens):
    cfg = _recorded_config(tmp_path, script)
    assert cfg.trainer.experiment_name == experiment
    actor, rollout, ref = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.ref
    # verl's dynamic batch sizing in every pass (fixed micro-batches did not divide 2 rollouts per GPU)
    assert actor.use_dynamic_bsz and rollout.log_prob_use_dynamic_bsz and ref.log_prob_use_dynamic_bsz
    assert rollout.log_prob_max_token_len_per_gpu == ref.log_prob_max_token_len_per_gpu == logprob_tokens
    for gpus in (1, 2, 4, 8):
        assert _geometry(_with(cfg, f"trainer.n_gpus_per_node={gpus}")).dp == gpus


def _with(cfg, *overrides: str):
    """``cfg`` with dotted ``key=value`` overrides merged in (as Hydra would)."""
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def _geometry(cfg):
    """recipe.sgsd.geometry on a composed config, as main_sgsd (and SGSD_DRY_RUN) checks it."""
    from recipe.sgsd.cpu.simulate import geometry_of
    from recipe.sgsd.main_sgsd import prepare_config

    return geometry_of(prepare_config(cfg))


def test_build_bank_script_runs_the_cold_start_builder(tmp_path):
    """scripts/build_bank.sh hands its variables to `sgsd bank build` (a scripted writer here;
    its replies parse to nothing, so the build exits 1 having saved memories and build.json)."""
    out = tmp_path / "bank"
    env = _env(Path(sys.executable).parent, WRITER="scripted:no json here", OUT_DIR=str(out), NUM_PROBLEMS="3")
    done = subprocess.run(["bash", str(SCRIPTS / "build_bank.sh"), "--quiet"], cwd=tmp_path, text=True,
                          capture_output=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "no skill or mistake could be extracted from 3 memories" in done.stderr
    build = json.loads((out / "build.json").read_text())
    assert build["counts"]["problems"] == 3 and not (out / "bank.json").exists()
    # the release's cold start: thinking on, solutions with the evaluation's budget, 4096-token writer replies
    settings = build["settings"]
    assert (settings["generation"]["enable_thinking"], settings["generation"]["max_new_tokens"]) == (True, 38912)
    for step in ("extraction", "merge"):
        assert (settings[step]["enable_thinking"], settings[step]["max_new_tokens"]) == (True, 4096), step


# ----------------------------------------------------------------- the skill baselines' retrieval
def _prepare_data_module():
    spec = importlib.util.spec_from_file_location("sgsd_prepare_data_script", SCRIPTS / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_script_argv(tmp_path, **env) -> list[str]:
    fake = _recording_python(tmp_path)
    argv_out = tmp_path / "eval_argv"
    done = subprocess.run(["bash", str(SCRIPTS / "eval.sh")], cwd=tmp_path, text=True, capture_output=True,
                          timeout=60, env=_env(fake.parent, ARGV_OUT=str(argv_out), **env))
    assert done.returncode == 0, done.stderr[-3000:]
    return argv_out.read_text().split("\0")[:-1]


def test_every_skill_method_retrieves_with_the_gpu_scripts_encoder(dry_runs, tmp_path):
    """SGSD's teachers (sgsd.encoder), Base+Skill (eval.sh) and the +Skill data (prepare_data.py's
    default) use one encoder, Qwen3-Embedding-0.6B (paper Sec. 4.1, Tab. 12), from one variable."""
    sourced = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/lib/retrieval.sh"; '
                              'printf "%s %s" "$SKILL_ENCODER" "$STUDENT_SKILLS_TOP_K"'],
                             capture_output=True, text=True, check=True).stdout
    prepare = _prepare_data_module()
    parsed = prepare.gpu_retrieval_defaults()
    assert sourced == f"{parsed['SKILL_ENCODER']} {parsed['STUDENT_SKILLS_TOP_K']}" == "Qwen/Qwen3-Embedding-0.6B 3"
    encoders = {_config(dry_runs, s).sgsd.encoder for s, e in RUN_SCRIPTS.items() if e == "sgsd"}
    argv = _eval_script_argv(tmp_path, SKILLS="qwen3_1.7b")
    args = prepare.parse_args(["--dataset", "math_train", "--student-skills", "qwen3_1.7b"])
    assert encoders | {argv[argv.index("--encoder") + 1], args.encoder} == {"Qwen/Qwen3-Embedding-0.6B"}
    assert args.student_skills_top_k == 3
    argv = _eval_script_argv(tmp_path, SKILLS="qwen3_1.7b", ENCODER="/enc/other")  # the override
    assert argv[argv.index("--encoder") + 1] == "/enc/other"


@pytest.mark.parametrize("script", [s for s, estimator in MATH_SCRIPTS.items() if estimator == "sgsd"])
def test_opsd_skill_gives_its_teacher_as_many_pairs_as_the_skill_data_shows(tmp_path, script):
    """The +Skill data shows 3 pairs (the release's --skills_top_k 3), so OPSD+Skill's teacher is
    given sgsd.top_k=3; SGSD keeps its 8 teachers; the caller's override still wins."""
    default_k = _prepare_data_module().parse_args(["--dataset", "math_train"]).student_skills_top_k
    assert _recorded_config(tmp_path, script, VARIANT="opsd_skill", SGSD_DRY_RUN="1").sgsd.top_k == default_k == 3
    assert _recorded_config(tmp_path, script).sgsd.top_k == 8
    assert _recorded_config(tmp_path, script, "sgsd.top_k=5", VARIANT="opsd_skill", SGSD_DRY_RUN="1").sgsd.top_k == 5


def test_a_missing_skill_file_is_refused_with_the_command_that_writes_it(tmp_path):
    fake = _recording_python(tmp_path)
    missing = tmp_path / "none.parquet"
    done = subprocess.run(["bash", str(SCRIPTS / "run_sgsd_qwen3_1.7b.sh")], cwd=tmp_path, text=True,
                          capture_output=True, timeout=60, env=_env(fake.parent, ARGV_OUT=str(tmp_path / "argv"),
                                                                    VARIANT="opsd_skill", TRAIN_FILE=str(missing)))
    assert done.returncode == 2 and not (tmp_path / "argv").exists()
    assert f"prepare_data.py --dataset math_train --student-skills qwen3_1.7b --output {missing}\n" in done.stderr
    assert "encoder Qwen/Qwen3-Embedding-0.6B and K 3;" in done.stderr


def test_the_documented_opsd_skill_commands_pass_the_start_check(tmp_path, shipped_bank):
    """docs/reproduce.md: prepare_data.py --student-skills BANK with its defaults, then
    VARIANT=opsd_skill with the same bank (a slice of the shipped one: fewer texts to encode).
    The packaged MiniLM stands in for Qwen3-Embedding on both sides (no model hub here; the test
    above shows both sides default to one encoder); the real start check reads the data's
    record and compares bank, encoder and K."""
    from recipe.sgsd.main_sgsd import prepare_config
    from sgsd.config import ConfigError

    bank = shipped_bank.with_items(general_skills=shipped_bank.general_skills[:4],
                                   common_mistakes=shipped_bank.common_mistakes[:4]).save(tmp_path / "bank.json")
    data = tmp_path / "skills.parquet"
    assert _prepare_data_module().main(["--dataset", "math_train", "--limit", "4", "--student-skills", str(bank),
                                        "--encoder", "all-MiniLM-L6-v2", "--output", str(data)]) == 0
    cfg = _recorded_config(tmp_path, "run_sgsd_qwen3_1.7b.sh", "sgsd.encoder=all-MiniLM-L6-v2",
                           VARIANT="opsd_skill", TRAIN_FILE=str(data), BANK_PATH=str(bank))
    assert prepare_config(cfg).sgsd.top_k == 3
    with pytest.raises(ConfigError, match=r"sgsd\.top_k: the data's 3 \(prepared\), this run's 8"):
        prepare_config(_with(cfg, "sgsd.top_k=8"))


def test_reproduce_md_gives_every_variant_its_command_and_names_no_other():
    """docs/reproduce.md's table maps the paper's rows and curves to `VARIANT=<name>`: each name
    there (and in the README) is a real variant, and each variant but the scripts' defaults
    (sgsd, grpo) is there."""
    from recipe.sgsd.variants import VARIANTS

    docs = ("docs/reproduce.md", "README.md")
    named = {doc: set(re.findall(r"VARIANT=([\w-]+)", (ROOT / doc).read_text())) for doc in docs}
    for doc, names in named.items():
        assert names <= set(VARIANTS), (doc, names - set(VARIANTS))
    missing = set(VARIANTS) - {"sgsd", "grpo"} - named["docs/reproduce.md"]
    assert not missing, missing


def test_the_releases_opsd_length_composes_and_fits_every_gpu_count(tmp_path):
    """docs/reproduce.md: OPSD as the release's run_opsd.sh trained it, 300 steps of 32 problems."""
    cfg = _recorded_config(tmp_path, "run_sgsd_qwen3_8b.sh", "trainer.total_training_steps=300",
                           "data.train_batch_size=32", "actor_rollout_ref.actor.ppo_mini_batch_size=32",
                           VARIANT="opsd", EXPERIMENT_NAME="opsd_300x32_qwen3_8b")
    assert (cfg.trainer.total_training_steps, cfg.data.train_batch_size) == (300, 32)
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 32 and cfg.trainer.save_freq == 25
    for gpus in (1, 2, 4, 8):
        assert _geometry(_with(cfg, f"trainer.n_gpus_per_node={gpus}")).dp == gpus


def _recording_python(tmp_path: Path) -> Path:
    """A `python3` that records the launch command line but runs the variants helper for real."""
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "recipe.sgsd.variants" ]; then\n'
                    f'  exec {sys.executable} "$@"\nfi\n'
                    'printf \'%s\\0\' "$@" > "$ARGV_OUT"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("name", sorted(__import__("recipe.sgsd.variants", fromlist=["VARIANTS"]).VARIANTS))
def test_every_variant_launches_from_the_same_scripts_with_its_overrides(tmp_path, name):
    from hydra import compose, initialize_config_dir

    from recipe.sgsd.variants import VARIANTS
    from sgsd.config import SGSDConfig

    variant = VARIANTS[name]
    fake = _recording_python(tmp_path)
    argv_out = tmp_path / "argv"
    script = f"run_{variant.launcher}_qwen3_8b.sh"
    done = subprocess.run(["bash", str(SCRIPTS / script)], cwd=tmp_path, text=True, capture_output=True, timeout=60,
                          env=_env(fake.parent, ARGV_OUT=str(argv_out), VARIANT=name, SGSD_DRY_RUN="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    argv = argv_out.read_text().split("\0")[:-1]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="sgsd_trainer", overrides=argv[2:])
    assert cfg.algorithm.adv_estimator == variant.estimator
    for override in variant.overrides:  # each one reached the config (and won over the script's own value)
        key, value = override.split("=", 1)
        assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), override
    SGSDConfig.from_mapping(OmegaConf.to_container(cfg.sgsd, resolve=True))  # valid as a whole
    assert cfg.data.train_files.endswith("math_train_skills.parquet" if variant.student_skills
                                         else "math_train.parquet")
    assert cfg.trainer.experiment_name == f"{name}_qwen3_8b"
    for gpus in (1, 2, 4, 8):  # the batch geometry main_sgsd checks at start
        assert _geometry(_with(cfg, f"trainer.n_gpus_per_node={gpus}")).world == gpus


def test_a_variant_of_the_other_estimator_or_an_unknown_one_is_refused(tmp_path):
    fake = _recording_python(tmp_path)
    for script, variant, message in (("run_sgsd_qwen3_8b.sh", "grpo_skill", "run_grpo_qwen3_8b.sh"),
                                     ("run_grpo_qwen3_8b.sh", "opsd", "run_sgsd_qwen3_8b.sh"),
                                     ("run_sgsd_qwen3_8b.sh", "sdar", "run_grpo_qwen3_8b.sh"),
                                     ("run_sgsd_qwen3_8b.sh", "no_such_thing", "unknown variant")):
        done = subprocess.run(["bash", str(SCRIPTS / script)], cwd=tmp_path, text=True, capture_output=True,
                              timeout=60, env=_env(fake.parent, ARGV_OUT=str(tmp_path / "argv"), VARIANT=variant))
        assert done.returncode != 0 and message in done.stderr, (script, variant, done.stderr[-2000:])


# ----------------------------------------------------------------------------- Sokoban
SOKOBAN_BODY = 'source "$(dirname "${BASH_SOURCE[0]}")/lib/sokoban_body.sh" "$@"'


@pytest.mark.parametrize("script", SOKOBAN_SCRIPTS)
def test_a_sokoban_script_names_its_method_and_sources_the_shared_body(script):
    text = (SCRIPTS / script).read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("#", "set ", "source "))]
    method = SOKOBAN_SCRIPTS[script][1] or "grpo"
    assert lines == [f"METHOD={method}"] and text.rstrip().endswith(SOKOBAN_BODY)
    body = (SCRIPTS / "lib" / "sokoban_body.sh").read_text()
    assert body.count(LAUNCH) == 1 and body.rstrip().endswith('"$@"')
    done = subprocess.run(["bash", str(SCRIPTS / "lib" / "sokoban_body.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "run_*_qwen3_4b_sokoban.sh" in done.stderr


def test_a_sokoban_script_refuses_a_variant_that_needs_skills_in_the_student_prompt(tmp_path):
    env = _env(Path(sys.executable).parent, SGSD_DRY_RUN="1", VARIANT="opsd_skill")
    done = subprocess.run(["bash", str(SCRIPTS / "run_sgsd_qwen3_4b_sokoban.sh")], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 2 and "VARIANT=opsd_skill shows skills in the student prompt" in done.stderr


@pytest.mark.parametrize("script", SOKOBAN_SCRIPTS)
def test_sokoban_scripts_carry_the_papers_values(tmp_path, script):
    """Skill-SD: Qwen3-4B-Instruct-2507, lambda 0.001; SDAR: n = 8, lr 1e-6, responses <= 512
    tokens, lambda 0.01, beta 5; every mode on the same episodes (prepare_data's Sokoban files)."""
    cfg = _recorded_config(tmp_path, script)
    estimator, method = SOKOBAN_SCRIPTS[script]
    rollout, actor = cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.actor
    assert cfg.algorithm.adv_estimator == estimator
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-4B-Instruct-2507"
    assert actor.optim.lr == 1e-6 and cfg.sgsd.agent.max_turn_tokens == 512
    assert cfg.data.train_files.endswith("/data/sgsd/sokoban_train.parquet")
    assert cfg.data.val_files.endswith("/data/sgsd/sokoban_test.parquet")
    assert cfg.reward.custom_reward_function.path == "pkg://sgsd.verifier"
    assert cfg.data.apply_chat_template_kwargs.enable_thinking is False
    assert rollout.n == (1 if method == "sgsd" else 8)
    assert cfg.sgsd.method == (method if method in ("skill_sd", "sdar") else "sgsd")
    if method == "skill_sd":
        assert cfg.sgsd.distill_coef == 0.001 and actor.use_kl_loss
    if method == "sdar":
        assert cfg.sgsd.distill_coef == 0.01 and cfg.sgsd.sdar.beta == 5.0 and cfg.sgsd.skills.files == "sokoban"
    if method == "sgsd":  # no Sokoban bank is released: it grows from the policy's own episodes
        assert cfg.sgsd.bank_path == "empty" and cfg.sgsd["update"].enable and cfg.sgsd["update"].freq == 5
    for gpus in (1, 2, 4, 8):
        assert _geometry(_with(cfg, f"trainer.n_gpus_per_node={gpus}")).dp == gpus
