from workers.tracking import RunRecord, Tracker, alias_for_device


def test_retrain_run_with_candidates_is_registered_with_device_alias(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts")
    record = RunRecord(
        run_name="retrain-shop/1", params={"criterion": "qsae", "kl_budget": 0.02},
        metrics={"kl": 0.011, "compression_ratio": 21.5}, tags={"device_id": "shop/1", "trigger": "drift"},
        artifacts={"manifest.json": b"{}", "model.qsaf": b"\x00" * 10},
        candidates=[RunRecord("candidate-energy", {"criterion": "energy"}, {"kl": 0.03})])
    run_id = tracker.log_run(record)
    version = tracker.register_version("fmnist-cnn", run_id, {"device_id": "shop/1", "mask_hash": "ab"},
                                       aliases=[alias_for_device("shop/1")])
    assert alias_for_device("shop/1") == "device-shop_1"
    assert tracker.version_by_alias("fmnist-cnn", "device-shop_1") == version == "1"
    run = tracker.client.get_run(run_id)
    assert run.data.params["criterion"] == "qsae" and run.data.metrics["compression_ratio"] == 21.5
    assert sorted(a.path for a in tracker.client.list_artifacts(run_id, "model")) == [
        "model/manifest.json", "model/model.qsaf"]
    children = tracker.client.search_runs([tracker.experiment_id],
                                          f"tags.mlflow.parentRunId = '{run_id}'")
    assert [c.data.params["criterion"] for c in children] == ["energy"]
    # A second tracker on the same store reuses the experiment and adds version 2.
    again = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts")
    assert again.register_version("fmnist-cnn", again.log_run(record), {}) == "2"
