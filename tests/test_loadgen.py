"""benchmarks/loadgen.py: its Poisson schedule, its accounting against fake targets with known
behaviour, its JSON, and a run against a real server (no timing is checked beyond sanity)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from collections import Counter
from io import StringIO
from pathlib import Path

import anyio
import httpx
import pytest

from altoflow.server import LocalIngress, create_app, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("loadgen", ROOT / "benchmarks" / "loadgen.py")
loadgen = importlib.util.module_from_spec(_spec)
sys.modules["loadgen"] = loadgen
_spec.loader.exec_module(loadgen)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the schedule ----------------------------------------------------------------------------


def test_arrivals_are_seeded() -> None:
    assert loadgen.arrivals(50, 2, seed=1) == loadgen.arrivals(50, 2, seed=1)
    assert loadgen.arrivals(50, 2, seed=1) != loadgen.arrivals(50, 2, seed=2)


def test_arrivals_look_like_a_poisson_process() -> None:
    rate, duration = 200.0, 20.0
    times = loadgen.arrivals(rate, duration, seed=3)
    n = len(times)
    # 4000 expected; a Poisson count has sd sqrt(4000) = 63, so this is over 6 sd wide.
    assert abs(n - rate * duration) < 400
    assert times == sorted(times) and 0 <= times[0] and times[-1] < duration
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    # Exponential gaps: mean 1/rate, and standard deviation equal to the mean.
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.1)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.15)
    # Counts in 100 ms bins: variance about equal to the mean (a regular schedule gives ~0).
    bins = Counter(int(t * 10) for t in times)
    counts = [bins.get(i, 0) for i in range(int(duration * 10))]
    dispersion = statistics.pvariance(counts) / statistics.fmean(counts)
    assert 0.6 < dispersion < 1.5


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="the rate must be a finite number > 0 requests/s"):
        loadgen.arrivals(0, 1)
    with pytest.raises(ValueError, match="the duration must be a finite number > 0 seconds"):
        loadgen.arrivals(1, float("inf"))


def test_percentile_interpolates_between_ranks() -> None:
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([3.0], 99) == 3.0
    assert loadgen.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert loadgen.percentile([float(i) for i in range(101)], 99) == 99.0


def test_the_progress_line() -> None:
    line = loadgen.render_progress(5.0, 10.0, 40, 30, 1, 2, 7, width=10)
    assert line == "[#####.....]    5.0/10 s  sent 40  done 30  errors 1  dropped 2  in flight 7"


# -- against fake targets --------------------------------------------------------------------


async def two_outputs(fields: dict):
    await anyio.sleep(0.01)
    yield {"type": "output", "stage": "a", "value": fields["x"]}
    await anyio.sleep(0.01)
    yield {"type": "output", "stage": "b", "value": fields["x"]}
    yield {"type": "done"}


@pytest.mark.anyio
async def test_every_arrival_is_sent_and_timed() -> None:
    progress = StringIO()
    run = await loadgen.run_load(
        two_outputs, [{"x": 1}, {"x": 2}], rate=100, duration=0.5, seed=4, progress=progress,
        progress_every=0.1,
    )
    expected = loadgen.arrivals(100, 0.5, seed=4)
    assert [r.scheduled_s for r in run.records] == expected
    assert all(r.ok and r.error is None and r.outputs == 2 for r in run.records)
    assert all(0 < r.first_output_s <= r.last_s for r in run.records)
    assert all(r.sent_s >= r.scheduled_s for r in run.records)
    summary = run.summary()
    assert (summary["sent"], summary["completed"], summary["errors"], summary["dropped"]) == (
        len(expected), len(expected), 0, 0,
    )
    assert summary["wall_s"] > 0 and summary["throughput_rps"] > 0
    assert summary["first_output_s"]["p50"] <= summary["latency_s"]["p50"]
    lines = progress.getvalue().splitlines()
    assert lines and lines[-1].startswith("[") and f"sent {len(expected)}" in lines[-1]


@pytest.mark.anyio
async def test_arrivals_beyond_the_cap_are_dropped_not_queued() -> None:
    async def slow(fields: dict):
        await anyio.sleep(0.5)  # longer than the arrival window: the first three hold the cap
        yield {"type": "done"}

    run = await loadgen.run_load(slow, [{}], rate=200, duration=0.2, seed=5, max_in_flight=3)
    n = len(loadgen.arrivals(200, 0.2, seed=5))
    assert n > 10
    assert [r.index for r in run.records] == [0, 1, 2]
    assert run.dropped == n - 3
    assert run.summary()["completed"] == 3


@pytest.mark.anyio
async def test_errors_are_counted_by_kind() -> None:
    async def flaky(fields: dict):
        if fields["i"] == 0:
            raise RuntimeError("boom")
        if fields["i"] == 1:
            yield {"type": "error", "stage": "a", "error": "stage 'a' failed"}
            return
        if fields["i"] == 2:
            await anyio.sleep(5)
        yield {"type": "output", "value": 1}
        yield {"type": "done"}

    run = await loadgen.run_load(
        flaky, [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}], rate=400, duration=0.1, seed=6,
        timeout=0.2,
    )
    by_kind = {r.index % 4: r for r in run.records}
    assert by_kind[0].error == "RuntimeError: boom"
    assert by_kind[1].error == "error event: stage 'a' failed"
    assert by_kind[2].error.startswith("timeout")
    assert by_kind[3].ok and by_kind[3].outputs == 1
    summary = run.summary()
    assert summary["errors"] + summary["completed"] == summary["sent"]
    assert set(summary["error_kinds"]) == {"RuntimeError", "error event", "timeout"}


def test_the_json_and_the_table_from_the_command_line(tmp_path: Path) -> None:
    app = tmp_path / "fake_app.py"
    app.write_text(
        "import anyio\n\n"
        "async def target(fields):\n"
        "    await anyio.sleep(0.005)\n"
        "    yield {'type': 'output', 'value': fields['q']}\n"
        "    yield {'type': 'done'}\n"
    )
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), f"{app}:target",
         "--rate", "50", "--duration", "0.5", "--input", '{"q": "x"}', "--seed", "7",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    n = len(loadgen.arrivals(50, 0.5, seed=7))
    assert record["benchmark"] == "loadgen" and record["target"] == f"{app}:target"
    assert (record["rate"], record["duration_s"], record["seed"]) == (50, 0.5, 7)
    assert set(record["summary"]) == {
        "sent", "completed", "errors", "dropped", "unfinished", "wall_s", "throughput_rps",
        "latency_s", "first_output_s", "error_kinds",
    }
    assert set(record["summary"]["latency_s"]) == {"p50", "p99", "mean", "max"}
    assert record["summary"]["completed"] == n == len(record["requests"])
    assert set(record["requests"][0]) == {
        "index", "scheduled_s", "sent_s", "first_output_s", "last_s", "outputs", "ok", "error",
    }
    assert f"sent {n}  completed {n}  errors 0" in proc.stdout
    assert "throughput" in proc.stdout and "first output  p50" in proc.stdout
    assert f"sent {n}" in proc.stderr  # the progress line


def test_the_command_line_refuses_a_bad_target() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "nowhere", "--rate", "1",
         "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "a callable target is FILE.py:NAME or MODULE:NAME, not 'nowhere'" in proc.stderr


# -- against a real server -------------------------------------------------------------------


@pytest.mark.anyio
async def test_against_altoflow_serve_of_helpsearch() -> None:
    ingress = LocalIngress(str(ROOT / "examples" / "helpsearch.py"))
    with serve_in_thread(create_app(ingress)) as url:
        async with httpx.AsyncClient(timeout=60) as client:
            target = loadgen.http_target(url, client)
            good = await loadgen.run_load(
                target, [{"question": "format strings and the with statement"}], rate=20,
                duration=0.5, seed=8, timeout=60,
            )
            bad = await loadgen.run_load(
                target, [{"wrong": 1}], rate=20, duration=0.2, seed=9, timeout=60,
            )
    summary = good.summary()
    assert summary["sent"] == len(loadgen.arrivals(20, 0.5, seed=8)) > 0
    assert summary["completed"] == summary["sent"] and summary["errors"] == 0
    assert all(r.outputs >= 1 and r.first_output_s <= r.last_s for r in good.records)
    assert bad.summary()["completed"] == 0
    assert {r.error.split(":")[0] for r in bad.records} == {"TargetError"}
    assert all("HTTP 422" in r.error for r in bad.records)
