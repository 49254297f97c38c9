"""Entry point: ``python3 -m recipe.sgsd.main_sgsd <hydra overrides>``.

The config is ``recipe/sgsd/config/sgsd_trainer.yaml`` (verl's ``ppo_trainer`` plus
``sgsd:``). With ``algorithm.adv_estimator=sgsd`` the run uses the SGSD trainer, the SGSD
reward manager (verl's naive one + the record hook) and, unless one is given, the
project's verifier as reward function; with ``algorithm.adv_estimator=grpo`` (or any
other estimator) it is verl's own algorithm and trainer, unchanged but for the metrics a
resumed run keeps (``trainer_mode=sgsd_sync``, :mod:`recipe.sgsd.sync_trainer`).
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.sgsd.geometry import Geometry, run_geometry, uses_lora
from recipe.sgsd.teacher_weights import check_moving_teacher, teacher_on_reference
from sgsd.config import ConfigError, SGSDConfig

SYNC_TRAINER = "sgsd_sync"  # the registry name of recipe.sgsd.sync_trainer.RecipeSyncTrainer

PLUGIN_MODULE = "recipe.sgsd.plugin"


def ensure_plugin_env() -> None:
    """Name the plugin in ``VERL_USE_EXTERNAL_MODULES`` so every verl process imports it
    (an import error then fails loudly instead of being swallowed)."""
    modules = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if PLUGIN_MODULE not in modules:
        os.environ["VERL_USE_EXTERNAL_MODULES"] = ",".join([*modules, PLUGIN_MODULE])


def prepare_config(config: DictConfig) -> DictConfig:
    """Validate ``sgsd.*`` and wire SGSD into the verl config (no-op for other estimators)."""
    sgsd_config = SGSDConfig.from_mapping(OmegaConf.to_container(config.sgsd, resolve=True))
    ensure_plugin_env()
    with open_dict(config):
        # Ray workers of a multi-node cluster do not inherit the driver's environment.
        env_vars = config.ray_kwargs.ray_init.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env_vars["VERL_USE_EXTERNAL_MODULES"] = os.environ["VERL_USE_EXTERNAL_MODULES"]
    if config.algorithm.adv_estimator != "sgsd":
        with open_dict(config):
            if config.trainer.get("use_v1", True) and config.trainer.v1.get("trainer_mode", "sync") == "sync":
                # verl's sync trainer, keeping a resumed run's metrics (recipe/sgsd/sync_trainer.py)
                config.trainer.v1.trainer_mode = SYNC_TRAINER
        return config
    with open_dict(config):
        mode = config.trainer.v1.get("trainer_mode", "sync")
        if mode not in ("sync", "sgsd", SYNC_TRAINER):
            raise ConfigError(f"algorithm.adv_estimator=sgsd needs trainer.v1.trainer_mode=sync (got {mode!r}): "
                             "the teacher pass scores rollouts with the current weights")
        if not config.trainer.get("use_v1", True):
            raise ConfigError("algorithm.adv_estimator=sgsd needs trainer.use_v1=true (the 0.9 default trainer)")
        config.trainer.v1.trainer_mode = "sgsd"
        if config.reward.reward_manager.source == "register" and config.reward.reward_manager.name == "naive":
            config.reward.reward_manager.name = "sgsd"  # naive scoring + the record hook
        if not config.reward.custom_reward_function.get("path"):
            # pkg:// imports it as a module; a file path would skip sys.modules, which the
            # verifier's dataclasses and worker subprocesses need.
            config.reward.custom_reward_function.path = "pkg://sgsd.verifier"
            config.reward.custom_reward_function.name = "compute_score"
        kwargs = config.data.get("apply_chat_template_kwargs") or {}
        config.data.apply_chat_template_kwargs = {**kwargs, "enable_thinking": sgsd_config.student_thinking}
        check_inputs(config, sgsd_config)  # the writer's spec first: placement reads it
        _check_writer_placement(config, sgsd_config)
        check_moving_teacher(config, sgsd_config)  # ema / periodic (recipe/sgsd/teacher_weights.py)
        if sgsd_config.method == "sdar" and sgsd_config.sdar_config().uses_entropy:
            config.actor_rollout_ref.actor.calculate_entropy = True  # the entropy gate reads verl's entropy
        if teacher_on_reference(sgsd_config.teacher, uses_lora(config)):
            # The frozen base (or an ema / periodic teacher's weights) needs a reference model; verl
            # builds one only when a KL term asks for it. A zero-weight KL loss does, and leaves
            # the objective unchanged.
            if not config.actor_rollout_ref.actor.use_kl_loss and not config.algorithm.use_kl_in_reward:
                config.actor_rollout_ref.actor.use_kl_loss = True
                config.actor_rollout_ref.actor.kl_loss_coef = 0.0
    return config


def check_inputs(config: DictConfig, sgsd_config: SGSDConfig) -> None:
    """What used to fail only after Ray and the workers started (98 s to 443 s on CPU), checked
    before any worker starts, in the dry run too, each naming its key: the bank (missing,
    unreadable, or without a skill-mistake pair), the skill writer's spec, a local encoder
    path that does not exist, and a teacher prompt budget below the plain student prompt of
    the training set's longest problems (with the model's tokenizer when it is on this machine)."""
    from sgsd.bank import BankError, SkillBank
    from sgsd.datasets import resolve

    if sgsd_config.sibling:
        _check_sibling(config, sgsd_config)
    else:
        try:
            SkillBank.load_start(resolve(sgsd_config.bank_path, "bank"), grows=sgsd_config.update.enable)
        except (BankError, ValueError, OSError) as exc:
            raise ConfigError(f"sgsd.bank_path={sgsd_config.bank_path!r}: {exc}") from None
    update = sgsd_config.update
    if writes_with_writer(sgsd_config) and update.writer != "policy":
        from sgsd.llm.factory import parse_spec

        try:
            parse_spec(update.writer)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"sgsd.update.writer={update.writer!r}: {exc}") from None
    from sgsd.retrieval import split_encoder_spec

    encoder = split_encoder_spec(sgsd_config.encoder)[0] or ""
    if encoder.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(encoder)):
        raise ConfigError(f"sgsd.encoder={encoder!r}: no such local model folder (a hub name such as "
                          "Qwen/Qwen3-Embedding-0.6B, or an existing path)")
    _check_teacher_budget(config, sgsd_config)
    if sgsd_config.teacher_context == "answer_skills":
        _check_student_pairs(config, sgsd_config)
    if sgsd_config.teacher_topk:
        _check_logits_hook(config, sgsd_config)


def writes_with_writer(sgsd_config: SGSDConfig) -> bool:
    """Does the run call ``sgsd.update.writer``: SGSD's bank updates, or Skill-SD's summaries."""
    if sgsd_config.sibling:
        return sgsd_config.skill_source == "summaries"
    return sgsd_config.update.enable


def _check_sibling(config: DictConfig, sgsd_config: SGSDConfig) -> None:
    """Skill-SD / SDAR / RLSD: the skill files load; RLSD has GRPO advantages to reweight."""
    from sgsd.datasets import resolve
    from sgsd.skill_sources import SkillFileError, load_skill_files

    method = f"sgsd.method={sgsd_config.method}"
    if sgsd_config.method == "rlsd" and int(config.actor_rollout_ref.rollout.n) < 2:
        raise ConfigError(f"{method} reweights GRPO's group advantages, which are 0 with one rollout per problem: "
                          "set actor_rollout_ref.rollout.n >= 2 (the GRPO scripts use 8)")
    if sgsd_config.skill_source == "files":
        files = sgsd_config.skills.files
        try:
            load_skill_files(resolve(files, "skills"))
        except (SkillFileError, ValueError, OSError) as exc:
            raise ConfigError(f"sgsd.skills.files={files!r}: {exc}") from None


def _check_logits_hook(config: DictConfig, sgsd_config: SGSDConfig) -> None:
    """The teacher's top-k distribution comes through verl's logits hook (recipe/sgsd/distribution.py),
    which needs the packed logits of a whole sequence on one rank: no fused kernels (they never
    materialise logits), no Ulysses sequence parallelism, no static padding."""
    model, why = config.actor_rollout_ref.model, f"sgsd.teacher_topk={sgsd_config.teacher_topk}"
    if model.get("use_fused_kernels", False):
        raise ConfigError(f"{why} reads the logits, which actor_rollout_ref.model.use_fused_kernels=true never "
                          "materialises: set it to false")
    for section in ("actor", "ref"):
        part = config.actor_rollout_ref.get(section) or {}
        if int(part.get("ulysses_sequence_parallel_size", 1) or 1) > 1:
            raise ConfigError(f"{why} needs each sequence's logits on one rank: actor_rollout_ref.{section}."
                              "ulysses_sequence_parallel_size must be 1")
        if part.get("pad_to_length", False):
            raise ConfigError(f"{why}: actor_rollout_ref.{section}.pad_to_length=true misaligns the teacher's "
                              "top-k with the packed tokens (verl refuses it for top-k distillation too)")


def _check_student_pairs(config: DictConfig, sgsd_config: SGSDConfig) -> None:
    """OPSD+Skill: the teacher sees the pairs the student saw (their ids are in each row), so the
    data must come from this run's bank, encoder and K; refused otherwise, naming both."""
    import json

    from sgsd.datasets import resolve
    from sgsd.verl_data import guidance_source

    files = _local_parquet_train_files(config)
    if not files:
        return  # a dry run on another machine: nothing to read
    import pyarrow.parquet as pq

    ours = guidance_source(resolve(sgsd_config.bank_path, "bank"), sgsd_config.encoder, sgsd_config.top_k)
    keys = {"bank_sha256": "sgsd.bank_path", "encoder": "sgsd.encoder", "top_k": "sgsd.top_k"}
    for f in files:
        extra = pq.read_table(f, columns=["extra_info"]).column("extra_info").to_pylist()
        recorded = (extra[0] or {}).get("skills_from") if extra else None
        if not recorded:
            raise ConfigError(
                f"sgsd.teacher_context=answer_skills (OPSD+Skill): {f} records no skill pairs shown to the student; "
                "write it with python3 scripts/prepare_data.py --student-skills BANK --encoder ENCODER "
                "--student-skills-top-k K, with this run's bank, encoder and K")
        theirs = json.loads(recorded)
        differ = [f"{keys[k]}: the data's {theirs.get('bank') if k == 'bank_sha256' else theirs.get(k)!r} "
                  f"(prepared), this run's {sgsd_config.bank_path if k == 'bank_sha256' else ours[k]!r}"
                  for k in keys if theirs.get(k) != ours[k]]
        if differ:
            raise ConfigError(f"OPSD+Skill: the teacher must see the student's pairs, but {f} was prepared with "
                              f"another {'; '.join(differ)}; prepare the data again or set these keys as it was")


def _check_teacher_budget(config: DictConfig, sgsd_config: SGSDConfig, longest: int = 16) -> None:
    """The longest problems' teacher prompt without guidance (what can never be cut) must fit
    ``sgsd.max_teacher_prompt_length``. Needs the tokenizer on this machine (skipped otherwise)."""
    files = _local_parquet_train_files(config)
    if not files:
        return
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.actor_rollout_ref.model.path, local_files_only=True)
    except Exception:  # noqa: BLE001 - not downloaded here (a dry run on another machine): skip
        return
    import pyarrow.parquet as pq

    from sgsd.prompts import ChatFormat, teacher_prompt_ids
    from sgsd.verl_data import problem_text

    problems = []
    for f in files:
        table = pq.read_table(f, columns=[c for c in ("extra_info", "prompt") if c in pq.read_schema(f).names])
        rows = table.to_pylist()
        problems += [problem_text(r.get("extra_info"), r.get("prompt")) for r in rows]
    fmt = ChatFormat(enable_thinking=sgsd_config.teacher_thinking, prefill_empty_think=sgsd_config.prefill_empty_think)
    budget = sgsd_config.max_teacher_prompt_length
    for problem in sorted(problems, key=len, reverse=True)[:longest]:
        floor = len(teacher_prompt_ids(tokenizer, "", problem, fmt)[0])
        if floor > budget:
            raise ConfigError(
                f"sgsd.max_teacher_prompt_length={budget} cannot hold the teacher prompt of the training set's "
                f"longest problems without any guidance ({floor} tokens; the problem is never cut); raise it "
                f"(works: sgsd.max_teacher_prompt_length={max(floor, int(config.data.max_prompt_length))})")


def _local_parquet_train_files(config: DictConfig) -> list[str]:
    """``data.train_files`` when every one is a parquet file on this machine, else ``[]`` (a dry
    run on another machine: nothing to read)."""
    files = config.data.train_files
    files = [files] if isinstance(files, str) else list(files or [])
    return files if files and all(os.path.isfile(f) and f.endswith(".parquet") for f in files) else []


def _check_writer_placement(config: DictConfig, sgsd_config: SGSDConfig) -> None:
    """A skill writer built inside the trainer process must not claim the GPUs the colocated
    actor and rollout replicas hold: a ``vllm:`` engine there fails vLLM's start-up memory
    check (the replicas are awake), a ``transformers:`` model on ``cuda`` would sit on GPU 0
    for the whole run. Refused at start, naming what works."""
    update = sgsd_config.update
    if not writes_with_writer(sgsd_config) or update.writer == "policy":
        return
    from sgsd.llm.factory import parse_spec

    backend, kwargs = parse_spec(update.writer)
    on_gpu = backend == "vllm" or (backend == "transformers" and str(kwargs.get("device", "cpu")).startswith("cuda"))
    if on_gpu:
        raise ConfigError(
            f"sgsd.update.writer={update.writer!r} would load a second model inside the trainer process, on the GPUs "
            "the colocated actor and rollout replicas hold; use sgsd.update.writer=policy (the rollout replicas "
            "write), or openai:http://HOST:PORT/v1#MODEL against a server on other GPUs (or a transformers: "
            "writer on the CPU)")


def check_geometry(config: DictConfig, use_reference_policy: bool, use_critic: bool) -> Geometry | None:
    """Every pass's per-rank batch geometry (:mod:`recipe.sgsd.geometry`), for SGSD and the
    other estimators alike; raises ``GeometryError`` on a config verl would assert on at step 1.
    ``SGSD_GEOMETRY_CHECK=0`` skips it (to watch verl assert on its own, or should this model
    of verl's batching ever be stricter than verl)."""
    if os.environ.get("SGSD_GEOMETRY_CHECK", "1") == "0":
        return None
    sgsd_config = None
    if config.algorithm.adv_estimator == "sgsd":
        sgsd_config = SGSDConfig.from_mapping(OmegaConf.to_container(config.sgsd, resolve=True))
    return run_geometry(config, sgsd_config, use_reference_policy=use_reference_policy, use_critic=use_critic)


@hydra.main(config_path="config", config_name="sgsd_trainer", version_base=None)
def main(config: DictConfig) -> None:
    import recipe.sgsd.plugin  # noqa: F401  (registrations in the driver too)
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    try:
        config = prepare_config(config)
        geometry = check_geometry(config, need_reference_policy(config), need_critic(config))
    except ConfigError as exc:  # one line naming the key, value and range, exit 2 (as the CLI does)
        import sys

        print(f"sgsd: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("SGSD_DRY_RUN") == "1":
        _dry_run(config, validate_config, need_reference_policy(config), need_critic(config), geometry)
        return
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config),
                    use_critic=need_critic(config))
    run_ppo(config, task_runner_class=TaskRunnerV1)


def _dry_run(config: DictConfig, validate_config, use_reference_policy: bool, use_critic: bool,
             geometry: Geometry | None) -> None:
    """``SGSD_DRY_RUN=1``: validate the composed config, print one line, launch nothing.

    ``SGSD_DRY_RUN_OUT=PATH`` also writes the resolved config there (yaml). auto_set_device
    is skipped: it only rewrites ``trainer.device`` for the accelerator of the machine that
    validates, which need not be the one that trains.
    """
    import copy
    import importlib.util

    checked = config
    if config.actor_rollout_ref.rollout.name == "vllm" and importlib.util.find_spec("vllm") is None:
        # validate_config imports vLLM (GPU-only) just to round the LoRA rank up to one vLLM
        # supports; without vLLM on this machine, every other check still runs.
        checked = copy.deepcopy(config)
        with open_dict(checked):
            checked.actor_rollout_ref.rollout.name = "vllm-not-installed"
    validate_config(config=checked, use_reference_policy=use_reference_policy, use_critic=use_critic)
    if os.environ.get("SGSD_DRY_RUN_OUT"):
        OmegaConf.save(config, os.environ["SGSD_DRY_RUN_OUT"], resolve=True)
    gpus = f"{config.trainer.n_gpus_per_node}x{config.trainer.nnodes}"
    print(f"sgsd dry run: config OK ({config.algorithm.adv_estimator}, {gpus} GPUs)")
    if geometry is not None:
        print(f"sgsd dry run: geometry: {geometry.summary()}")


def record_argv(path: str) -> None:
    """``SGSD_ARGV_OUT=PATH``: write the overrides this launch received (a JSON list) and exit,
    launching nothing. How ``scripts/simulate_gpu_run.sh`` reads a GPU script's command line."""
    import json
    import sys

    with open(path, "w") as out:
        json.dump(sys.argv[1:], out)


if __name__ == "__main__":
    if os.environ.get("SGSD_ARGV_OUT"):
        record_argv(os.environ["SGSD_ARGV_OUT"])
    else:
        main()
