"""When and how much a moving teacher follows the student (sgsd/teacher_schedule.py, paper Fig. 3b)."""

from __future__ import annotations

import pytest
import torch

from sgsd.checks import SettingError
from sgsd.teacher_schedule import TeacherSchedule, blend_


def test_ema_updates_every_step_with_one_minus_the_decay():
    ema = TeacherSchedule("ema", decay=0.9)
    assert [ema.weight(s) for s in (1, 2, 50)] == pytest.approx([0.1, 0.1, 0.1])


def test_periodic_copies_after_every_period_th_step_only():
    periodic = TeacherSchedule("periodic", period=3)
    assert [periodic.weight(s) for s in range(1, 8)] == [None, None, 1.0, None, None, 1.0, None]
    assert [TeacherSchedule("periodic", period=1).weight(s) for s in (1, 2)] == [1.0, 1.0]


@pytest.mark.parametrize("kind", ["live", "frozen"])
def test_live_and_frozen_teachers_never_update(kind):
    assert TeacherSchedule(kind).weight(1) is None and not TeacherSchedule(kind).moving


def test_steps_count_from_one():
    with pytest.raises(ValueError, match="count from 1"):
        TeacherSchedule("ema").weight(0)


def test_expected_is_the_recursion_written_out():
    theta0, s1, s2, s3 = (torch.tensor([float(v)]) for v in (0, 8, 4, 16))
    # ema, d = 0.5: 0 -> 4 -> 4 -> 10
    assert TeacherSchedule("ema", decay=0.5).expected(theta0, [s1, s2, s3]).item() == 10.0
    # periodic, period 2: theta0 until step 2, then the student of step 2, kept at step 3
    periodic = TeacherSchedule("periodic", period=2)
    assert [periodic.expected(theta0, [s1, s2, s3][:n]).item() for n in (1, 2, 3)] == [0.0, 4.0, 4.0]


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("decay", 1.0, r"decay must be in \(0, 1\)"), ("decay", 0.0, r"decay must be in \(0, 1\)"),
    ("decay", float("nan"), "decay must be"), ("period", 0, "period must be >= 1"),
    ("kind", "swa", "kind must be one of live, frozen, ema, periodic"),
])
def test_bad_settings_name_the_field(field, value, rule):
    settings = {"kind": "ema", field: value}
    with pytest.raises(SettingError, match=rule):
        TeacherSchedule(**settings)


def test_blend_in_place_is_lerp_and_a_weight_of_one_copies_exactly():
    teacher, student = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([3.0, 2.0, 3.5])
    storage = teacher.data_ptr()
    blend_(teacher, student, 0.25)
    torch.testing.assert_close(teacher, torch.tensor([1.5, -1.0, 3.125]))
    assert teacher.data_ptr() == storage  # the parameter's own storage, not a new tensor
    odd = torch.tensor([1.0 / 3.0])
    blend_(teacher[:1], odd, 1.0)
    assert teacher[0].item() == odd.item()


def test_blend_of_a_bf16_teacher_is_computed_in_fp32_and_a_student_of_another_dtype_is_cast():
    teacher = torch.full((4,), 1.0, dtype=torch.bfloat16)
    blend_(teacher, torch.full((4,), 3.0, dtype=torch.float32), 0.5)
    assert teacher.dtype == torch.bfloat16 and torch.equal(teacher, torch.full((4,), 2.0, dtype=torch.bfloat16))
    fp32 = torch.zeros(2)
    blend_(fp32, torch.tensor([1.0, 2.0], dtype=torch.float64), 0.5)
    assert fp32.dtype == torch.float32 and fp32.tolist() == [0.5, 1.0]


def test_blend_refuses_mismatched_shapes_and_weights_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"differ in shape: \(2,\) vs \(3,\)"):
        blend_(torch.zeros(2), torch.zeros(3), 0.5)
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="blend weight must be in"):
            blend_(torch.zeros(2), torch.zeros(2), weight)
