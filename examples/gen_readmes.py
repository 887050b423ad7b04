"""Fill the generated blocks of the READMEs with what the example applications really print.

    python examples/gen_readmes.py            # every app under examples/, and README.md
    python examples/gen_readmes.py claimverify

In ``examples/<app>/README.md``, the text between ``<!-- gen:NAME -->`` and ``<!-- /gen -->``
is replaced by:

- ``graph``: ``altoflow compile examples/<app>/app.py --show-graph``;
- ``run``: ``altoflow run examples/<app>/app.py --input "$(cat examples/<app>/input.json)"``;
- ``curl``: the NDJSON lines that
  ``curl -N localhost:8000/v1/run -H 'Content-Type: application/json' -d @examples/<app>/input.json``
  gets from ``altoflow serve examples/<app>/app.py``, which this script starts on a free port
  (of a run of ``partial`` lines, the first ``SHOWN_PARTIALS``, and how many more there were);
- ``client``: a short ``altoflow.Client`` snippet against that server, and what it prints.

In the top-level README.md the names are ``<app>:NAME``. The script also draws
``examples/<app>/graph.png`` from ``altoflow compile --format dot`` with Graphviz's ``dot`` when
it is installed, else with networkx and matplotlib.

The apps run as a fresh ``pip install '.[bm25]'`` runs them: the simulated LM (sped up by
``ALTOFLOW_LM_SPEED``, which changes its timing, not its text) and BM25 order. Set the
``ALTOFLOW_*`` variables to generate with other settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GEN = re.compile(r"(<!-- gen:(?P<name>[\w:]+) -->\n)(?P<body>.*?)(<!-- /gen -->)", re.S)
NAMES = ("graph", "run", "curl", "client")
DEFAULTS = {"ALTOFLOW_LM": "sim", "ALTOFLOW_LM_SPEED": "20", "ALTOFLOW_RERANKER": "bm25"}

CLIENT_SNIPPET = """\
import json

import altoflow

fields = json.load(open("examples/{app}/input.json"))
with altoflow.Client("http://127.0.0.1:8000") as client:
    for event in client.stream(**fields):  # each output as soon as it is produced
        if event.type == "output":
            print(event.stage, event.ancestry, json.dumps(event.value)[:{width}])
    result = client.run(**fields)  # the same Result that altoflow.run(...) returns
print("stages:", ", ".join(result.to_dict()))
"""
WIDTH = 90  # characters of each value the client snippet prints
SHOWN_PARTIALS = 3  # partial lines of a run of them that the curl block shows


def _elide_partials(lines: list[str]) -> list[str]:
    """The NDJSON lines with the ``partial`` ones past the first ``SHOWN_PARTIALS`` left out
    (one line says how many): an LM stage that streams its tokens sends one line per token."""
    out, partials = [], 0
    for line in lines:
        if json.loads(line).get("type") == "partial":
            partials += 1
            if partials > SHOWN_PARTIALS:
                continue
        else:
            if partials > SHOWN_PARTIALS:
                out.append(f"... ({partials - SHOWN_PARTIALS} more partial lines)")
            partials = 0
        out.append(line)
    return out


def _altoflow() -> str:
    return str(Path(sys.executable).parent / "altoflow")


def _env() -> dict[str, str]:
    env = {**DEFAULTS, **os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(argv: list[str], **kwargs) -> str:
    proc = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.rstrip("\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """One example application and its outputs, computed on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = EXAMPLES / name
        self.rel = f"examples/{name}/app.py"
        self._server: subprocess.Popen | None = None
        self._url: str | None = None

    @cached_property
    def graph(self) -> str:
        return _run([_altoflow(), "compile", self.rel, "--show-graph"])

    @cached_property
    def run(self) -> str:
        fields = (self.dir / "input.json").read_text()
        return _run([_altoflow(), "run", self.rel, "--input", fields])

    @cached_property
    def curl(self) -> str:
        body = (self.dir / "input.json").read_bytes()
        lines = []
        with httpx.stream("POST", f"{self.url}/v1/run", content=body, timeout=300,
                          headers={"Content-Type": "application/json"}) as response:
            response.raise_for_status()
            lines = [line for line in response.iter_lines() if line]
        return "\n".join(_elide_partials(lines))

    @cached_property
    def client(self) -> str:
        snippet = CLIENT_SNIPPET.format(app=self.name, width=WIDTH)
        printed = _run([sys.executable, "-c", snippet.replace("http://127.0.0.1:8000", self.url)])
        return f"```python\n{snippet}```\n\nprints\n\n```text\n{printed}\n```"

    @property
    def url(self) -> str:
        if self._url is None:
            port = _free_port()
            self._server = subprocess.Popen(
                [_altoflow(), "serve", self.rel, "--port", str(port)], cwd=ROOT, env=_env(),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self._url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while True:
                if self._server.poll() is not None:
                    raise SystemExit(f"altoflow serve {self.rel} exited with {self._server.returncode}")
                try:
                    if httpx.get(f"{self._url}/healthz", timeout=1).json().get("status") == "ok":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"altoflow serve {self.rel} did not become healthy in 300 s")
                time.sleep(0.2)
        return self._url

    def stop(self) -> None:
        if self._server is not None:
            self._server.send_signal(signal.SIGINT)  # a clean shutdown, replicas included
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = self._url = None

    def block(self, name: str) -> str:
        if name not in NAMES:
            raise SystemExit(f"unknown generated block {name!r} in a README of {self.name}; "
                             f"the names are {', '.join(NAMES)}")
        if name == "client":
            return self.client
        return f"```text\n{getattr(self, name)}\n```"

    def draw(self) -> Path:
        """Write ``graph.png`` beside the app."""
        out = self.dir / "graph.png"
        dot = _run([_altoflow(), "compile", self.rel, "--format", "dot"])
        if shutil.which("dot"):
            subprocess.run(["dot", "-Tpng", "-Gdpi=110", "-o", str(out)], input=dot, text=True, check=True)
        else:
            _draw_with_matplotlib(json.loads(_run([_altoflow(), "compile", self.rel, "--format", "json"])), out)
        return out


def _draw_with_matplotlib(plan: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = nx.DiGraph()
    for s in plan["stages"]:
        key = "" if s["route_key"] is None else "\nkey (" + ", ".join(["request", *s["route_key"]]) + ")"
        graph.add_node(s["name"], label=f"{s['name']}\n{s['kind']}{key}")
        graph.add_edges_from((i, s["name"]) for i in s["inputs"] if i in {t["name"] for t in plan["stages"]})
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for n in nodes:
            graph.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer", align="horizontal", scale=-1)
    fig, ax = plt.subplots(figsize=(8, 1.3 * (1 + max(nx.get_node_attributes(graph, "layer").values()))))
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=True, node_size=3000)
    nx.draw_networkx_labels(graph, pos, nx.get_node_attributes(graph, "label"), ax=ax, font_size=8,
                            bbox={"boxstyle": "round", "fc": "white", "ec": "black"})
    ax.axis("off")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def fill(path: Path, lookup) -> bool:
    """Replace every generated block of ``path``; ``lookup(name)`` gives a block's text."""
    text = path.read_text()
    new = GEN.sub(lambda m: f"{m.group(1)}{lookup(m.group('name'))}\n{m.group(4)}", text)
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str]) -> None:
    found = sorted(p.parent.name for p in EXAMPLES.glob("*/app.py"))
    wanted = argv or found
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise SystemExit(f"no app {', '.join(unknown)} under examples/; the apps are {', '.join(found)}")
    apps = {name: App(name) for name in found}
    try:
        for name in wanted:
            app = apps[name]
            print(f"{name}: {app.draw().relative_to(ROOT)}", file=sys.stderr)
            readme = app.dir / "README.md"
            if readme.exists():
                changed = fill(readme, app.block)
                print(f"{name}: {readme.relative_to(ROOT)}{' updated' if changed else ''}", file=sys.stderr)
            app.stop()

        def top(name: str) -> str:
            app_name, _, block = name.partition(":")
            if app_name not in apps or not block:
                raise SystemExit(f"README.md: a generated block is named <app>:<name>, got {name!r}")
            return apps[app_name].block(block)

        readme = ROOT / "README.md"
        # Only when every app it shows was asked for (all of them, by default).
        if {m.group("name").partition(":")[0] for m in GEN.finditer(readme.read_text())} <= set(wanted):
            print(f"README.md{' updated' if fill(readme, top) else ''}", file=sys.stderr)
    finally:
        for app in apps.values():
            app.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
