"""Skill bank: the released format read exactly, every bad input named, saves atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sgsd import atomic
from sgsd.bank import BankError, CommonMistake, GeneralSkill, SkillBank, snapshot_path
from sgsd.datasets import DATA_DIR

SHIPPED = sorted((DATA_DIR / "skill_banks").glob("*.json"))


def _minimal() -> dict:
    return {
        "general_skills": [
            {"skill_id": "gen_001", "title": "T", "principle": "P", "when_to_apply": "W"},
        ],
        "task_specific_skills": {},
        "common_mistakes": [
            {"mistake_id": "err_001", "description": "D", "why_it_happens": "Y", "how_to_avoid": "H"},
        ],
        "metadata": {"source": "test"},
    }


def _write(tmp_path: Path, obj, name: str = "bank.json") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_banks_load_and_round_trip_unchanged(path, tmp_path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    bank = SkillBank.load(path)
    assert len(bank.general_skills) == len(raw["general_skills"])
    assert len(bank.common_mistakes) == len(raw["common_mistakes"])
    assert [s.skill_id for s in bank.general_skills] == [s["skill_id"] for s in raw["general_skills"]]
    assert bank.counts()["general_skills"]["dynamic"] == 0  # released banks are all cold-start
    assert bank.metadata == raw["metadata"]  # merge statistics kept verbatim
    out = bank.save(tmp_path / "copy.json")
    assert json.loads(out.read_text(encoding="utf-8")) == raw


def test_shipped_bank_counts(shipped_bank):
    assert shipped_bank.counts() == {
        "general_skills": {"static": 28, "dynamic": 0, "total": 28},
        "common_mistakes": {"static": 98, "dynamic": 0, "total": 98},
    }
    skill = shipped_bank.get("gen_001")
    assert isinstance(skill, GeneralSkill) and skill.title == "Solve equations with constraints"
    assert "Apply when:" in skill.retrieval_text and skill.principle in skill.retrieval_text


def test_dynamic_items_and_extra_fields_survive_save_and_load(tmp_path):
    data = _minimal()
    data["common_mistakes"].append({
        "mistake_id": "err_dyn_0001", "description": "d2", "why_it_happens": "y2", "how_to_avoid": "h2",
        "origin": "dynamic", "utility": {"helpful": 3.5, "misleading": 1.0}, "created_step": 25,
    })
    bank = SkillBank.from_dict(data)
    item = bank.get("err_dyn_0001")
    assert isinstance(item, CommonMistake) and item.origin == "dynamic"
    assert item.extra["utility"] == {"helpful": 3.5, "misleading": 1.0}
    assert bank.counts()["common_mistakes"] == {"static": 1, "dynamic": 1, "total": 2}
    again = SkillBank.load(bank.save(tmp_path / "b.json"))
    assert again.get("err_dyn_0001").extra == item.extra
    assert again.to_dict() == bank.to_dict()
    assert "origin" not in again.to_dict()["common_mistakes"][0]  # static items keep the released shape


def test_snapshot_written_beside_latest(tmp_path):
    bank = SkillBank.from_dict(_minimal())
    latest, snap = bank.save_snapshot(tmp_path / "bank.json", step=25)
    assert latest == tmp_path / "bank.json" and snap == tmp_path / "bank.step_000025.json"
    assert SkillBank.load(snap).to_dict() == SkillBank.load(latest).to_dict()
    assert snapshot_path("x/y/skills.json", 3) == Path("x/y/skills.step_000003.json")
    with pytest.raises(ValueError):
        snapshot_path("bank.json", -1)


# --------------------------------------------------------------------- bad input
def _mutate(fn):
    data = _minimal()
    fn(data)
    return data


BAD = [
    ("not_object", [1, 2], r"top level must be a JSON object, got list"),
    ("missing_collection", _mutate(lambda d: d.pop("common_mistakes")), r"missing top-level key 'common_mistakes'"),
    ("collection_not_list", _mutate(lambda d: d.update(general_skills={})),
     r"'general_skills' must be a list, got dict"),
    ("item_not_object", _mutate(lambda d: d["general_skills"].append("a skill")),
     r"general_skills\[1\]: must be a JSON object, got str"),
    ("missing_id", _mutate(lambda d: d["common_mistakes"][0].pop("mistake_id")),
     r"common_mistakes\[0\]: missing field 'mistake_id'"),
    ("non_string_id", _mutate(lambda d: d["general_skills"][0].update(skill_id=7)),
     r"general_skills\[0\]: field 'skill_id' must be a non-empty string, got 7"),
    ("missing_field", _mutate(lambda d: d["general_skills"][0].pop("principle")),
     r"general_skills\[0\] \(id 'gen_001'\): missing field 'principle'"),
    ("non_string_field", _mutate(lambda d: d["common_mistakes"][0].update(how_to_avoid=["x"])),
     r"common_mistakes\[0\] \(id 'err_001'\): field 'how_to_avoid' must be a string, got list"),
    ("empty_text", _mutate(lambda d: d["general_skills"][0].update(title="   ")),
     r"general_skills\[0\] \(id 'gen_001'\): field 'title' is empty"),
    ("duplicate_id", _mutate(lambda d: d["general_skills"].append(dict(d["general_skills"][0]))),
     r"general_skills\[1\]: duplicate id 'gen_001' \(already used in general_skills\[0\]\)"),
    ("duplicate_id_across", _mutate(lambda d: d["common_mistakes"][0].update(mistake_id="gen_001")),
     r"common_mistakes\[0\]: duplicate id 'gen_001'"),
    ("bad_origin", _mutate(lambda d: d["general_skills"][0].update(origin="online")),
     r"field 'origin' must be one of"),
    ("metadata_not_object", _mutate(lambda d: d.update(metadata=[1])), r"'metadata' must be an object, got list"),
]


@pytest.mark.parametrize("name, data, message", BAD, ids=[b[0] for b in BAD])
def test_bad_bank_errors_name_file_entry_and_field(name, data, message, tmp_path):
    path = _write(tmp_path, data)
    with pytest.raises(BankError, match=message) as info:
        SkillBank.load(path)
    assert str(path) in str(info.value)


def test_missing_file_directory_invalid_json_and_encoding(tmp_path):
    with pytest.raises(BankError, match=r"nope\.json: skill bank file not found"):
        SkillBank.load(tmp_path / "nope.json")
    with pytest.raises(BankError, match="is a directory"):
        SkillBank.load(tmp_path)
    with pytest.raises(BankError, match=r"bank\.json: invalid JSON at line 2 column"):
        SkillBank.load(_write(tmp_path, '{"general_skills": [],\n "common_mistakes": [,]}'))
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"general_skills": "\xe9"}')
    with pytest.raises(BankError, match="not UTF-8"):
        SkillBank.load(bad)


def test_empty_bank_rejected_only_where_one_is_required(tmp_path):
    data = _minimal()
    data["common_mistakes"] = []
    path = _write(tmp_path, data)
    assert SkillBank.load(path).counts()["common_mistakes"]["total"] == 0
    with pytest.raises(BankError, match=r"empty skill bank \(1 general_skills, 0 common_mistakes\)"):
        SkillBank.load(path, require_nonempty=True)


# --------------------------------------------------------------------- atomic save
def test_a_crash_during_save_leaves_the_previous_bank_intact(tmp_path, monkeypatch):
    path = tmp_path / "bank.json"
    SkillBank.from_dict(_minimal()).save(path)
    before = path.read_bytes()
    bigger = _minimal()
    bigger["general_skills"] += [
        {"skill_id": f"gen_{i:03d}", "title": "t" * 500, "principle": "p", "when_to_apply": "w"} for i in range(2, 200)
    ]
    real_fsync = os.fsync

    def crash(fd):  # the data is half on its way to disk when the machine "dies"
        raise OSError("injected crash during save")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="injected crash"):
        SkillBank.from_dict(bigger).save(path)
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.json"]  # no temp file left behind


def test_unserialisable_metadata_fails_before_touching_the_file(tmp_path):
    path = tmp_path / "bank.json"
    SkillBank.from_dict(_minimal()).save(path)
    before = path.read_bytes()
    broken = SkillBank.from_dict(_minimal()).with_items(metadata={"when": object()})
    with pytest.raises(TypeError):
        broken.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bank.json"]


def test_with_items_revalidates_ids():
    bank = SkillBank.from_dict(_minimal())
    dup = GeneralSkill("gen_001", "a", "b", "c", origin="dynamic")
    with pytest.raises(BankError, match="duplicate id 'gen_001'"):
        bank.with_items(general_skills=[*bank.general_skills, dup])
    grown = bank.with_items(general_skills=[*bank.general_skills, GeneralSkill("gen_dyn_0001", "a", "b", "c", "dynamic")])
    assert grown.counts()["general_skills"] == {"static": 1, "dynamic": 1, "total": 2}
    assert bank.counts()["general_skills"]["total"] == 1  # the original is unchanged
