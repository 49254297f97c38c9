"""A well-behaved skill writer for tests: valid JSON, fresh items every request.

``writer_reply(prompt, n)`` answers a trajectory-summary request (Skill-SD) with a summary
that carries ``n``, an extraction prompt (Tab. 7/8) with three new items
whose texts carry the request number ``n`` (so no two requests repeat each other and the
bank can grow), and a merge prompt (Tab. 9/10) with the group it was given. It wraps
the JSON the way real models do (a thinking block with ``\\boxed{}`` first).

``WriterServer`` serves the same replies as an OpenAI-compatible endpoint on 127.0.0.1,
so a real training run can use it through ``sgsd.update.writer=openai:URL#MODEL``.
"""

from __future__ import annotations

import itertools
import json

from tests.chat_server import ChatServer, ok_reply

MERGE_MARKERS = ("merge", "Merge", "MERGE")


def _is_merge(prompt: str) -> bool:
    return any(m in prompt[:600] for m in MERGE_MARKERS)


def writer_reply(prompt: str, n: int) -> str:
    if '"golden_workflow"' in prompt:  # Skill-SD's trajectory summary (sgsd.skill_sources.summary_prompt)
        return "<think>one attempt</think>\n" + json.dumps({
            "success_analysis": f"set up the equation in \\frac{{a}}{{b}} form ({n})",
            "mistake_analysis": f"dropped a sign at step {n}",
            "golden_workflow": f"1. restate the problem 2. isolate the unknown 3. check ({n})"})
    if _is_merge(prompt):
        start = prompt.index("[")
        items, _ = json.JSONDecoder().raw_decode(prompt[start:])
        key = "general_skills" if "title" in items[0] else "common_mistakes"
        return json.dumps({key: items})
    if '"common_mistakes"' in prompt:
        items = [{"description": f"Mistake {n}.{i}: dropping a sign in \\frac{{a}}{{b}}",
                  "why_it_happens": f"rushing step {n}.{i}", "how_to_avoid": f"recheck signs {n}.{i}"}
                 for i in range(3)]
        return "<think>they wrote \\boxed{0}</think>\n" + json.dumps({"common_mistakes": items})
    items = [{"title": f"Skill {n}.{i}", "principle": f"Reduce \\frac{{a}}{{b}} before expanding ({n}.{i})",
              "when_to_apply": f"rational expressions {n}.{i}"} for i in range(3)]
    return "<think>the answer is \\boxed{2}</think>\n" + json.dumps({"general_skills": items})


class WriterServer(ChatServer):
    """A :class:`tests.chat_server.ChatServer` answering with :func:`writer_reply` (a context manager)."""

    def __init__(self) -> None:
        counter = itertools.count(1)  # next() is atomic: concurrent requests get distinct numbers
        super().__init__(lambda body, headers, attempt: (
            200, ok_reply(writer_reply(body["messages"][-1]["content"], next(counter))), 0.0, {}))
