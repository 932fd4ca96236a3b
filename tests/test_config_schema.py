"""Runs stay loadable (docs/design.md#the-run-directory): ``config.json`` records its schema and the
dalle_fast version that wrote it; a file from before a field existed loads with the field's
default (said once on stderr); a newer schema, or settings of a newer version, are refused with a
message that says so. ``tests/fixtures/config_schema1.json`` is a config.json of schema 1 as
this version writes it (the tiny preset): every later version must keep loading it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dalle_fast import __version__
from dalle_fast.config import SCHEMA, Config, preset
from dalle_fast.generate import main as generate_main
from dalle_fast.run import UsageError, open_run

FIXTURE = Path(__file__).parent / "fixtures" / "config_schema1.json"


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def test_the_checked_in_schema_1_file_still_loads_with_the_values_it_holds() -> None:
    data = json.loads(FIXTURE.read_text())
    assert data["schema"] == 1 and data["dalle_fast_version"] == "0.1.0"
    loaded = flat(Config.load(FIXTURE).to_dict())
    held = flat({k: v for k, v in data.items() if k not in ("schema", "dalle_fast_version")})
    holdout = held.pop("data.holdout")
    assert [list(p) for p in loaded.pop("data.holdout")] == holdout
    assert {k: loaded[k] for k in held} == held  # every value of the file, as written; later fields: defaults


def test_save_records_the_schema_and_the_version_first(tmp_path: Path) -> None:
    path = preset("demo").save(tmp_path)
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["schema", "dalle_fast_version"]
    assert (data["schema"], data["dalle_fast_version"]) == (SCHEMA, __version__)
    assert Config.load(path) == preset("demo") == Config.from_dict(data)


def test_a_file_from_before_a_field_existed_gets_its_default_said_once(tmp_path: Path, capsys) -> None:
    data = json.loads(preset("tiny").save(tmp_path).read_text())
    del data["clip"]["reranker"], data["clip"]["reranker_weights"], data["train"]["num_workers"]
    del data["schema"], data["dalle_fast_version"]  # also: written before they were recorded
    path = write(tmp_path / "config.json", data)
    assert Config.load(path) == preset("tiny")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note:" in err and "did not record its version" in err
    for said in ("clip.reranker = 'run'", "clip.reranker_weights = ''", "train.num_workers = 0"):
        assert said in err
    assert Config.load(path) == preset("tiny") and open_run(tmp_path)[1] == preset("tiny")
    assert capsys.readouterr().err == "", "said once"
    other = tmp_path / "other"
    other.mkdir()
    Config.load(write(other / "config.json", data))
    assert capsys.readouterr().err.count("note:") == 1, "once per file"


def test_a_newer_schema_is_refused_clearly(tmp_path: Path, capsys) -> None:
    data = {**json.loads(preset("tiny").save(tmp_path).read_text()), "schema": SCHEMA + 1,
            "dalle_fast_version": "9.0.0"}
    write(tmp_path / "config.json", data)
    with pytest.raises(ValueError, match=rf"dalle_fast 9\.0\.0 with config schema {SCHEMA + 1}.*upgrade dalle_fast"):
        Config.load(tmp_path)
    with pytest.raises(UsageError, match=r"--run .*cannot read its config\.json.*upgrade"):
        open_run(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--run", str(tmp_path), "--prompt", "a red circle"])
    assert exit_.value.code == 2 and f"schema {SCHEMA + 1}" in capsys.readouterr().err


def test_settings_of_a_newer_version_are_refused_naming_it(tmp_path: Path) -> None:
    data = json.loads(preset("tiny").save(tmp_path).read_text())
    data["vae"]["a_later_setting"], data["dalle_fast_version"] = 3, "0.9.0"
    write(tmp_path / "config.json", data)
    with pytest.raises(ValueError, match=r"unknown key 'vae\.a_later_setting'.*dalle_fast 0\.9\.0, newer than this"):
        Config.load(tmp_path)
    data["dalle_fast_version"] = __version__
    write(tmp_path / "config.json", data)
    with pytest.raises(ValueError, match=r"unknown key 'vae\.a_later_setting'") as error:
        Config.load(tmp_path)
    assert "upgrade" not in str(error.value)


@pytest.mark.parametrize("schema", [0, "1", True, None])
def test_a_bad_schema_number_is_refused(tmp_path: Path, schema: Any) -> None:
    data = {**json.loads(preset("tiny").save(tmp_path).read_text()), "schema": schema}
    with pytest.raises(ValueError, match="schema must be a positive integer"):
        Config.load(write(tmp_path / "config.json", data))
