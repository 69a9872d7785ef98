"""The fleet simulator: scenario files, and N agents against a real control plane."""

import pytest

from edge_agent.errors import ConfigError
from edge_agent.simulator import SCENARIO_DIR, SimulationConfig, expand_profiles, load_scenario, simulate
from qsae_shared.distributions import profiles_from_scenario
from tests.edge_agent.live import ADMIN_KEY


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_scenarios_are_valid(path):
    doc = load_scenario(path)
    assert profiles_from_scenario(doc)
    SimulationConfig.from_scenario(doc)


def test_devices_beyond_the_scenario_repeat_it_with_their_own_streams():
    doc = load_scenario("smoke")
    profiles = expand_profiles(doc, 5)
    assert [p.device_id for p in profiles] == ["clean", "noisy", "clean-r1", "noisy-r1", "clean-r2"]
    a = profiles[0].stream("test", "simulate").next_batch(8).labels
    b = profiles[2].stream("test", "simulate").next_batch(8).labels
    assert (a != b).any()


def test_unknown_simulation_settings_and_missing_files_are_named():
    with pytest.raises(ConfigError, match="unknown simulation settings"):
        SimulationConfig.from_scenario({"simulation": {"label_rat": 0.5}})
    with pytest.raises(ConfigError, match=r"bundled scenarios: .*drift, smoke, steady"):
        load_scenario("no-such-scenario")


def test_simulated_fleet_against_the_control_plane(live, kit, tmp_path):
    version = live.publish(kit.good, kit.good_bytes)
    report = simulate(live.url, "smoke", devices=3, operator_key=ADMIN_KEY, initial_version=version,
                      state_dir=tmp_path / "sim", name_prefix="simtest-", threads=2,
                      base_model=kit.good.base_model)
    assert [d.inferences for d in report.devices] == [400, 400, 400]
    assert all(d.versions == [version] and d.outbox_left == 0 for d in report.devices)
    # the per-inference trace the dynamic benchmark plots: one entry per inference, right where counted
    assert all(len(d.hits) == 400 and sum(d.hits) == d.correct and d.switches == [(0, version)]
               for d in report.devices)
    assert all(d.labels_fed > 100 for d in report.devices)  # label_rate 0.5 of 400, minus the last delay
    assert report.accuracy > 0.5 and report.estimate_mae_pp is not None
    # nothing changed after the first answer: every later poll carried the ETag and got a 304
    assert all(d.polls_unchanged > 0 for d in report.devices) and report.not_modified_ratio == 1.0
    for d in report.devices:
        rows = live.telemetry(d.device_id)
        assert sum(r.inference_count for r in rows) == 400
        assert sum(r.labelled_count for r in rows) == d.labels_fed
        assert live.store.device_sketches(d.device_id, kit.good.base_model)
    assert "simtest-clean" in report.summary() or "clean" in report.summary()
    # a second run continues with the same devices (credentials kept in the state folder)
    again = simulate(live.url, "smoke", devices=1, operator_key=ADMIN_KEY, state_dir=tmp_path / "sim",
                     name_prefix="simtest-", rounds=5)
    assert again.devices[0].device_id == report.devices[0].device_id and again.devices[0].inferences == 80


def test_simulate_command_writes_a_json_report(live, kit, tmp_path):
    import json

    from typer.testing import CliRunner

    from edge_agent.simulate_cli import app

    version = live.publish(kit.good, kit.good_bytes)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["--devices", "1", "--scenario", "smoke", "--server", live.url,
                                      "--operator-key", ADMIN_KEY, "--initial-version", version, "--rounds", "3",
                                      "--state-dir", str(tmp_path / "sim"), "--name-prefix", "cli-",
                                      "--base-model", kit.good.base_model,
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 devices, 48 inferences" in result.output
    doc = json.loads(out.read_text())
    assert doc["inferences"] == 48 and doc["devices"][0]["versions"] == [version]
    bad = CliRunner().invoke(app, ["--scenario", "smoke", "--server", live.url, "--state-dir", str(tmp_path / "x")],
                             env={"QSAE_OPERATOR_KEY": "", "FLEET_BOOTSTRAP_ADMIN_KEY": ""})
    assert bad.exit_code == 1 and "operator API key" in bad.output
