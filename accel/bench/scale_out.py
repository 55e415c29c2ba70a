"""Multi-process runs under diffusers' context parallelism: the launcher the tests use, and `accel
bench-parallel`, which times a pipeline on one process beside the same run sharded over N ranks.

`launch(target, world, args)` starts `world` Python processes (one per rank, `torch.distributed` env
variables set, a free port), runs `target` ("module:function", called as `function(rank, world, args)`
after `init_process_group`) in each, and returns each rank's JSON-able result; a hard timeout kills
them all, so a deadlocked collective fails the caller instead of hanging it.

`enable(model, ulysses=..., ring=...)` is `model.enable_parallelism(config=ContextParallelConfig(...))`.
diffusers 0.42.1 picks the rank's device as `rank % torch.accelerator.device_count()`, which divides by
zero on a machine without an accelerator; there, for the duration of that one call, the count reads 1
(the device is then "cpu", and gloo carries the collectives). Nothing else of diffusers is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from .measure import MachineProbe, Reading, RunSample

DEFAULT_TIMEOUT_S = 120.0


def enable(model: Any, ulysses: int = 1, ring: int = 1) -> None:
    """Shard `model`'s sequence over the process group with diffusers' own context parallelism."""
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=ulysses, ring_degree=ring)
    if torch.accelerator.device_count() > 0:
        model.enable_parallelism(config=config)
        return
    with mock.patch("torch.accelerator.device_count", return_value=1):  # see the module docstring
        model.enable_parallelism(config=config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CHILD = """
import json, os, sys, importlib, torch, torch.distributed as dist
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
backend = "nccl" if torch.cuda.is_available() and os.environ.get("ACCEL_CP_BACKEND", "") != "gloo" else "gloo"
if backend == "nccl":
    torch.cuda.set_device(rank % torch.cuda.device_count())
dist.init_process_group(backend, rank=rank, world_size=world)
module, function = sys.argv[1].split(":")
args = json.loads(open(sys.argv[2]).read())
try:
    result = getattr(importlib.import_module(module), function)(rank, world, args)
finally:
    dist.barrier()
    dist.destroy_process_group()
with open(sys.argv[3] + f".{rank}", "w") as f:
    json.dump(result, f)
"""


def launch(target: str, world: int, args: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S,
           threads: int = 1, pythonpath: list[str] | None = None) -> list[Any]:
    """Run `target` ("module:function") on `world` ranks and return their results, rank by rank.

    Raises RuntimeError with the ranks' stderr when one fails, and TimeoutError (every process killed)
    when they run past `timeout_s` seconds: a rank that waits forever for another is a failure."""
    with tempfile.TemporaryDirectory() as tmp:
        args_path, out_path = Path(tmp) / "args.json", Path(tmp) / "result"
        args_path.write_text(json.dumps(args))
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
                   OMP_NUM_THREADS=str(threads), LOCAL_WORLD_SIZE=str(world))
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
        procs = []
        logs = []
        for rank in range(world):
            log = open(Path(tmp) / f"log.{rank}", "w+")  # noqa: SIM115 (closed below)
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _CHILD, target, str(args_path), str(out_path)],
                env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)), stdout=log, stderr=subprocess.STDOUT,
            ))
        deadline = time.monotonic() + timeout_s
        try:
            for p in procs:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            raise TimeoutError(f"{target} on {world} ranks ran past {timeout_s:.0f} s (killed): "
                               f"{_tail(logs)}") from None
        finally:
            for log in logs:
                log.flush()
        failed = [r for r, p in enumerate(procs) if p.returncode != 0]
        text = _tail(logs)
        for log in logs:
            log.close()
        if failed:
            raise RuntimeError(f"{target}: ranks {failed} failed:\n{text}")
        return [json.loads(Path(f"{out_path}.{rank}").read_text()) for rank in range(world)]


def _tail(logs: list[Any], chars: int = 4000) -> str:
    out = []
    for rank, log in enumerate(logs):
        log.seek(0)
        out.append(f"--- rank {rank} ---\n{log.read()[-chars:]}")
    return "\n".join(out)


# ---- accel bench-parallel ----------------------------------------------------------------------------
MODES = ("ulysses", "ring")
SINGLE = "1 process"  # the mode label of the single-process rows
# per model and size: inputs whose per-rank parts are whole tiles (64 tokens at the bench size, 16 at tiny)
# for `world` ranks: Flux's prompt is 64 tokens per rank (16 at tiny); Wan has 4 latent frames per rank
# (its video tiles are 4 frames deep) at the bench size
SIZES = ("tiny", "bench")
MODELS = ("flux", "wan")


def sizes(model: str, size: str, world: int) -> dict[str, int]:
    if model == "flux":
        side = 64 if size == "tiny" else 1024
        return {"height": side, "width": side, "text_tokens": (16 if size == "tiny" else 64) * world}
    if size == "tiny":
        return {"num_frames": 13}  # 4 latent frames of 4 x 4 tokens
    return {"num_frames": 16 * world - 3, "height": 256, "width": 448}  # 4 * world latent frames of 16 x 28


METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {}, "pisa": {}, "adaspa": {}, "delta-dit": {}, "tdc": {"threshold": 0.5, "max_skips": 3},
}
TINY_OPTIONS: dict[str, dict[str, Any]] = {"pisa": {"tile_size": 16, "density": 0.25}, "adaspa": {"tile_size": 16}}


def _inputs(pipe: Any, model: str, size: str, steps: int, world: int) -> dict[str, Any]:
    from accel.zoo import inputs

    dims: dict[str, Any] = sizes(model, size, world)
    text_tokens = dims.pop("text_tokens", None)
    kw = inputs(pipe, steps=steps, seed=0, **dims)
    if text_tokens is not None:  # a prompt whose per-rank share is whole tiles
        embeds = kw["prompt_embeds"]
        kw["prompt_embeds"] = embeds.repeat(1, -(-text_tokens // embeds.shape[1]), 1)[:, :text_tokens]
    return kw


def options(method: str, size: str) -> dict[str, Any]:
    return {**METHOD_OPTIONS.get(method, {}), **(TINY_OPTIONS.get(method, {}) if size == "tiny" else {})}


def worker(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    """One rank of one bench row group: every method on one pipeline, `world` ranks in `mode` (or one
    process), timed between barriers (a run's time is the slowest rank's); rank 0 saves the outputs."""
    import torch.distributed as dist

    import accel

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = accel.zoo.load(args["model"], size=args["size"])
    pipe.to(device)
    if world > 1:
        enable(pipe.transformer, **{args["mode"]: world})
    kwargs = _inputs(pipe, args["model"], args["size"], args["steps"], args["world"])
    probe = MachineProbe()
    rows = {}
    for method in args["methods"]:
        with accel.patch(pipe, method=method, **options(method, args["size"])) as handle:
            runs = []
            for i in range(args["repeat"] + 1):  # the first run is a warm-up
                dist.barrier()
                if device == "cuda":
                    torch.cuda.synchronize()
                start = probe.read()
                with torch.inference_mode():
                    out = pipe(**kwargs, return_dict=False)[0]
                if device == "cuda":
                    torch.cuda.synchronize()
                if i:
                    runs.append(_all_ranks(start, probe, device))
            stats = handle.stats()
        if rank == 0:
            torch.save(out.float().cpu(), Path(args["out"]) / f"{args['tag']}-{method}.pt")
        rows[method] = {"seconds": statistics.median(r.seconds for r in runs), "times": [r.seconds for r in runs],
                        "other_cpu": [r.other_cpu for r in runs], "load": [r.load for r in runs],
                        "kernel": stats[method].get("kernel") if isinstance(stats[method], dict) else None}
    return rows


def _all_ranks(start: Reading, probe: MachineProbe, device: str) -> RunSample:
    """One timed run seen by every rank: the slowest rank's wall time, and the share of the CPUs that
    processes other than the ranks used meanwhile (the machine's busy CPU time read by this rank, less every
    rank's own CPU time). Every rank must call it (two all-reduces, on the collective backend's device)."""
    import torch.distributed as dist

    end = probe.read()
    wall = torch.tensor([end.wall_s - start.wall_s], dtype=torch.float64, device=device)
    own = torch.tensor([end.own_cpu_s - start.own_cpu_s], dtype=torch.float64, device=device)
    dist.all_reduce(wall, op=dist.ReduceOp.MAX)
    dist.all_reduce(own, op=dist.ReduceOp.SUM)
    ranks_end = replace(end, wall_s=start.wall_s + float(wall), own_cpu_s=start.own_cpu_s + float(own))
    return RunSample.between(start, ranks_end, probe.cpus)


def run(model: str, size: str, methods: list[str], world: int, modes: list[str], steps: int, repeat: int,
        threads: int, timeout_s: float) -> dict[str, Any]:
    """1 process with `threads` threads, then `world` processes with threads / world each (same cores on
    a CPU; one GPU each on a GPU machine), per mode; outputs compared with the 1-process run's."""
    from accel.info import device_name

    with tempfile.TemporaryDirectory() as tmp:
        common = {"model": model, "size": size, "methods": methods, "steps": steps, "repeat": repeat, "out": tmp,
                  "world": world}  # the inputs fit `world` ranks, for the 1-process run too
        single = launch(f"{__name__}:worker", 1, {**common, "tag": "single", "mode": "none"}, timeout_s,
                        threads=threads)[0]
        rows = [{"mode": SINGLE, "ranks": 1, "method": m, **single[m], "ratio": 1.0, "error": 0.0}
                for m in methods]
        per_rank = max(1, threads // world)
        for mode in modes:
            result = launch(f"{__name__}:worker", world, {**common, "tag": mode, "mode": mode}, timeout_s,
                            threads=per_rank)[0]
            for m in methods:
                ref = torch.load(Path(tmp) / f"single-{m}.pt")
                out = torch.load(Path(tmp) / f"{mode}-{m}.pt")
                error = float((out - ref).abs().max() / ref.abs().max())
                rows.append({"mode": mode, "ranks": world, "method": m, **result[m],
                             "ratio": result[m]["seconds"] / single[m]["seconds"], "error": error})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"model": model, "size": size, "steps": steps, "repeat": repeat, "world": world, "threads": threads,
            "device": device_name() if device == "cpu" else torch.cuda.get_device_name(0),
            "gpus": torch.cuda.device_count(), "verdict": verdict(rows), "rows": rows}


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`noise.judge` on every row's timed runs, the first row (one process, the first method) as the baseline:
    unreliable when it ran once or spread too much, or other processes used the CPUs during too many runs.
    The single-process and N-rank runs are separate launches, not interleaved: the verdict is what says
    whether the machine stayed quiet across them."""
    from . import noise

    samples = {f"{r['mode']}/{r['method']}": [RunSample(t, c, lo) for t, c, lo in
                                              zip(r["times"], r["other_cpu"], r["load"], strict=True)]
               for r in rows}
    return asdict(noise.judge(samples, baseline=next(iter(samples)), exact=""))


def markdown(result: dict[str, Any], command: str) -> str:
    from . import noise

    cpu = result["gpus"] == 0
    lines = [
        f"`{command}` on {result['device']}"
        + (f" ({result['threads']} threads in all: 1 process with {result['threads']}, each of "
           f"{result['world']} ranks with {max(1, result['threads'] // result['world'])}; gloo)" if cpu
           else f" ({result['world']} GPUs, NCCL)")
        + f"; {result['model']} ({result['size']}), {result['steps']} steps, median of {result['repeat']} runs "
          "after a warm-up, the slowest rank's time.",
        "",
        noise.verdict_line(result["verdict"]),
        "",
        "| parallelism | ranks | method | s / run | time vs 1 process | max rel. difference vs 1 process |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | {r['ranks']} | {r['method']} | {r['seconds']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['error']:.1e} |")
    lines.append("")
    lines.append("On a CPU the ranks share the same cores as the single process, so the time ratio is the "
                 "parallel path's overhead (collectives, the ring's K/V all-gather, per-shard partials), "
                 "not a speedup; on a GPU machine each rank has its own GPU and the ratio is 1 / speedup.")
    return "\n".join(lines)


def check_ranks(model: str, size: str, world: int, modes: list[str]) -> None:
    """Refuse, before any rank starts, `world` ranks that the model cannot be split over: every mode shards the
    image or video tokens evenly over the ranks, and Ulysses also the attention heads. Reads the pipeline's
    config (it is built here, in a second: the zoo's models are small)."""
    from accel.errors import AccelError
    from accel.zoo import load

    pipe = load(model, size=size)
    dims = _inputs(pipe, model, size, 1, world)
    if model == "flux":  # latents packed 2x2
        side = 2 * pipe.vae_scale_factor
        tokens, what = (dims["height"] // side) * (dims["width"] // side), "image"
    else:  # Wan: latent frames, then patches
        t, h, w = pipe.transformer.config.patch_size
        frames = (dims["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
        side = pipe.vae_scale_factor_spatial
        tokens, what = (frames // t) * (dims["height"] // side // h) * (dims["width"] // side // w), "video"
    if tokens % world:
        raise AccelError(f"--ranks {world}: {model} ({size}) runs {tokens} {what} tokens, which do not split evenly "
                         f"over {world} ranks; choose --ranks dividing {tokens}")
    heads = pipe.transformer.config.num_attention_heads
    if "ulysses" in modes and heads % world:
        raise AccelError(f"--ranks {world}: {model} ({size}) has {heads} attention heads, which --modes ulysses "
                         f"splits over the ranks; choose --ranks dividing {heads}, or --modes ring")


def _cmd(args: argparse.Namespace) -> int:
    from accel.errors import AccelError

    from .report import check_outputs, command_line, update_doc

    gpus = torch.cuda.device_count()
    if gpus and args.ranks > gpus:
        raise AccelError(f"bench-parallel: --ranks {args.ranks} on a machine with {gpus} GPU(s); NCCL needs "
                         f"one GPU per rank: choose --ranks <= {gpus}")
    if args.publish_unreliable and not args.doc:
        raise AccelError("bench-parallel: --publish-unreliable acts only with --doc (it writes a disturbed run's "
                         "table there)")
    check_ranks(args.model, args.size, args.ranks, args.modes)
    check_outputs("bench-parallel", args.out, args.doc, args.doc_key, ("bench-parallel.json", "bench-parallel.md"),
                  default_key=args.default_doc_key)
    command = command_line(args.argv)
    result = run(args.model, args.size, args.methods, args.ranks, args.modes, args.steps, args.repeat,
                 args.threads or torch.get_num_threads(), args.timeout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-parallel.json").write_text(json.dumps(result, indent=2))
    text = markdown(result, command)
    (out / "bench-parallel.md").write_text(text + "\n")
    print(text)
    if args.doc:
        if not (result["verdict"]["reliable"] or args.publish_unreliable):  # caught, not published
            print(f"accel bench-parallel: unreliable timings; {args.doc} left unchanged (run it alone, with "
                  "--repeat of at least 2, or pass --publish-unreliable)", file=sys.stderr)
            return 3
        update_doc(Path(args.doc), args.doc_key or args.default_doc_key, text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `bench-parallel` on the `accel` command's subparsers."""
    from accel.cli import counting, positive

    p = sub.add_parser("bench-parallel", help="one process vs N ranks under diffusers' context parallelism "
                       "(Ulysses, ring), every method: time and difference")
    p.add_argument("--model", choices=MODELS, default="flux")
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--methods", type=_names(tuple(METHOD_OPTIONS)), default=list(METHOD_OPTIONS),
                   help=f"comma-separated among {', '.join(METHOD_OPTIONS)} (default all)")
    p.add_argument("--ranks", type=counting(2), default=2, help="processes (GPUs on a GPU machine; default 2)")
    p.add_argument("--modes", type=_names(MODES), default=list(MODES), help="ulysses,ring (default both)")
    p.add_argument("--steps", type=counting(1), default=4)
    p.add_argument("--repeat", type=counting(1), default=3)
    p.add_argument("--threads", type=counting(1), default=None,
                   help="CPU threads in all (default: torch's count); each rank gets threads / ranks")
    p.add_argument("--timeout", type=positive("seconds"), default=1800.0,
                   help="seconds before every rank is killed (> 0)")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--doc", default=None, help="also write the table into this markdown file (docs/benchmarks.md)")
    p.add_argument("--doc-key", default=None, help="section name in --doc")
    p.add_argument("--publish-unreliable", action="store_true",
                   help="with --doc: write --doc even when the timings are unreliable (the table says so)")
    p.set_defaults(func=_cmd)
    return p


def _names(allowed: tuple[str, ...]) -> Any:
    """An argparse type: comma-separated distinct names among `allowed`, refused with the allowed ones."""
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad or not names or len(set(names)) < len(names):
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated distinct names among "
                                             f"{', '.join(allowed)}")
        return names
    return parse
