"""``GET /metrics`` is the same under LocalIngress and ``altoflow serve``'s ServedIngress: the same
families with the same help texts, counting the same things, as the table in docs/serving.md says."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import serving_apps
from prometheus_client.parser import text_string_to_metric_families

from altoflow.runtime.metrics import METRICS
from altoflow.server import LocalIngress, ServedIngress, create_app, serve_in_thread

pytestmark = pytest.mark.timeout(180)

METERED = f"{serving_apps.__file__}:metered"
SERVING_MD = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def scrape(ingress) -> tuple[set[tuple[str, str, str]], dict[tuple[str, tuple], float]]:
    """Serve ``ingress``, send two requests (one fails in a stage), then scrape ``/metrics``:
    the (name, type, help) of every family, and the value of every sample."""
    with serve_in_thread(create_app(ingress)) as url:
        assert httpx.post(url + "/v1/run", json={"text": "a b c"}, timeout=60).status_code == 200
        assert httpx.post(url + "/v1/run", json={"text": "bad"}, timeout=60).status_code == 200
        resp = httpx.get(url + "/metrics")
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(resp.text))
    described = {(f.name, f.type, f.documentation) for f in families}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return described, samples


def altoflow_counts(samples: dict[tuple[str, tuple], float]) -> dict[tuple[str, tuple], float]:
    """The altoflow samples whose value does not depend on timing (not sums of seconds, not
    which latency bucket an invocation fell into)."""
    return {k: v for k, v in samples.items()
            if k[0].startswith("altoflow_") and not k[0].endswith(("_sum", "_bucket", "_created"))}


@pytest.fixture(scope="module")
def scraped() -> dict[str, tuple]:
    return {"local": scrape(LocalIngress(METERED)), "served": scrape(ServedIngress(METERED))}


def test_both_servers_have_the_same_families_and_help_texts(scraped) -> None:
    local, served = scraped["local"][0], scraped["served"][0]
    assert local == served
    names = {name for name, _, _ in local}
    assert {"process_cpu_seconds", "python_info", "python_gc_objects_collected"} <= names
    # Every altoflow family is one of METRICS (the parser drops a counter's _total).
    ours = {(re.sub(r"_total$", "", m.name) if m.type == "counter" else m.name, m.type, m.help)
            for m in METRICS}
    assert {d for d in local if d[0].startswith("altoflow_")} == ours


def test_both_servers_count_the_same_things(scraped) -> None:
    local, served = altoflow_counts(scraped["local"][1]), altoflow_counts(scraped["served"][1])
    assert local == served
    stage = lambda name: (("stage", name),)  # noqa: E731
    assert local[("altoflow_requests_total", ())] == 2
    assert local[("altoflow_requests_finished_total", (("outcome", "done"),))] == 1
    assert local[("altoflow_requests_finished_total", (("outcome", "error"),))] == 1
    assert local[("altoflow_requests_in_flight", ())] == 0
    # Items of every stage: four words, three shouted ("bad" failed), one count.
    assert local[("altoflow_stage_output_items_total", stage("split"))] == 4
    assert local[("altoflow_stage_output_items_total", stage("shouted"))] == 3
    assert local[("altoflow_stage_output_items_total", stage("counted"))] == 1
    assert local[("altoflow_stage_errors_total", stage("shouted"))] == 1
    assert local[("altoflow_stage_invocation_seconds_count", stage("shouted"))] == 4
    assert local[("altoflow_stage_queue_depth", stage("shouted"))] == 0
    assert local[("altoflow_stage_in_flight", stage("shouted"))] == 0
    assert local[("altoflow_replicas_live", stage("shouted"))] == 1


def test_the_docs_table_lists_exactly_the_metrics() -> None:
    text = SERVING_MD.read_text()
    section = text[text.index("## `GET /v1/graph`"):]
    section = section[:section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z_]+)(?:\{[a-z,]+\})?` \| (\w+) \| (.+?) \|$", section, re.M)
    assert sorted(rows) == sorted((m.name, m.type, m.help) for m in METRICS)
    labelled = dict(re.findall(r"^\| `([a-z_]+)\{([a-z,]+)\}`", section, re.M))
    assert labelled == {m.name: ",".join(m.labels) for m in METRICS if m.labels}
