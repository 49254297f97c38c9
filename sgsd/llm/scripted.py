"""A deterministic client that replays given replies: for tests and dry runs.

Where no real model can run (or a test needs an exact reply, e.g. malformed JSON), the
cold-start builder, merger and updater take this client instead. It records every prompt
and settings object it receives, so a test can also check what was asked. A prompt may be
a conversation (:data:`sgsd.llm.base.Prompt`): it is checked like the real clients check
it, and recorded (and shown to a reply function) as a copy of its messages, so a caller
that goes on extending its conversation does not rewrite what was recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Union

from sgsd.llm.base import Completion, GenerationSettings, LLMStats, Prompt, as_messages, check_prompts

__all__ = ["Reply", "ScriptedClient"]

# str: a reply; None: a failed request; an exception instance: a failure of that kind.
Reply = Union[str, None, BaseException]


class ScriptedClient:
    """Returns scripted replies, in order, or ``replies(prompt)`` when given a function.

    Args:
        replies: either replies consumed one per prompt across calls (running out fails the
            extra requests with ``"exhausted"``), or a function ``prompt -> reply`` (a
            string prompt as given, a conversation as a list of message dicts). A reply
            is a string, ``None`` (a failed request), or an exception instance (a failed
            request of kind ``type(exc).__name__``). A function that raises fails that
            request the same way: like every client, this one never raises from
            :meth:`generate`. A reply of any other type is a bug in the script and
            raises ``TypeError``.
        name: the client's name in stats and bank metadata.
    """

    def __init__(self, replies: Iterable[Reply] | Callable[[Prompt], Reply], name: str = "scripted") -> None:
        if isinstance(replies, str):
            raise TypeError("replies must be a list of replies or a function, not a single string")
        self.name = name
        self.stats = LLMStats()
        self._reply_fn: Callable[[Prompt], Reply] | None = replies if callable(replies) else None
        self._queue: list[Reply] = [] if callable(replies) else list(replies)
        self.prompts: list[Prompt] = []  # a conversation as a copy of its messages
        self.settings: list[GenerationSettings] = []  # one per generate() call

    def __repr__(self) -> str:
        source = "function" if self._reply_fn is not None else f"{len(self._queue)} replies left"
        return f"ScriptedClient(name={self.name!r}, {source}, {len(self.prompts)} prompts seen)"

    @property
    def remaining(self) -> int:
        """Scripted replies not yet used (0 for a function)."""
        return len(self._queue)

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt, in order (``ValueError`` for a malformed conversation)."""
        prompts = check_prompts(prompts)
        self.settings.append(settings or GenerationSettings())
        completions = []
        for prompt in prompts:
            prompt = prompt if isinstance(prompt, str) else as_messages(prompt)
            self.prompts.append(prompt)
            self.stats.requests += 1
            completions.append(self._complete(prompt))
        return completions

    def _complete(self, prompt: Prompt) -> Completion:
        if self._reply_fn is not None:
            try:
                reply = self._reply_fn(prompt)
            except Exception as exc:  # noqa: BLE001 - a raising script is a failed request
                reply = exc
        elif self._queue:
            reply = self._queue.pop(0)
        else:
            self.stats.record_failure("exhausted")
            return Completion(text=None, error="exhausted: no scripted replies left")

        if isinstance(reply, str):
            return Completion(text=reply)
        if isinstance(reply, BaseException):
            kind = type(reply).__name__
            self.stats.record_failure(kind)
            return Completion(text=None, error=f"{kind}: {reply}")
        if reply is None:
            self.stats.record_failure("scripted")
            return Completion(text=None, error="scripted: failure injected by the script")
        raise TypeError(f"a scripted reply must be str, None or an exception, got {type(reply).__name__}")
