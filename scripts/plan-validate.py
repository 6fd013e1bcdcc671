#!/usr/bin/env python3
"""Predicted against measured: runs `lambdaml plan --json` over a few grids, then trains
every configuration it predicted and compares wall time and estimated cost.

Usage (from the repository root, servers from scripts/services.sh in the environment):
    source scripts/services.sh
    python3 scripts/plan-validate.py [--profile local|aws|FILE] [--bin target/release/lambdaml]
        [--only GRID] [--repeat 3] [--deadline-check]

Prints a markdown table (one row per configuration: the prediction against the median of
`--repeat` runs) and the median absolute errors; the table in BENCHMARKS.md "Planning" comes
from it. Every run is a fresh job, one at a time, on a machine that should otherwise be idle.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--profile", default="local")
ap.add_argument("--bin", default="target/release/lambdaml")
ap.add_argument("--only", default="", help="run only grids whose name contains this")
ap.add_argument("--repeat", type=int, default=3,
                help="train each configuration this many times and compare with the median")
ap.add_argument("--deadline-check", action="store_true",
                help="after each grid, plan it again under a deadline (the median of its "
                     "predicted times), train the recommendation with `plan --run` and check "
                     "it finished within the deadline")
args = ap.parse_args()

env = os.environ
work = tempfile.mkdtemp(prefix="plan-validate-")
chan_dir = f"dir:{work}/chan"
channels = {
    "dir": chan_dir,
    "s3": env.get("LAMBDAML_TEST_S3", "") + "/plan-validate",
    "memcached": env.get("LAMBDAML_TEST_MEMCACHED", ""),
    "redis": env.get("LAMBDAML_TEST_REDIS", ""),
    "dynamodb": env.get("LAMBDAML_TEST_DYNAMODB", ""),
}

cifar = os.path.join(work, "cifar-512.bin")
subprocess.run([args.bin, "data", "synth", "cifar", "--rows", "512", "--out", cifar], check=True)

# (name, job flags for both plan and train, grid flags for plan). Each job runs long enough
# (about 1-10 s here) that its rounds, not process start-up, decide its time: a planner is
# for jobs where the choice matters.
grids = [
    ("lr grad_avg", ["--synth-rows", "50000", "--epochs", "3", "--batch-size", "100"],
     ["--workers", "2,4,8", "--optim", "grad_avg", "--sync", "reduce",
      "--channels", channels["dir"], channels["memcached"], channels["redis"]]),
    ("lr grad_avg s3", ["--synth-rows", "50000", "--epochs", "3", "--batch-size", "1000"],
     ["--workers", "2,4,8", "--optim", "grad_avg", "--sync", "reduce", "--channels", channels["s3"]]),
    ("lr model_avg", ["--synth-rows", "200000", "--epochs", "20", "--batch-size", "100"],
     ["--workers", "2,4", "--optim", "model_avg", "--sync", "reduce_scatter",
      "--channels", channels["dir"], channels["dynamodb"]]),
    ("lr async", ["--synth-rows", "50000", "--epochs", "3", "--batch-size", "100"],
     ["--workers", "2,4", "--optim", "grad_avg", "--sync", "async", "--channels", channels["redis"]]),
    ("svm admm", ["--model", "svm", "--synth-rows", "200000", "--epochs", "10",
                  "--batch-size", "1000"],
     ["--workers", "2,4", "--optim", "admm", "--sync", "reduce",
      "--channels", channels["memcached"], channels["redis"]]),
    ("resnet20 w0.125", ["--data", cifar, "--model", "resnet20", "--epochs", "1", "--batch-size", "32"],
     ["--workers", "2,4", "--optim", "grad_avg", "--sync", "reduce",
      "--channels", channels["dir"], channels["redis"]]),
]
# Fields that only a config file sets, as TOML.
toml = {"resnet20 w0.125": "width = 0.125\n", "svm admm": "local_epochs = 5\n"}

rows = []
deadlines = []
for name, job, grid in grids:
    if args.only and args.only not in name:
        continue
    runs = os.path.join(work, "runs")
    cfg = []
    if name in toml:
        cfg_path = os.path.join(work, "job.toml")
        with open(cfg_path, "w") as f:
            f.write(toml[name])
        cfg = ["--config", cfg_path]
    plan = subprocess.run(
        [args.bin, "plan", *cfg, *job, *grid, "--profile", args.profile, "--runs-dir", runs, "--json"],
        check=True, capture_output=True, text=True)
    forecasts = json.loads(plan.stdout)["forecasts"]
    for f in forecasts:
        c = f["choice"]
        url = c["channel"]
        # The plan prints URLs without secrets: map back by scheme.
        scheme = url.split(":", 1)[0]
        train_url = channels[scheme] if scheme != "dir" else chan_dir
        measured = []
        for _ in range(args.repeat):
            out = subprocess.run(
                [args.bin, "train", *cfg, *job, "--workers", str(c["workers"]),
                 "--optim", c["optim"], "--sync", c["sync"], "--memory-mb", str(c["memory_mb"]),
                 "--channel", train_url, "--runs-dir", runs, "--json"],
                check=True, capture_output=True, text=True)
            measured.append(json.loads(out.stdout))
        row = dict(grid=name, label=f"{c['workers']} x {c['sync']} {c['optim']} {scheme}",
                   pt=f["wall_s"], pc=f["cost"]["total"],
                   mt=statistics.median(s["wall_seconds"] for s in measured),
                   mc=statistics.median(s["estimated_cost_usd"] for s in measured))
        row["et"] = (row["pt"] - row["mt"]) / row["mt"]
        row["ec"] = (row["pc"] - row["mc"]) / row["mc"] if row["mc"] > 0 else 0.0
        rows.append(row)
        print(f"{name:<16} {row['label']:<34} time {row['pt']:8.2f} / {row['mt']:8.2f} s "
              f"({100 * row['et']:+6.1f}%)  cost {row['pc']:.6f} / {row['mc']:.6f} "
              f"({100 * row['ec']:+6.1f}%)", file=sys.stderr, flush=True)
    if args.deadline_check:
        # A deadline about half the grid misses (after the plan's 10% reserve), so the choice
        # under it is not trivially the cheapest of all; 5% over the median, as planning
        # again pilots again.
        deadline = statistics.median(f["wall_s"] for f in forecasts) * 1.05 / 0.9
        planned = subprocess.run(
            [args.bin, "plan", *cfg, *job, *grid, "--profile", args.profile, "--runs-dir", runs,
             "--deadline", f"{deadline:.3f}", "--run", "--json"],
            capture_output=True, text=True)
        if planned.returncode != 0:
            print(f"{name:<16} deadline {deadline:.2f} s: {planned.stderr.strip()}",
                  file=sys.stderr, flush=True)
            deadlines.append(dict(grid=name, deadline=deadline, label="none fits", pt=0.0,
                                  pc=0.0, mt=float("inf"), mc=0.0))
            continue
        both = json.loads(planned.stdout)
        p = both["plan"]
        best = p["forecasts"][p["recommended"]["Ok"]]
        c = best["choice"]
        d = dict(grid=name, deadline=deadline,
                 label=f"{c['workers']} x {c['sync']} {c['optim']} {c['channel'].split(':', 1)[0]}",
                 pt=best["wall_s"], pc=best["cost"]["total"],
                 mt=both["summary"]["wall_seconds"], mc=both["summary"]["estimated_cost_usd"])
        deadlines.append(d)
        print(f"{name:<16} deadline {deadline:.2f} s: {d['label']} predicted {d['pt']:.2f} s, "
              f"measured {d['mt']:.2f} s: {'met' if d['mt'] <= deadline else 'MISSED'}",
              file=sys.stderr, flush=True)

print("| model | configuration | predicted s | measured s | error | predicted USD | measured USD | error |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['grid']} | {r['label']} | {r['pt']:.2f} | {r['mt']:.2f} | {100 * r['et']:+.1f}% "
          f"| {r['pc']:.6f} | {r['mc']:.6f} | {100 * r['ec']:+.1f}% |")
if rows:
    print()
    print(f"{len(rows)} configurations; median absolute error: time "
          f"{100 * statistics.median(abs(r['et']) for r in rows):.1f}%, cost "
          f"{100 * statistics.median(abs(r['ec']) for r in rows):.1f}%")
if deadlines:
    print()
    print("| model | deadline s | recommended | predicted s | measured s | met | predicted USD | measured USD |")
    print("|---|---|---|---|---|---|---|---|")
    for d in deadlines:
        print(f"| {d['grid']} | {d['deadline']:.2f} | {d['label']} | {d['pt']:.2f} | {d['mt']:.2f} "
              f"| {'yes' if d['mt'] <= d['deadline'] else '**no**'} | {d['pc']:.6f} | {d['mc']:.6f} |")
