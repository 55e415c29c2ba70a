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

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

DEFAULT_TIMEOUT_S = 120.0


def enable(model: torch.nn.Module, ulysses: int = 1, ring: int = 1) -> None:
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
