import json

import pytest

from edge_agent.config import load_settings
from edge_agent.errors import ConfigError


def test_file_then_environment_then_keywords(tmp_path, monkeypatch):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nserver_url = "http://127.0.0.1:9"\ntelemetry_interval_s = 5\nlong_poll_s = 2\n')
    monkeypatch.setenv("QSAE_AGENT_TELEMETRY_INTERVAL_S", "7")
    s = load_settings(cfg)
    assert s.server_url == "http://127.0.0.1:9"  # from the file
    assert s.telemetry_interval_s == 7  # the environment wins over the file
    assert s.long_poll_s == 2
    assert load_settings(cfg, telemetry_interval_s=9).telemetry_interval_s == 9  # keywords win


def test_json_file_named_by_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"outbox_max_records": 42}))
    monkeypatch.setenv("QSAE_AGENT_CONFIG_FILE", str(cfg))
    assert load_settings().outbox_max_records == 42


@pytest.mark.parametrize("text", ['telemetry_interval_s = -1\n', 'no_such_setting = 1\n', 'server_url = \n'])
def test_bad_config_is_a_config_error_naming_the_problem(tmp_path, text):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="agent"):
        load_settings(cfg)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml")
