"""The verifier: extraction, grading on every shipped benchmark answer, equivalences,
pathological inputs (bounded time) and use from non-main threads (no signal.alarm)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sgsd.verifier import (
    MAX_SYMBOLIC_DEPTH,
    GradeResult,
    _symbolic_equal,
    compute_score,
    extract_boxed,
    grade,
    normalize_answer,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_DIR = PROJECT_ROOT / "sgsd" / "data" / "benchmarks"
BENCHMARKS = ("aime24", "aime25", "hmmt25", "amc2023", "math500")
BOUND_S = 15.0  # generous: these check that a bound exists, not speed


def _benchmark_rows() -> list[tuple[str, str]]:
    if not BENCHMARK_DIR.exists():  # shipped with the package; seed from shared data once
        BENCHMARK_DIR.mkdir(parents=True)
        for name in BENCHMARKS:
            shutil.copy(Path("/work/shared/data/benchmarks") / f"{name}.jsonl", BENCHMARK_DIR)
    rows = []
    for name in BENCHMARKS:
        with open(BENCHMARK_DIR / f"{name}.jsonl", encoding="utf-8") as f:
            rows += [(f"{name}:{i}", json.loads(line)["answer"]) for i, line in enumerate(f)]
    return rows


ROWS = _benchmark_rows()


def test_all_benchmarks_loaded():
    assert len(ROWS) == 630
    assert all(isinstance(answer, str) and answer.strip() for _, answer in ROWS)


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{a}{b}} done", r"\frac{a}{b}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed {x}", "x"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{a} then \boxed{b}", "b"),
        (r"\boxed{a} then \fbox{c}", "c"),
        (r"\fbox{\sqrt{2}}", r"\sqrt{2}"),
        (r"the answer is $\boxed 5$.", "5"),
        (r"\boxed 42.", "42"),
        (r"\boxed \frac{1}{2}, done", r"\frac{1}{2}"),
        (r"{\boxed 5} is it", "5"),
        (r"\boxed{}", ""),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"\boxed{a \\}", r"a \\"),  # `\\` is a line break, its `}` still closes
        (r"\boxed{\boxed{7}}", "7"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box at all, the answer is 5",
        r"\boxed{\frac{1}{2}",  # truncated
        r"\boxed{a} and finally \boxed{b",  # the last box is truncated: no fallback to `a`
        r"\boxed{\}",  # the escaped brace does not close
        r"\boxedsomething{5}",  # another macro
        r"$\boxed$",
        "",
    ],
)
def test_extract_boxed_none(text):
    assert extract_boxed(text) is None


def test_no_box_is_a_format_failure():
    assert grade("The answer is 5.", "5") == GradeResult(False, None, "no_box")
    assert grade(r"The answer is \boxed{5", "5") == GradeResult(False, None, "no_box")


# --------------------------------------------------------- benchmark answers
def test_every_benchmark_answer_grades_correct():
    failures = [
        (row, answer, result)
        for row, answer in ROWS
        if not (result := grade(f"... so the answer is \\boxed{{{answer}}}.", answer)).correct
        or result.extracted != answer
    ]
    assert failures == []


def test_math_verify_accepts_every_benchmark_answer():
    # grade() decides identical strings without sympy; this checks the symbolic path
    # parses every gold answer too (in-process, on the main thread, no timeout).
    failures = [(row, answer) for row, answer in ROWS if not _symbolic_equal(answer, answer)]
    assert failures == []


def test_wrong_answer_grades_wrong_for_every_row():
    # `x + 1` differs from x for every finite number, tuple, set, matrix, equation or
    # text answer. Graded from worker threads, as verl's reward workers do.
    def check(row_answer):
        row, answer = row_answer
        return row, answer, grade(f"I get \\boxed{{{answer} + 1}}", answer)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, ROWS))
    assert [(row, answer) for row, answer, r in results if r.correct] == []
    assert all(r.method in ("math_verify", "string") for _, _, r in results)


def test_other_rows_answers_grade_wrong():
    integer_rows = [(row, a) for row, a in ROWS if a.isdigit()]
    for (row, answer), (_, other) in zip(integer_rows, integer_rows[1:]):
        if int(other) != int(answer):
            assert not grade(rf"\boxed{{{other}}}", answer).correct, row


# ------------------------------------------------------------- equivalences
@pytest.mark.parametrize(
    ("pred", "gold", "method"),
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}", "string"),
        (r"\tfrac{1}{2}", r"\frac{1}{2}", "string"),
        (r"$\frac{1}{2}$", r"\frac{1}{2}", "string"),
        ("120", r"120^\circ", "string"),
        (r"120^{\circ}", r"120^\circ", "string"),
        ("Evelyn", r"\text{Evelyn}", "string"),
        ("18.90", r"\$18.90", "string"),
        (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", "string"),
        (r"\text{(C)}", r"\text{(C)}", "string"),
        ("(C)", r"\text{(C)}", "string"),
        (r"\frac{1}{2}", "0.5", "math_verify"),
        ("0.5", r"\frac{1}{2}", "math_verify"),
        (r"\dfrac{1}{2}", r"\frac12", "math_verify"),
        ("x=3", "3", "math_verify"),
        ("5, 3", "3, 5", "math_verify"),
        ("10080", r"10,\!080", "math_verify"),
        (r"\frac{9}{\sqrt{23}}", r"\frac{9 \sqrt{23}}{23}", "math_verify"),
        (r"2^{25}\times 26!", r"2^{25} \cdot 26!", "math_verify"),
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", "math_verify"),
        (r"[-2, 7]", r"x \in [-2,7]", "math_verify"),
        (r"\frac{275}{2}", r"137 \frac{1}{2}", "math_verify"),
        (r"\frac{1}{1+\frac{1}{1+\frac{1}{2}}}", r"\frac{3}{5}", "math_verify"),
    ],
)
def test_equivalent_answers(pred, gold, method):
    assert grade(rf"Thus \boxed{{{pred}}}.", gold) == GradeResult(True, pred, method)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.51", r"\frac{1}{2}"),
        ("3", "3, 5"),
        (r"\text{(B)}", r"\text{(C)}"),
        ("x=4", "3"),
        (r"\sqrt{3}", r"\frac{\sqrt{3}}{3}"),
        ("(2, 7)", "[2, 7]"),
        ("", "0"),
    ],
)
def test_inequivalent_answers(pred, gold):
    assert not grade(rf"\boxed{{{pred}}}", gold).correct


def test_normalize_answer():
    assert normalize_answer(r" \left( \dfrac{1}{2} , 3 \right) . ") == r"(\frac{1}{2},3)"
    assert normalize_answer(r"\text{\textbf{Navin}}") == "Navin"
    assert normalize_answer(r"\mbox{x}^{2}") == "x^{2}"  # only the wrapper's braces go
    assert normalize_answer(r"45\%") == "45"


def test_compute_score():
    assert compute_score("math500", r"so \boxed{\frac 34}", r"\frac{3}{4}") == {
        "score": 1.0, "acc": True, "pred": r"\frac 34",
    }  # fmt: skip
    assert compute_score("aime24", r"\boxed{7}", "8", extra_info={"index": 0}) == {
        "score": 0.0, "acc": False, "pred": "7",
    }  # fmt: skip
    assert compute_score("aime24", "no box", "8") == {"score": 0.0, "acc": False, "pred": ""}
    assert compute_score("x", r"\boxed{5}", ["4", "5"])["acc"] is True


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        grade(r"\boxed{1}", "1", timeout_s=0)


# ------------------------------------------------- pathological inputs, threads
POWER_TOWER = r"2^{2^{2^{2^{2^{2^{2^{2}}}}}}}"


def _timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


@pytest.mark.parametrize("tower", [POWER_TOWER, r"10^{10^{10^{10}}}"])
def test_power_tower_is_bounded(tower):
    result, elapsed = _timed(grade, rf"\boxed{{{tower}}}", "4", timeout_s=2.0)
    assert elapsed < BOUND_S
    assert result == GradeResult(False, tower, "timeout")
    # The killed worker is replaced and grading goes on normally.
    assert grade(r"\boxed{0.5}", r"\frac{1}{2}") == GradeResult(True, "0.5", "math_verify")


def test_deeply_nested_braces_are_bounded():
    deep = "{" * 10_000 + "1" + "}" * 10_000
    (extracted, elapsed) = _timed(extract_boxed, rf"\boxed{{{deep}}}")
    assert extracted == deep and elapsed < BOUND_S
    assert extract_boxed(r"\boxed{" + deep[:-1]) is None
    result, elapsed = _timed(grade, rf"\boxed{{{deep}}}", "1")
    assert elapsed < BOUND_S and result.method == "string" and not result.correct
    # Short, but math-verify's parser is exponential in nesting: kept away from it.
    medium = "{" * 300 + "1" + "}" * 300
    result, elapsed = _timed(grade, rf"\boxed{{{medium}}}", "2")
    assert elapsed < BOUND_S and result == GradeResult(False, medium, "string")


@pytest.mark.parametrize(
    ("depth", "method"), [(2, "math_verify"), (MAX_SYMBOLIC_DEPTH + 1, "string")]
)
def test_nesting_depth_guard(depth, method):
    nested = "{" * depth + "1" + "}" * depth
    assert grade(rf"\boxed{{{nested}}}", "2") == GradeResult(False, nested, method)
    assert grade(rf"\boxed{{{nested}}}", nested) == GradeResult(True, nested, "string")


def test_huge_response_is_bounded():
    filler = r"Try \boxed{7}, no wait, {{ \left( x \right) }} is $\frac{1}{2}$. " * 2_000
    response = filler[:100_000] + r" Finally \boxed{\dfrac{3}{4}}."
    result, elapsed = _timed(grade, response, r"\frac34")
    assert elapsed < BOUND_S
    assert result == GradeResult(True, r"\dfrac{3}{4}", "math_verify")
    result, elapsed = _timed(grade, "(" * 100_000 + r"\boxed{" + "9" * 5_000 + "}", "9")
    assert elapsed < BOUND_S and result == GradeResult(False, "9" * 5_000, "string")


def test_grading_off_the_main_thread():
    cases = [
        (r"\boxed{0.5}", r"\frac{1}{2}", GradeResult(True, "0.5", "math_verify")),
        (r"\boxed{x=3}", "3", GradeResult(True, "x=3", "math_verify")),
        (r"\boxed{\frac{1}{3}}", "0.5", GradeResult(False, r"\frac{1}{3}", "math_verify")),
        (r"\boxed{204}", "204", GradeResult(True, "204", "string")),
        ("nothing", "1", GradeResult(False, None, "no_box")),
        (rf"\boxed{{{POWER_TOWER}}}", "4", GradeResult(False, POWER_TOWER, "timeout")),
    ]

    def check(case):
        assert threading.current_thread() is not threading.main_thread()
        response, gold, _ = case
        return _timed(grade, response, gold, timeout_s=2.0)

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(check, cases))
    assert [result for result, _ in outcomes] == [expected for _, _, expected in cases]
    assert max(elapsed for _, elapsed in outcomes) < BOUND_S
    # compute_score is what verl calls from Ray actor threads.
    with ThreadPoolExecutor(max_workers=2) as pool:
        scores = list(pool.map(lambda g: compute_score("d", r"\boxed{\frac12}", g), ["0.5", "2"]))
    assert [s["score"] for s in scores] == [1.0, 0.0]


def test_worker_that_died_is_replaced():
    from sgsd import verifier

    assert grade(r"\boxed{0.5}", r"\frac{1}{2}").method == "math_verify"  # a worker is up
    pool = verifier._get_pool()
    with pool._cond:
        idle = list(pool._idle)
    assert idle
    for worker in idle:  # as if the OOM killer had struck between two requests
        worker.proc.kill()
        worker.proc.wait()
    assert grade(r"\boxed{0.25}", r"\frac{1}{4}") == GradeResult(True, "0.25", "math_verify")


def test_import_is_light():
    code = (
        "import sys, sgsd.verifier; "
        "heavy = {'math_verify', 'sympy', 'torch', 'verl', 'ray', 'vllm'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# Answers split over several \boxed{}: the response side of Math-Verify's own test cases
# (huggingface/Math-Verify, tests/test_numina_cases.py and tests/test_open_thoughts.py,
# Apache-2.0), with the gold as the plain answer a dataset holds and math-verify's verdict.
SPLIT_BOXES = [
    ("(2,1),(1,2),(-1,-20),(-20,-1)",
     "solutions are:\n\n\\[\n\\boxed{(1, 2)}, \\boxed{(2, 1)}, \\boxed{(-1, -20)}, \\boxed{(-20, -1)}\n\\]", True),
    ("-2,1", r"\(\boxed{1}\) and \(\boxed{-2}\).", True),
    ("2, 3, 5, 7, 13", r"$$\boxed{2}, \boxed{3}, \boxed{5}, \boxed{7}, \boxed{13}$$", True),
    ("(2, 2), (6, 2)", r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$", True),
    ("(98, 2), (99, 503)", r"$$\boxed{(98, 2)} \quad \text{and} \quad \boxed{(99, 503)}$$", True),
    ("(3, 3), (1, 1)", r"$$\boxed{(3, 3)} \text{ for part (a) and } \boxed{(1, 1)}$$", True),
    ("k = 45, n = 2", r"$$\boxed{k = 45} \quad \text{and} \quad \boxed{n = 2}$$", True),
    ("1,2,3", r"\boxed{1} and \boxed{2} and \boxed{3}", True),
    ("1,2,3", r"\boxed{1},\boxed{2},\boxed{3}", True),
    (r"\frac{108 + 31\sqrt{5}}{216}, \frac{108 - 31\sqrt{5}}{216}",
     r"$\boxed{\dfrac{108 + 31\sqrt{5}}{216}} \quad \text{and} \quad \boxed{\dfrac{108 - 31\sqrt{5}}{216}}$", True),
    ("-2 x^{2}+4 x+3, 3 x^{2}+12 x+10",
     r"\($y_1 = \boxed{-2(x - 1)^2 + 5} \) and \( y_2 = \boxed{3(x + 2)^2 - 2} \) ", True),
    ("1,2", r"\boxed{1} papers and \boxed{2} bins", True),
    ("1,2", r"\boxed{1} no no no no no \boxed{2}", False),
    # a draft box, reasoning, then the final box: the final box alone
    ("004", "the answer should be \\boxed{004}.\n\nBut let me check again: the last three digits are 004. So, "
            "\\boxed{004} is the correct answer.\n\n**Final Answer**\n\\boxed{004}", True),
    ("5", r"First guess \boxed{3}. Checking the cases again, the count is \boxed{5}", True),
    ("3, 5", r"First guess \boxed{3}. Checking the cases again, the count is \boxed{5}", False),
]


@pytest.mark.parametrize("gold, response, correct", SPLIT_BOXES)
def test_an_answer_split_over_several_boxes_is_one_answer(gold, response, correct):
    assert grade(response, gold).correct is correct, grade(response, gold)
