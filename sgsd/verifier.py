"""Answer extraction and grading: the binary reward of SGSD and its evaluations.

A response is graded by the content of its *last* ``\\boxed{...}``/``\\fbox{...}``,
joined with the boxes right before it when only a separator stands between them (an
answer split over several boxes, :func:`extract_answer`); no complete box is a format
failure. The content is checked against the gold answer
(LaTeX without ``$``) by normalised-string equality and by math-verify ("symbolic
answer checking with a string-based fallback"); either one saying equal is correct.
Strings go first only because they are cheap: the verdict is the same either way.

Timeout design: math-verify's own timeouts use ``signal.alarm``, which raises off the
main thread, where verl runs reward functions (Ray actor threads, thread pools). So
math-verify runs with them off (``parsing_timeout=None``, ``timeout_seconds=None``) in
a small pool of persistent worker subprocesses, started lazily and fed one JSON line
per request over pipes. The caller waits on the pipe with a deadline (``selectors``
works from any thread) and SIGKILLs a worker that misses it, then starts a
replacement. Only killing stops a stuck C-level big-integer computation such as
``2^{2^{2^{2^{2^{2}}}}}``; no signal or thread can. Workers are plain ``subprocess``
children running this file (stdlib-only top level) rather than ``multiprocessing``
ones, so they never re-import the parent's ``__main__`` (a Ray worker, a training
script) nor inherit forked state; IPC adds well under a millisecond per request.
Cheap guards run in the caller first: extraction is a linear scan (no recursion), and
answers over ``MAX_SYMBOLIC_CHARS`` or nested deeper than ``MAX_SYMBOLIC_DEPTH`` get
the string check only. Worker start-up (importing sympy, about a second) and waiting
for a free worker are not counted in ``timeout_s``; start-up has its own bound,
``_STARTUP_TIMEOUT_S``.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from sgsd.envs.transcript import EPISODE_KEY

logger = logging.getLogger(__name__)

MAX_SYMBOLIC_CHARS = 1000  # longer answers only get the string comparison
# math-verify's LaTeX parser is exponential in brace nesting (depth 12: seconds, 15:
# half a minute); real answers stay far below, so deeper ones get strings only.
MAX_SYMBOLIC_DEPTH = 10
_STARTUP_TIMEOUT_S = 60.0  # importing sympy on a loaded machine can take a while
_POOL_SIZE = max(1, min(4, os.cpu_count() or 1))
_WORKER_MEMORY_BYTES = 4 << 30  # a runaway big-int fails with MemoryError, not host OOM


@dataclass(frozen=True)
class GradeResult:
    """The verdict on one response, with the answer it was based on."""

    correct: bool
    extracted: str | None  # the boxed content, or None if no box
    method: str  # "math_verify" | "string" | "no_box" | "timeout"


# --------------------------------------------------------------------- extraction
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # escaped chars (\{, \}, \\) never count
_BARE_TOKEN_RE = re.compile(r"[^\s${}]+(?:\{[^\s${}]*\}[^\s${}]*)*")  # 5, \frac{1}{2}


def _boxes(text: str) -> list[tuple[int, int, str | None]]:
    """``(start, end, content)`` of every outermost ``\\boxed``/``\\fbox`` in order; content None
    for a box that never closes (a truncated response). Linear time, constant stack."""
    out: list[tuple[int, int, str | None]] = []
    for match in _BOX_RE.finditer(text):
        if out and match.start() < out[-1][1]:
            continue  # a box inside the previous one
        i, n = match.end(), len(text)
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] != "{":
            # TeX would box one token, but models write `\boxed 42` meaning the number.
            bare = _BARE_TOKEN_RE.match(text, i)
            content = bare.group().rstrip(".,;") if bare else ""
            out.append((match.start(), bare.end() if bare else i, content or None))
            continue
        depth, end = 0, None
        for tok in _BRACE_RE.finditer(text, i):
            if tok.group() == "{":
                depth += 1
            elif tok.group() == "}":
                depth -= 1
                if depth == 0:
                    end = tok.end()
                    break
        content = text[i + 1:end - 1].strip() if end else None
        while content and content.startswith(("\\boxed", "\\fbox")):  # \boxed{\boxed{7}} is 7
            inner = _boxes(content)
            if len(inner) != 1 or inner[0][1] != len(content) or inner[0][2] is None:
                break
            content = inner[0][2]
        out.append((match.start(), end if end is not None else n, content))
    return out


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed``/``\\fbox`` in ``text``; None if absent or unbalanced.
    ``\\boxed 5`` (no braces) yields ``5``."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


_SEPARATOR_NOISE_RE = re.compile(r"\\(?:quad|qquad|[,;:! ()\[\]])|\$|~")
_LABEL_RE = re.compile(r"(?:^|\s)[A-Za-z](?:_\{?\w+\}?)?\s*=\s*$")  # "y_2 =" before the next box
_JOINERS = {"and", "or", ",", ";"}
MAX_JOIN_WORDS = 5


def _joins(separator: str) -> bool:
    """Does the text between two boxes join them into one answer? Nothing, punctuation, math
    delimiters and spacing, or a few words ending in and / or / , / ; ("\\quad \\text{and}
    \\quad", "for part (a) and", a label "y_2 =" before the box)."""
    text = _LABEL_RE.sub(" ", _SEPARATOR_NOISE_RE.sub(" ", _unwrap_text(separator)))
    words = text.replace(",", " , ").replace(";", " ; ").split()
    return not words or (len(words) <= MAX_JOIN_WORDS and words[-1].lower() in _JOINERS)


def extract_answer(text: str) -> str | None:
    """The final answer of ``text``: the last box, joined with the boxes right before it when
    only a separator stands between them (``\\boxed{1}, \\boxed{2}``, ``\\boxed{(2, 2)} \\quad
    \\text{and} \\quad \\boxed{(6, 2)}``): math-verify's reading of an answer split over several
    boxes. A draft box followed by reasoning and a final box is the final box alone."""
    boxes = _boxes(text)
    if not boxes or boxes[-1][2] is None:
        return None
    run = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[2] is None or not _joins(text[box[1]:run[0][0]]):
            break
        run.insert(0, box)
    return ", ".join(content for _, _, content in run)


# ------------------------------------------------------------------ normalisation
_WRAP_RE = re.compile(
    r"(?P<wrap>\\(?:text(?:bf|rm|it|normal)?|math(?:rm|bf)|mbox)\s*\{)|\\.|[{}]", re.DOTALL
)
_DROP_RE = re.compile(
    r"\\(?:left|right|displaystyle|quad|qquad)(?![A-Za-z])"  # sizing and spacing macros
    r"|\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])"  # degrees
    r"|\\[!,;: ]|\\%|%|\\\$|\$|\s+"  # thin spaces, percent, dollars, whitespace
)
_FRAC_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")


def _unwrap_text(s: str) -> str:
    """Drop ``\\text{...}``-style wrappers (keeping their content) in one linear pass."""
    out: list[str] = []
    wrapper_stack: list[bool] = []  # per open brace: does its closing brace go too?
    pos = 0
    for m in _WRAP_RE.finditer(s):
        out.append(s[pos : m.start()])
        pos = m.end()
        tok = m.group()
        if m.group("wrap"):
            wrapper_stack.append(True)
            continue
        if tok == "{":
            wrapper_stack.append(False)
        elif tok == "}" and wrapper_stack and wrapper_stack.pop():
            continue
        out.append(tok)
    out.append(s[pos:])
    return "".join(out)


def normalize_answer(s: str) -> str:
    """Canonical string form of a LaTeX answer for the string-based fallback."""
    s = _DROP_RE.sub("", _unwrap_text(s))
    return _FRAC_RE.sub(r"\\frac", s).rstrip(".")


def _brace_depth(s: str) -> int:
    depth = deepest = 0
    for tok in _BRACE_RE.finditer(s):
        depth += {"{": 1, "}": -1}.get(tok.group(), 0)
        deepest = max(deepest, depth)
    return deepest


def _strings_equal(pred: str, gold: str) -> bool:
    a, b = normalize_answer(pred), normalize_answer(gold)
    return bool(a) and a == b


# ------------------------------------------------------------- symbolic checking
def _as_boxed(answer: str) -> str:
    """Wrap an answer so math-verify reads all of it as one LaTeX expression."""
    answer = answer.strip()
    if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$" and answer[-2] != "\\":
        answer = answer.strip("$").strip()  # `$x$` or `$$x$$` delimiters, not `\$`
    return answer if "\\boxed" in answer else "\\boxed{" + answer + "}"


@functools.lru_cache(maxsize=1024)  # gold answers repeat across a prompt's rollouts
def _parse(answer: str) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    return tuple(parse(_as_boxed(answer), config, parsing_timeout=None))


def _symbolic_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict, with its signal-based timeouts off (the caller bounds it)."""
    from math_verify import verify

    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _worker_main(parent_pid: int) -> None:
    """Serve ``{"pred", "gold"}`` lines on stdin with ``{"equal"}`` lines (subprocess side)."""
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass

    def watch_parent() -> None:  # stdin EOF is not seen while busy; don't outlive the parent
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    logging.disable(logging.WARNING)  # math-verify warns about the disabled timeouts
    _symbolic_equal("1", "1")  # import and warm up before announcing readiness
    proto.write(b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            reply: dict = {"equal": _symbolic_equal(request["pred"], request["gold"])}
        except Exception as exc:  # RecursionError, MemoryError, sympy internals
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        proto.write(json.dumps(reply).encode() + b"\n")


_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1])['_worker_main'](int(sys.argv[2]))"


class _Worker:
    """One worker subprocess, used by one thread at a time."""

    def __init__(self) -> None:
        # The child must import what this process can, even paths added at runtime.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0,
        )  # fmt: skip
        self._selector = selectors.DefaultSelector()  # epoll: fine with fds > 1024
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self._ready_by: float | None = time.monotonic() + _STARTUP_TIMEOUT_S

    def _read_line(self, deadline: float) -> bytes | None:
        """Next reply line, or None at the deadline. EOFError if the worker died."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise EOFError("verifier worker exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def check(self, pred: str, gold: str, timeout_s: float) -> dict | None:
        """The worker's reply, ``{"equal": bool}`` or ``{"error": str}``; None on timeout.

        Raises if the worker is unusable (died, never started, broken pipe).
        """
        if self._ready_by is not None:
            if self._read_line(self._ready_by) is None:
                raise TimeoutError("verifier worker did not start")
            self._ready_by = None
        data = json.dumps({"pred": pred, "gold": gold}).encode() + b"\n"
        fd = self.proc.stdin.fileno()
        while data:
            data = data[os.write(fd, data) :]
        line = self._read_line(time.monotonic() + timeout_s)
        return None if line is None else json.loads(line)

    def kill(self) -> None:
        self._selector.close()
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class _Pool:
    """At most ``size`` workers; a thread checks one out per request."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self._size, self._live = size, 0
        self._idle: list[_Worker] = []
        self._cond = threading.Condition()

    def check(self, pred: str, gold: str, timeout_s: float) -> dict | None:
        with self._cond:
            while not self._idle and self._live >= self._size:
                self._cond.wait()
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                self._live += 1  # reserve the slot; the slow start happens unlocked
        if worker is not None and worker.proc.poll() is not None:
            worker.kill()  # died while idle (OOM killer, ...): reuse its slot
            worker = None
        reply: dict | None = None
        crashed = True
        try:
            worker = worker or _Worker()
            reply = worker.check(pred, gold, timeout_s)
            crashed = False
            return reply
        finally:
            if worker is not None and reply is None:  # timed out or broken
                worker.kill()
                # After a timeout, start the replacement now so its import overlaps
                # with whatever the caller does next; after a crash, start it lazily.
                worker = None if crashed else self._try_spawn()
            with self._cond:
                if worker is None:
                    self._live -= 1
                else:
                    self._idle.append(worker)
                self._cond.notify()

    @staticmethod
    def _try_spawn() -> _Worker | None:
        try:
            return _Worker()
        except OSError:
            return None

    def close(self) -> None:
        """Kill idle workers; busy ones exit on stdin EOF once this process is gone."""
        if os.getpid() != self.pid:
            return  # a forked child must not kill its parent's workers
        with self._cond:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.kill()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        # After a fork the inherited pipes are shared with the parent: start afresh.
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool(_POOL_SIZE)
            atexit.register(_pool.close)
        return _pool


# -------------------------------------------------------------------- public API
def grade(response: str, gold: str, *, timeout_s: float = 5.0) -> GradeResult:
    """Grade the last boxed answer of ``response`` against ``gold``; thread-safe.

    ``timeout_s`` bounds the symbolic check (start-up and queueing excluded, see the
    module docstring); on timeout the result is the string comparison's.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    pred = extract_answer(response)
    if pred is None:
        return GradeResult(False, None, "no_box")
    if _strings_equal(pred, gold):
        return GradeResult(True, pred, "string")
    too_big = any(
        len(s) > MAX_SYMBOLIC_CHARS or _brace_depth(s) > MAX_SYMBOLIC_DEPTH for s in (pred, gold)
    )
    if not pred or not gold.strip() or too_big:
        return GradeResult(False, pred, "string")
    for attempt in (1, 2):  # one retry, for a worker that dies just as it is handed out
        try:
            reply = _get_pool().check(pred, gold, timeout_s)
            break
        except Exception as exc:  # crashed or could not start
            if attempt == 2:
                logger.warning("math-verify worker failed (%s); strings decide", exc)
                return GradeResult(False, pred, "string")
    if reply is None:
        return GradeResult(False, pred, "timeout")
    if "error" in reply:  # math-verify raised on this input: strings decided
        logger.debug("math-verify error on %r vs %r: %s", pred, gold, reply["error"])
        return GradeResult(False, pred, "string")
    return GradeResult(bool(reply["equal"]), pred, "math_verify")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl ``custom_reward_function`` entry point; safe to call from any thread.

    ``ground_truth`` may be a list of acceptable answers. ``timeout_s`` can be set via
    verl's ``reward_kwargs``. An environment episode (``extra_info["episode"]``, the agent loop's
    outcome, which verl's reward manager merges into ``extra_info``) scores 1 when solved, else 0;
    the same keys as a math answer, so batches mixing both keep one reward-info layout.
    """
    episode = extra_info.get(EPISODE_KEY) if isinstance(extra_info, dict) else None
    if isinstance(episode, dict):  # a multi-turn episode (recipe.sgsd.agent_loop): the environment decided
        solved = bool(episode.get("solved", False))
        return {"score": 1.0 if solved else 0.0, "acc": solved, "pred": ""}
    golds = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    timeout_s = float(kwargs.get("timeout_s", 5.0))
    for gold in golds or [""]:
        result = grade(str(solution_str), str(gold), timeout_s=timeout_s)
        if result.correct:
            break
    return {"score": 1.0 if result.correct else 0.0, "acc": result.correct, "pred": result.extracted or ""}
