"""Reading Google Benchmark's JSON (--benchmark_out=FILE --benchmark_out_format=json) for the
bench scripts, which import it from their heredocs (PYTHONPATH=bench)."""
import json


def medians(path):
    """The benchmark file at PATH, as (its whole JSON document, {run_name: entry}) where each entry
    is the "median" aggregate of that run name's repetitions (Google Benchmark writes one when
    --benchmark_repetitions > 1). Run names keep their arguments ("BM_X/shm", "tmpfs:ofd:handle").
    """
    with open(path) as f:
        doc = json.load(f)
    return doc, {b["run_name"]: b for b in doc["benchmarks"] if b.get("aggregate_name") == "median"}


def times_by_arg(path, index=1):
    """{the INDEXth "/"-separated part of each run name: (real_time, cpu_time)} of the medians in
    PATH, for benchmarks registered as BM_Name/<variant>."""
    _, med = medians(path)
    return {name.split("/")[index]: (b["real_time"], b["cpu_time"]) for name, b in med.items()}
