"""What `make demo` shows at the end: per device and phase the deployed models beside the dense
network on the same images, as a table and as a figure."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from matplotlib.image import imread

from edge_agent.simulator import load_scenario
from tests.tiny_model import tiny_checkpoint
from workers.demo import dense_correct, draw_stream, print_results


def test_the_demo_puts_each_deployed_model_beside_dense_on_the_same_images(tmp_path, capsys):
    ck = tiny_checkpoint()
    scenario = load_scenario("smoke")  # devices "clean" (one phase of 400) and "noisy" (two of 200)
    devices = [SimpleNamespace(device=name, device_id=f"sim-{name}", inferences=400, hits=bytearray(), switches=[(0, "base"), (100, "v-noisy")])
               for name in ("clean", "noisy")]
    report = SimpleNamespace(devices=devices)
    dense = dense_correct(report, scenario, ck)
    assert [len(right) for right, _ in dense] == [400, 400] and set(dense[1][1].tolist()) == {0, 1}
    # "clean" served models as right as dense; "noisy" as right in its first phase, always wrong in its second
    for d, (right, phases) in zip(devices, dense, strict=True):
        hits = right & (phases == 0) if d.device == "noisy" else right
        d.hits = bytearray(hits.astype(np.uint8).tobytes())
        d.phase_true = {int(p): [int(hits[phases == p].sum()), int((phases == p).sum())] for p in np.unique(phases)}
        d.phase_versions = {int(p): {"base": 50, "v-noisy": int((phases == p).sum()) - 50} for p in np.unique(phases)}
    versions = [SimpleNamespace(id="base", compression_ratio=4.0, device_id=None, mlflow_version="1"),
                SimpleNamespace(id="v-noisy", compression_ratio=40.0, device_id="noisy", mlflow_version="2")]
    store = SimpleNamespace(list_versions=lambda limit: versions, list_jobs=lambda **kw: [])

    print_results(store, report, scenario, dense)
    out = capsys.readouterr().out
    second = next(line for line in out.splitlines() if "noise" in line)  # noisy's second phase
    dense_second = 100 * dense[1][0][dense[1][1] == 1].mean()
    assert f"{dense_second:.1f}%" in second and second.rstrip(" │").endswith("0.0%")
    assert "base 25%, v2 75%" in second and "31.0x" in second  # (50 * 4 + 150 * 40) / 200

    path = draw_stream(store, report, scenario, dense, tmp_path / "demo.png")
    img = imread(path)
    assert img.shape[:2] == (400, 1400) and img[..., :3].std() > 0.05
