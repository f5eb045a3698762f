"""Settings come from environment variables: a value the platform cannot use is one line that names it."""

import os
import subprocess
import sys

import pytest

from resources.settings import REPO_ROOT, SettingsError, load_settings


@pytest.mark.parametrize(
    "name, value",
    [("MEDALLION_STREAM_FOR_S", "ten"), ("MEDALLION_STREAM_FOR_S", "-5"), ("MEDALLION_STREAM_FOR_S", "nan"), ("MEDALLION_STREAM_FOR_S", "inf"),
     ("MEDALLION_AUTOMATION_EVERY_S", "0"), ("MEDALLION_AUTOMATION_EVERY_S", "2.5")],
)  # fmt: skip
def test_an_unusable_setting_is_refused_with_its_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"^{name} must be .*{value!r}"):
        load_settings()


def test_settings_take_their_defaults_when_unset_or_empty(monkeypatch):
    monkeypatch.delenv("MEDALLION_STREAM_FOR_S", raising=False)
    monkeypatch.setenv("MEDALLION_AUTOMATION_EVERY_S", "")
    settings = load_settings()
    assert (settings.stream_for_s, settings.automation_every_s) == (3600.0, 15)


def test_the_cli_says_which_setting_in_one_line_and_exits_non_zero(medallion_home):
    env = {**os.environ, "MEDALLION_AUTOMATION_EVERY_S": "often"}
    done = subprocess.run([sys.executable, "-m", "medallion.cli", "run"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "medallion run: MEDALLION_AUTOMATION_EVERY_S must be a whole number of seconds, at least 1 (it is 'often'): set it so, or unset it for the default 15"
    ]
