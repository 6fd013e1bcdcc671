#!/usr/bin/env python3
"""Predicted against measured: runs `lambdaml plan --json` over a few grids, then trains
every configuration it predicted and compares wall time and estimated cost.

Usage (from the repository root, servers from scripts/services.sh in the environment):
    source scripts/services.sh
    python3 scripts/plan-validate.py [--profile local|aws|FILE] [--bin target/release/lambdaml]
        [--only GRID] [--repeat 3] [--deadline-check] [--deadlines-only]

Prints a markdown table (one row per configuration: the prediction against the median of
`--repeat` runs) and the median absolute errors; the table in BENCHMARKS.md "Planning" comes
from it. With --deadline-check, larger jobs (tens of seconds, where a deadline matters) are
planned under a deadline, the pick trained with `plan --run` and again `--repeat - 1` times,
and every run checked against the deadline. Every run is a fresh job, one at a time, on a
machine that should otherwise be idle.
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
ap.add_argument("--deadlines-only", action="store_true",
                help="skip the prediction-error grids: only the deadline check")
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
cifar_large = os.path.join(work, "cifar-4096.bin")
if args.deadline_check:
    subprocess.run([args.bin, "data", "synth", "cifar", "--rows", "4096", "--out", cifar_large],
                   check=True)

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
# The deadline check's jobs: the same grids, each job about 10-20x larger (tens of seconds
# for most configurations), where a deadline is worth planning for and a 0.1 s start-up
# wobble does not decide whether it is met.
deadline_grids = [
    ("lr grad_avg", ["--synth-rows", "1000000", "--epochs", "3", "--batch-size", "100"],
     grids[0][2]),
    ("lr grad_avg s3", ["--synth-rows", "200000", "--epochs", "3", "--batch-size", "1000"],
     grids[1][2]),
    ("lr model_avg", ["--synth-rows", "2000000", "--epochs", "40", "--batch-size", "100"],
     grids[2][2]),
    ("lr async", ["--synth-rows", "1000000", "--epochs", "3", "--batch-size", "100"],
     grids[3][2]),
    ("svm admm", ["--model", "svm", "--synth-rows", "2000000", "--epochs", "10",
                  "--batch-size", "1000"], grids[4][2]),
    ("resnet20 w0.125", ["--data", cifar_large, "--model", "resnet20", "--epochs", "2",
                         "--batch-size", "32"], grids[5][2]),
]
# Fields that only a config file sets, as TOML.
toml = {"resnet20 w0.125": "width = 0.125\n", "svm admm": "local_epochs = 5\n"}


def config_flags(name):
    """`--config FILE` holding the grid's TOML-only fields, or nothing."""
    if name not in toml:
        return []
    cfg_path = os.path.join(work, "job.toml")
    with open(cfg_path, "w") as f:
        f.write(toml[name])
    return ["--config", cfg_path]


def train_url(url):
    """The plan prints URLs without secrets: the channel to train on, by scheme."""
    scheme = url.split(":", 1)[0]
    return scheme, (channels[scheme] if scheme != "dir" else chan_dir)


def train(cfg, job, c, runs):
    """Trains the configuration `c` of a plan; returns the run's summary."""
    out = subprocess.run(
        [args.bin, "train", *cfg, *job, "--workers", str(c["workers"]),
         "--optim", c["optim"], "--sync", c["sync"], "--memory-mb", str(c["memory_mb"]),
         "--channel", train_url(c["channel"])[1], "--runs-dir", runs, "--json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


runs = os.path.join(work, "runs")


def plan(cfg, job, grid, *extra, check=True):
    """Runs `lambdaml plan --json` on a grid: the completed process, or with `check` its
    parsed output."""
    done = subprocess.run(
        [args.bin, "plan", *cfg, *job, *grid, "--profile", args.profile, "--runs-dir", runs,
         "--json", *extra],
        check=check, capture_output=True, text=True)
    return json.loads(done.stdout) if check else done


rows = []
for name, job, grid in ([] if args.deadlines_only else grids):
    if args.only and args.only not in name:
        continue
    cfg = config_flags(name)
    for f in plan(cfg, job, grid)["forecasts"]:
        c = f["choice"]
        measured = [train(cfg, job, c, runs) for _ in range(args.repeat)]
        row = dict(grid=name,
                   label=f"{c['workers']} x {c['sync']} {c['optim']} {train_url(c['channel'])[0]}",
                   pt=f["wall_s"], pc=f["cost"]["total"],
                   mt=statistics.median(s["wall_seconds"] for s in measured),
                   mc=statistics.median(s["estimated_cost_usd"] for s in measured))
        row["et"] = (row["pt"] - row["mt"]) / row["mt"]
        row["ec"] = (row["pc"] - row["mc"]) / row["mc"] if row["mc"] > 0 else 0.0
        rows.append(row)
        print(f"{name:<16} {row['label']:<34} time {row['pt']:8.2f} / {row['mt']:8.2f} s "
              f"({100 * row['et']:+6.1f}%)  cost {row['pc']:.6f} / {row['mc']:.6f} "
              f"({100 * row['ec']:+6.1f}%)", file=sys.stderr, flush=True)

deadlines = []
for name, job, grid in (deadline_grids if args.deadline_check else []):
    if args.only and args.only not in name:
        continue
    cfg = config_flags(name)
    first = plan(cfg, job, grid)
    forecasts, keep = first["forecasts"], 1.0 - first["limits"]["slack"]
    # A deadline about half the grid misses (after the plan's reserve), so the choice
    # under it is not trivially the cheapest of all: 5% over the median, as planning again
    # pilots again. At least 20% over the fastest: a grid whose configurations are all
    # within a few percent of each other would otherwise set a deadline inside the pilots'
    # run-to-run spread (10% here), and the second plan would fit nothing.
    walls = [f["wall_s"] for f in forecasts]
    deadline = max(statistics.median(walls) * 1.05, min(walls) * 1.2) / keep
    planned = plan(cfg, job, grid, "--deadline", f"{deadline:.3f}", "--run", check=False)
    if planned.returncode != 0:
        print(f"{name:<16} deadline {deadline:.2f} s: {planned.stderr.strip()}",
              file=sys.stderr, flush=True)
        deadlines.append(dict(grid=name, deadline=deadline, label="none fits", pt=0.0,
                              pc=0.0, mt=[float("inf")], mc=0.0))
        continue
    both = json.loads(planned.stdout)
    p = both["plan"]
    best = p["forecasts"][p["recommended"]["Ok"]]
    c = best["choice"]
    measured = [both["summary"]] + [train(cfg, job, c, runs) for _ in range(args.repeat - 1)]
    d = dict(grid=name, deadline=deadline,
             label=f"{c['workers']} x {c['sync']} {c['optim']} {train_url(c['channel'])[0]}",
             pt=best["wall_s"], pc=best["cost"]["total"],
             mt=[s["wall_seconds"] for s in measured],
             mc=statistics.median(s["estimated_cost_usd"] for s in measured))
    deadlines.append(d)
    print(f"{name:<16} deadline {deadline:.2f} s: {d['label']} predicted {d['pt']:.2f} s, "
          f"measured {', '.join(f'{t:.2f}' for t in d['mt'])} s: "
          f"{'met' if max(d['mt']) <= deadline else 'MISSED'}",
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
    print("| model | deadline s | recommended | predicted s | measured s (each run) | met | "
          "predicted USD | measured USD |")
    print("|---|---|---|---|---|---|---|---|")
    for d in deadlines:
        met, runs_ = sum(t <= d["deadline"] for t in d["mt"]), len(d["mt"])
        verdict = "yes" if met == runs_ else f"**{met} of {runs_}**"
        print(f"| {d['grid']} | {d['deadline']:.2f} | {d['label']} | {d['pt']:.2f} "
              f"| {', '.join(f'{t:.2f}' for t in d['mt'])} | {verdict} "
              f"| {d['pc']:.6f} | {d['mc']:.6f} |")
