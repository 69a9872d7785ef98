"""The device runtime runs with `pip install .[agent]` alone: no torch, nothing of the server."""

import subprocess
import sys
import textwrap

from tests.edge_agent.live import ROOT

FORBIDDEN = ("torch", "control_plane", "workers", "fastapi", "sqlalchemy", "ray", "mlflow", "uvicorn", "onnx",
             "redis", "alembic", "yaml")


def test_agent_imports_and_serves_without_torch_or_server_code(kit):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import edge_agent, edge_agent.agent, edge_agent.cli, edge_agent.enroll, edge_agent.updater
        from edge_agent.model import LoadedModel
        from edge_agent.runtime import Runtime
        from qsae_shared.manifest import Manifest
        from qsae_shared.artifact import materialize
        manifest = Manifest.from_json(open({str(kit.folder / 'manifest.json')!r}, 'rb').read())
        onnx = materialize(manifest, {str(kit.files_dir(kit.good))!r}, {str(kit.folder / 'boundary')!r})
        rt = Runtime("dev", manifest.base_model)
        rt.swap(LoadedModel(manifest, onnx))
        out = rt.predict(np.zeros((4, 28, 28), np.uint8))
        rt.take_sketch().emit()
        print(len(out.classes))
        print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))
    """)
    (kit.folder / "manifest.json").write_bytes(kit.good.to_json())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["4", "[]"]


def test_simulator_needs_no_torch_either():
    code = ("import sys, edge_agent.simulator as s; s.load_scenario('smoke'); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['yaml']"  # the scenario reader; the device runtime never loads it
