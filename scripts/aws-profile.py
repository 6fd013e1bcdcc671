#!/usr/bin/env python3
"""Writes profiles/aws-us-east-1.json: a planner profile for AWS Lambda built from published
figures (no measurement). Sources and formulas: profiles/README.md. Run from the repository
root: python3 scripts/aws-profile.py"""
import json
import math

# Published figures (profiles/README.md gives the sources).
BANDWIDTH = 70e6  # bytes/s of one Lambda function's network (~560 Mbit/s)
LATENCY = {  # seconds per request (one put or one get of a small value)
    "s3": 0.020,
    "dynamodb": 0.006,
    "memcached": 0.0006,
    "redis": 0.0006,
    "dir": 0.020,  # a directory stands in for S3
}
ITEM_LIMIT = {"dynamodb": 400 * 1024}  # bytes per item (values are chunked above it)


def chunks(scheme, size):
    limit = ITEM_LIMIT.get(scheme)
    return 1 if limit is None else max(1, math.ceil(size / limit))


def round_cost(scheme, sync, n, size):
    lat = LATENCY[scheme]
    xfer = size / BANDWIDTH
    if n == 1:
        return 0.0, dict(puts=0, gets=0)
    if sync == "reduce":
        # Every worker puts its vector; worker 0 reads the others', puts the mean; the
        # others read it: two request latencies on each side, worker 0 moves n + 1 vectors.
        seconds = 4 * lat + (n + 1) * xfer
        puts, gets = n + 1, 2 * (n - 1)
        nbytes_out, nbytes_in = (n + 1) * size, 2 * (n - 1) * size
    elif sync == "reduce_scatter":
        # Each worker puts n - 1 shards, reads n - 1 shards of its own, puts its merged
        # shard and reads the n - 1 others: every worker moves about 4 (n - 1) / n vectors.
        seconds = 4 * lat + 4 * (n - 1) / n * xfer
        puts, gets = n * n, 2 * n * (n - 1)
        nbytes_out, nbytes_in = 2 * (n - 1) * size, 2 * (n - 1) * size
    else:  # async: put its own model, read the latest of the others
        seconds = 2 * lat + n * xfer
        puts, gets = n, n * (n - 1)
        nbytes_out, nbytes_in = n * size, n * (n - 1) * size
    c = chunks(scheme, size / max(1, n if sync == "reduce_scatter" else 1))
    req = dict(puts=puts * c, gets=gets * c)
    if scheme == "dynamodb":
        req["write_units"] = math.ceil(nbytes_out / 1024) + puts * c
        req["read_units"] = math.ceil(nbytes_in / 4096) + gets * c
    return seconds, req


def channel(scheme):
    rounds = []
    for sync in ["reduce", "reduce_scatter", "async"]:
        for n in [1, 2, 4, 8, 16, 32, 64]:
            for size in [1024, 65536, 1 << 20, 16 << 20]:
                seconds, req = round_cost(scheme, sync, n, size)
                rounds.append(dict(sync=sync, workers=n, bytes=size, seconds=seconds, requests=req))
    beat = {"s3": 5.0, "dir": 5.0, "dynamodb": 2.0}.get(scheme, 1.0)
    # A heartbeat reads the job's 5 control keys and writes one beat; the driver reads 4
    # records of each worker every poll (S3: 1 s, caches: 0.05 s).
    poll = {"s3": 1.0, "dir": 1.0, "dynamodb": 0.2}.get(scheme, 0.05)
    background = dict(puts=1 / beat, gets=5 / beat + 4 / poll)
    if scheme in ("redis", "dynamodb"):
        background = dict(puts=1 / beat, gets=1 / beat + 1 / poll)
    if scheme == "dynamodb":
        background.update(read_units=5 / beat + 4 / poll, write_units=1 / beat)
    per_worker = dict(puts=4, gets=8, deletes=2)
    per_epoch = dict(puts=1, write_units=1) if scheme == "dynamodb" else dict(puts=1)
    return dict(
        scheme=scheme,
        measured_on="published figures",
        rounds=rounds,
        background=background,
        per_worker=per_worker,
        per_epoch=per_epoch,
    )


profile = dict(
    name="AWS Lambda us-east-1 (published figures)",
    source="scripts/aws-profile.py; sources in profiles/README.md",
    shared_cores=None,
    compute_scale=1.0,
    overhead=dict(fixed_s=1.0, per_worker_s=0.03, billed_extra_s=0.3),
    channels=[channel(s) for s in ["dir", "s3", "memcached", "redis", "dynamodb"]],
)
with open("profiles/aws-us-east-1.json", "w") as f:
    json.dump(profile, f, indent=1)
    f.write("\n")
