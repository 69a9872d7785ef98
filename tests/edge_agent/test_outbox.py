import os
import signal
import subprocess
import sys
import textwrap

from edge_agent.outbox import Outbox


def test_oldest_first_and_survives_reopen(tmp_path):
    box = Outbox(tmp_path / "o")
    for i in range(5):
        box.append("telemetry" if i % 2 else "event", f"r{i}".encode())
    again = Outbox(tmp_path / "o")
    assert [r.read() for r in again.pending()] == [f"r{i}".encode() for i in range(5)]
    again.delete(again.pending(2))
    assert [r.read() for r in Outbox(tmp_path / "o").pending()] == [b"r2", b"r3", b"r4"]
    third = Outbox(tmp_path / "o")
    third.append("sketch", b"r5")  # appended after the survivors, never before them
    assert [r.read() for r in third.pending()][-2:] == [b"r4", b"r5"]


def test_bounded_drops_oldest_and_counts_across_restarts(tmp_path):
    box = Outbox(tmp_path / "o", max_records=3)
    for i in range(5):
        box.append("telemetry", f"r{i}".encode())
    assert [r.read() for r in box.pending()] == [b"r2", b"r3", b"r4"]
    assert box.dropped == 2
    reopened = Outbox(tmp_path / "o", max_records=3)
    assert reopened.dropped == 2
    small = Outbox(tmp_path / "p", max_bytes=2048)
    for _ in range(3):
        small.append("sketch", b"x" * 1000)
    assert len(small) == 2 and small.dropped == 1


def test_sigkill_while_appending_leaves_only_whole_records(tmp_path):
    script = textwrap.dedent(f"""
        from edge_agent.outbox import Outbox
        box = Outbox({str(tmp_path / 'o')!r})
        i = 0
        print("ready", flush=True)
        while True:
            box.append("sketch", bytes([i % 251]) * 200_000)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == b"ready"
    import time
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    box = Outbox(tmp_path / "o")
    records = box.pending()
    assert len(records) > 0
    for r in records:  # every record is complete and uniform: no torn writes
        data = r.read()
        assert len(data) == 200_000 and data == data[:1] * 200_000
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".tmp-")]
