"""The ``hf`` rollout: a transformers ``generate`` server for verl 0.9.1 on CPU.

verl's rollouts are servers (vLLM, SGLang, TensorRT-LLM) that need GPUs. This one has
the same three parts, small enough to read in one sitting:

* :class:`HFRolloutServer` - a Ray actor holding a ``transformers`` causal LM. The agent
  loop calls ``generate(prompt_ids, sampling_params, request_id)`` once per sample (the
  agent loop itself fans each prompt out ``rollout.n`` times); concurrent requests with
  the same sampling settings are batched into one left-padded ``model.generate`` call.
* :class:`HFReplica` - the ``RolloutReplica`` that verl's ``LLMServerManager`` builds
  (registered as ``hf`` by ``recipe.sgsd.cpu.backend``); it starts one server per
  replica next to the training workers (hybrid mode).
* :class:`HFServerAdapter` - the ``BaseRollout`` living inside each actor worker. verl's
  weight sync (``ActorRolloutRefWorker.update_weights``, naive backend, run after every
  training step and once after init) hands it the actor's full HF-named tensors; it
  ships them to its server's ``load_weights``, so the policy being trained is the one
  that samples.

Supported: text prompts, temperature / top_p / top_k / repetition_penalty /
``max_tokens``, greedy decoding (temperature 0), ``ignore_eos``, sampled-token
log-probs (``calculate_log_probs``; the log-softmax of the processed logits, like vLLM's
``processed_logprobs``). Not supported: multi-modal inputs, LoRA adapters as separate
weights (``lora.merge=True`` works), tensor parallelism, aborting in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import ray
import torch

from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput
from verl.workers.rollout.utils import ensure_async_iterator

logger = logging.getLogger(__name__)

_BATCH_WINDOW_S = 0.01  # how long the server waits for concurrent requests to batch


def server_actor_name(replica_rank: int) -> str:
    """Ray actor name of a replica's server (the adapter finds its server by it)."""
    return f"hf_server_{replica_rank}"


@dataclass(frozen=True)
class _Sampling:
    """The sampling settings a batch shares (requests differ only in prompt and length)."""

    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    logprobs: bool


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    future: asyncio.Future


class HFRolloutServer:
    """Token-in/token-out generation with ``transformers`` (one Ray actor per replica)."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, replica_rank: int):
        from transformers import AutoModelForCausalLM

        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        torch.manual_seed(self.config.seed + replica_rank)

        dtype = getattr(torch, self.config.dtype) if isinstance(self.config.dtype, str) else self.config.dtype
        # hf_config carries the model overrides (attn_implementation=sdpa on CPU).
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path,
            config=self.model_config.hf_config,
            dtype=dtype,
            trust_remote_code=self.model_config.trust_remote_code,
        ).eval()
        self.model.requires_grad_(False)
        self._tied = {name for name in self.model.state_dict()} - {name for name, _ in self.model.named_parameters()}

        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.model_config.hf_config.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        tokenizer = self.model_config.tokenizer
        pad = gen_cfg.pad_token_id
        if pad is None and tokenizer is not None:
            pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

        self.global_steps: Optional[int] = None  # version of the weights, set by the adapter
        self._pending: list[tuple[_Sampling, _Request]] = []
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock = asyncio.Lock()  # generation and weight loading never overlap

    # ------------------------------------------------------------------ generation

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Generate one response for ``prompt_ids`` (the ``vLLMHttpServer.generate`` contract)."""
        if image_data or video_data or kwargs.get("audio_data"):
            raise NotImplementedError("the hf rollout handles text prompts only")
        prompt_ids = [int(t) for t in prompt_ids]
        params = dict(sampling_params)
        budget = self.config.prompt_length + self.config.response_length - len(prompt_ids)
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        if max_tokens is None:
            max_tokens = min(self.config.response_length, budget)
        max_tokens = max(1, int(max_tokens))

        top_k = params.get("top_k", self.config.top_k)
        sampling = _Sampling(
            temperature=float(params.get("temperature", self.config.temperature)),
            top_p=float(params.get("top_p", self.config.top_p)),
            top_k=int(top_k) if top_k is not None and int(top_k) > 0 else 0,
            repetition_penalty=float(params.get("repetition_penalty", self.config.repetition_penalty)),
            logprobs=bool(params.get("logprobs", False)),
        )
        request = _Request(prompt_ids, max_tokens, asyncio.get_running_loop().create_future())
        self._pending.append((sampling, request))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._drain())
        token_ids, log_probs = await request.future
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _drain(self) -> None:
        """Serve pending requests in batches until none are left."""
        while self._pending:
            await asyncio.sleep(_BATCH_WINDOW_S)  # let concurrent requests arrive
            taken, self._pending = self._pending[: self.config.max_num_seqs], self._pending[self.config.max_num_seqs :]
            groups: dict[_Sampling, list[_Request]] = {}
            for sampling, request in taken:
                groups.setdefault(sampling, []).append(request)
            for sampling, requests in groups.items():
                try:
                    async with self._model_lock:
                        results = await asyncio.to_thread(self._generate_batch, requests, sampling)
                except Exception as exc:  # hand the error to every waiting caller
                    for request in requests:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    continue
                for request, result in zip(requests, results, strict=True):
                    if not request.future.done():
                        request.future.set_result(result)

    @torch.no_grad()
    def _generate_batch(self, requests: list[_Request], sampling: _Sampling) -> list[tuple[list[int], Any]]:
        from transformers import GenerationConfig

        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, request in enumerate(requests):  # left padding: all prompts end at `width`
            input_ids[row, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            attention_mask[row, width - len(request.prompt_ids) :] = 1

        max_new = max(r.max_tokens for r in requests)
        greedy = sampling.temperature <= 0
        gen_kwargs = dict(
            max_new_tokens=max_new,
            do_sample=not greedy,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            repetition_penalty=sampling.repetition_penalty,
            return_dict_in_generate=True,
            output_scores=sampling.logprobs,
        )
        if not greedy:  # top_k=0 / top_p=1 switch those filters off explicitly
            gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        if self.config.ignore_eos:
            gen_kwargs["min_new_tokens"] = max_new
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=GenerationConfig(**gen_kwargs)
        )
        new_tokens = out.sequences[:, width:]
        log_probs = None
        if sampling.logprobs:  # scores: one (batch, vocab) tensor of processed logits per step
            scores = torch.stack(out.scores, dim=1).float().log_softmax(dim=-1)
            log_probs = scores.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)

        results = []
        for row, request in enumerate(requests):
            tokens = new_tokens[row, : request.max_tokens].tolist()
            if not self.config.ignore_eos:  # keep the first eos, drop what follows (padding)
                end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
                tokens = tokens[:end]
            row_lp = log_probs[row, : len(tokens)].tolist() if log_probs is not None else None
            results.append((tokens, row_lp))
        return results

    # ------------------------------------------------------------------ weights

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int] = None):
        """Replace the model's weights with the actor's (full tensors, HF parameter names)."""
        state = {name: tensor for name, tensor in named_tensors}
        async with self._model_lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in self._tied]
        if unexpected or missing:
            raise RuntimeError(f"hf rollout weight sync: unexpected {unexpected[:5]}, missing {missing[:5]}")
        self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # ------------------------------------------------------------------ lifecycle
    # Memory management calls of the server protocol. On CPU there is no device
    # memory to free, so sleeping keeps the weights (the next sync overwrites them).

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None  # no cache survives a generate() call

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False, **kwargs) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}  # requests are short: let them finish

    async def abort_request(self, request_id: str, **kwargs) -> dict[str, Any]:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One ``hf`` rollout replica: a single :class:`HFRolloutServer` actor.

    Built for hybrid mode, the sync v1 trainer's layout: ``init_hybrid`` hands over the
    colocated training workers, whose :class:`HFServerAdapter` finds the server by name.
    The server holds no accelerator (``num_cpus=0``, so Ray pins it to one thread, the
    fastest setting for small models on a few cores). Standalone/colocated replicas
    (separate-async trainer, reward or teacher servers) are untested.
    """

    async def launch_servers(self) -> None:
        if self.world_size != 1:
            raise ValueError(
                "the hf rollout runs one process per replica: set actor_rollout_ref.rollout."
                "tensor_model_parallel_size=1 (and data/pipeline parallel size 1)"
            )
        if self.is_reward_model or self.is_teacher_model:
            name = f"hf_server_{'reward' if self.is_reward_model else 'teacher'}_{self.replica_rank}{self.name_suffix}"
        else:
            name = server_actor_name(self.replica_rank) + self.name_suffix
        server = (
            ray.remote(HFRolloutServer)
            .options(name=name, max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        # Calls on an actor run in order: this returns once __init__ has finished.
        await server.set_global_steps.remote(None)
        self.servers = [server]
        self._server_handle = server
        self._server_address = name  # the load balancer only uses it as a key

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """The in-worker end of the weight sync: forwards the actor's weights to the server."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self._sends = rank % world == 0  # one rank per replica feeds its server
        self._server = None

    def _server_handle(self):
        if self._server is None:  # the server starts after the hybrid workers
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout receives full tensors only, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("the hf rollout needs merged LoRA weights: set model.lora.merge=True")
        # Every rank must drain the generator: FSDP all-gathers each tensor collectively.
        named = []
        async for name, tensor in ensure_async_iterator(weights):
            if self._sends:
                named.append((name, tensor.detach().to("cpu", copy=True)))
        if self._sends:
            await self._server_handle().load_weights.remote(named, kwargs.get("global_steps"))
