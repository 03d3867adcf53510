"""The env provider: typed parsing that gets "false" right."""

from __future__ import annotations

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType, Reason

import flagwarden
from flagwarden.providers.env import EnvValueError, env_var_name, parse_env_value


def test_variable_name():
    assert (
        env_var_name("FLAGWARDEN_FLAG_", "new-scoring-model") == "FLAGWARDEN_FLAG_NEW_SCORING_MODEL"
    )
    assert env_var_name("X_", "a.b c") == "X_A_B_C"


@pytest.mark.parametrize("raw", ["false", "FALSE", "0", "no", "Off", " off "])
def test_false_is_false(raw):
    assert parse_env_value(FlagType.BOOLEAN, raw) is False


@pytest.mark.parametrize("raw", ["true", "1", "YES", "on"])
def test_true_is_true(raw):
    assert parse_env_value(FlagType.BOOLEAN, raw) is True


@pytest.mark.parametrize(
    ("flag_type", "raw", "expected"),
    [
        (FlagType.INTEGER, "42", 42),
        (FlagType.FLOAT, "0.25", 0.25),
        (FlagType.STRING, "geo-v2", "geo-v2"),
        (FlagType.OBJECT, '{"a": [1, 2]}', {"a": [1, 2]}),
    ],
)
def test_typed_values(flag_type, raw, expected):
    assert parse_env_value(flag_type, raw) == expected


@pytest.mark.parametrize(
    ("flag_type", "raw", "code"),
    [
        (FlagType.BOOLEAN, "maybe", "TYPE_MISMATCH"),
        (FlagType.INTEGER, "4.5", "TYPE_MISMATCH"),
        (FlagType.FLOAT, "lots", "TYPE_MISMATCH"),
        (FlagType.OBJECT, "{broken", "PARSE_ERROR"),
        (FlagType.OBJECT, "12", "TYPE_MISMATCH"),
    ],
)
def test_bad_values(flag_type, raw, code):
    with pytest.raises(EnvValueError) as info:
        parse_env_value(flag_type, raw)
    assert info.value.code == code


def test_env_profile_through_configure(project, monkeypatch):
    project.profile("env", {"type": "env", "prefix": "PIPE_"})
    project.config("env", fallback={"snapshot": None, "env_prefix": None})
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    monkeypatch.setenv("PIPE_NEW_SCORING_MODEL", "false")
    details = client.get_boolean_details("new-scoring-model", True, EvaluationContext("k"))
    assert (details.value, details.reason, details.variant) == (False, Reason.STATIC, "false")
    assert details.flag_metadata["flagwarden.source"] == "env"
    monkeypatch.setenv("PIPE_BATCH_SIZE", "big")
    bad = client.get_integer_details("batch-size", 500, EvaluationContext("k"))
    assert (bad.value, bad.error_code) == (500, "TYPE_MISMATCH")
    assert "PIPE_BATCH_SIZE" in bad.error_message and "big" not in bad.error_message
    missing = client.get_string_details("unset-flag", "d", EvaluationContext("k"))
    assert (missing.value, missing.error_code) == ("d", "FLAG_NOT_FOUND")
