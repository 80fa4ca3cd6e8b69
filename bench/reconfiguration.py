"""Time of one MIG reconfiguration of a simulated node, end to end, and how long the
node was out of routing (drain → undrain), from the run's own step records.

    APPLIANCE_NODE_INVENTORY=simulated APPLIANCE_SIMULATE_GPUS=H100-80GB make run   # elsewhere
    .venv/bin/python bench/reconfiguration.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = (["3g.40gb", "2g.20gb", "1g.10gb"], ["7g.80gb"], ["2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--node", default="node-1")
    args = parser.parse_args()
    info = json.loads((ROOT / "var" / "run" / "appliance.json").read_text())

    def api(method: str, path: str, body: object = None) -> dict:  # type: ignore[type-arg]
        request = urllib.request.Request(f"{info['api_url']}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)  # fmt: skip
        request.add_header("Authorization", f"Bearer {info['operator_token']}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    totals, outages = [], []
    for i in range(args.runs):
        run = api("POST", f"nodes/{args.node}/reconfigure/", {"gpu": 0, "layout": LAYOUTS[i % len(LAYOUTS)]})
        while (run := api("GET", f"reconfigurations/{run['id']}/"))["state"] not in ("succeeded", "failed"):
            time.sleep(0.2)
        assert run["state"] == "succeeded", run["error"]
        steps = {s["name"]: s for s in run["steps"]}
        t = datetime.fromisoformat
        totals.append((t(run["finished"]) - t(run["created"])).total_seconds())
        outages.append((t(steps["undrain"]["finished"]) - t(steps["drain"]["started"])).total_seconds())
        per_step = ", ".join(f"{n} {(t(s['finished']) - t(s['started'])).total_seconds():.2f}s" for n, s in steps.items())
        print(f"run {i + 1}: {' '.join(LAYOUTS[i % len(LAYOUTS)])}: {per_step}")
    print(f"{'measurement':<44} {'median':>8} {'max':>8}")
    print(f"{'reconfiguration, request to done':<44} {statistics.median(totals):>7.2f}s {max(totals):>7.2f}s")
    print(f"{'node out of routing (drain → undrain)':<44} {statistics.median(outages):>7.2f}s {max(outages):>7.2f}s")


if __name__ == "__main__":
    main()
