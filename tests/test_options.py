"""Each option is declared once (a field of Job or SettingsRequest) and reaches every place that takes it:
the flags of `sync`, `profile` and `presets resolve`, the batch columns, and the resolved settings."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import typer
from clitools import run_cli_here

from latentsync_cli.cli import app
from latentsync_cli.jobs.batch import BatchRow, option_columns, row_job
from latentsync_cli.jobs.job import Job
from latentsync_cli.options import OptionError, check_options, declared_options, parse_column
from latentsync_cli.settings.request import SELECTORS, SettingsRequest
from latentsync_cli.settings.run_settings import RunSettings


def command_flags(name: str, group: str | None = None) -> set[str]:
    """Every option string a command of the real CLI accepts."""
    command = typer.main.get_command(app)
    if group is not None:
        command = command.commands[group]
    command = command.commands[name]
    flags = set()
    for parameter in command.params:
        if parameter.param_type_name == "option":
            flags.update(parameter.opts + parameter.secondary_opts)
    return flags


def test_every_settings_option_is_a_flag_of_sync_profile_and_presets_resolve():
    declared = {option.flag for option in declared_options(SettingsRequest)}
    assert {"--steps", "--mode", "--presets", "--windows-per-call", "--cuda-graphs"} <= declared
    for command in (command_flags("sync"), command_flags("profile"), command_flags("resolve", "presets")):
        assert declared <= command
    assert "--no-deepcache" in command_flags("sync")  # an unset switch can be turned either way


def test_every_job_option_is_a_flag_of_sync_and_profile():
    declared = {option.flag for option in declared_options(Job)}
    assert {"--weights", "--loop", "--face", "--crf", "--encoder", "--overwrite"} <= declared
    assert declared <= command_flags("sync") and declared <= command_flags("profile")


def test_batch_columns_are_the_declared_options_a_row_may_set():
    columns = option_columns()
    expected = {o.name for cls in (Job, SettingsRequest) for o in declared_options(cls) if o.option.batch}
    assert set(columns) == expected
    assert "presets_file" not in columns and "overwrite" not in columns  # the command line's, not a row's
    assert {"steps", "loop", "crf", "windows_per_call", "checkpoint_dir"} <= set(columns)


def test_a_settings_option_that_is_not_a_selector_sets_the_runsettings_field_of_its_name():
    run_fields = {field.name for field in fields(RunSettings)}
    for option in declared_options(SettingsRequest):
        if option.name not in SELECTORS:
            assert option.name in run_fields, option.name
    request = SettingsRequest(steps=7, windows_per_call=2, cuda_graphs=False, mode="turbo")
    assert request.explicit_settings() == {"steps": 7, "windows_per_call": 2, "cuda_graphs": False}


def test_a_row_takes_each_column_as_its_options_type(tmp_path: Path):
    base = Job(Path("ignored.mp4"), settings=SettingsRequest(mode="turbo"))
    row = BatchRow(1, tmp_path / "a.mp4", None, None,
                   {"steps": "4", "guidance": "1.0", "deepcache": "no", "windows_per_call": "2", "loop": "Freeze",
                    "checkpoint_dir": "weights", "crf": "20"})  # fmt: skip
    job = row_job(base, row, tmp_path)
    assert (job.settings.steps, job.settings.guidance, job.settings.deepcache) == (4, 1.0, False)
    assert job.settings.windows_per_call == 2 and job.settings.mode == "turbo"  # the base's flag stays
    assert (job.loop, job.crf, job.checkpoint_dir) == ("freeze", 20, tmp_path / "weights")


def test_a_column_of_the_wrong_type_names_the_column():
    [steps] = [option for option in declared_options(SettingsRequest) if option.name == "steps"]
    with pytest.raises(OptionError, match="steps 'many' is not a whole number"):
        parse_column(steps, "many", Path())


def test_choices_and_ranges_are_checked_the_same_for_a_flag_and_a_row():
    with pytest.raises(OptionError, match="unknown --loop 'spiral': use one of pingpong, loop, freeze"):
        check_options(Job(Path("a.mp4"), loop="spiral"))
    with pytest.raises(OptionError, match="--crf 60: allowed: 0 to 51"):
        check_options(Job(Path("a.mp4"), crf=60))
    check_options(Job(Path("a.mp4")))  # the defaults are allowed


def test_a_new_settings_flag_reaches_the_resolved_settings():
    """--windows-per-call was added as one field of SettingsRequest: presets resolve shows it as a user flag."""
    ran = run_cli_here("presets", "resolve", "--device", "cpu", "--windows-per-call", "3", "--json")
    assert ran.code == 0, ran.stderr
    resolved = json.loads(ran.stdout)
    assert resolved["settings"]["windows_per_call"] == 3 and resolved["sources"]["windows_per_call"] == "user flag"
