"""accel under diffusers' context parallelism (Ulysses and ring): rank-consistent decisions and an LSE path.

accel brings no distributed engine. The user shards the sequence with diffusers' own
(`model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=..., ring_degree=...))`, before
`accel.patch`), and accel's methods read that setup here (`of(model)`):

- Decisions (Δ-DiT's and TDC's skip/refresh, the 6-bit router's route) are taken from statistics summed
  over every rank of the sequence (`sums`, `all_ranks`) before deciding, so all ranks take the same
  decision, the one a single process would take: no rank skips a block while another computes it (which
  would leave the others waiting in the block's collectives forever).
- Ring attention needs each partial attention's log-sum-exp, which diffusers' native (SDPA) backend does
  not give. `ring_attention` runs diffusers' own `TemplatedRingAttention` (its all-gather, its key-shard
  loop and its LSE merge) with a forward op of accel's engine that returns the LSE: dense for every
  method that leaves attention alone (`RingAttentionHook`), block-sparse for PISA and AdaSpa.
- Ulysses needs nothing of the kind: after diffusers' all-to-all each rank holds the whole sequence for
  its share of the heads, and the attention call inside is the one accel's methods already route.

`check` refuses, at patch time, what is not supported (docs/scale-out.md has the table).
Source: diffusers 0.42.1, models/_modeling_parallel.py, models/attention_dispatch.py (the templated CP
attention and its forward-op signature), hooks/context_parallel.py (which inputs are split).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import ModelHook

from . import compat
from .errors import UnsupportedModelError

# the methods that route attention themselves under context parallelism (tile orders per layout)
SPARSE_METHODS = frozenset({"pisa", "adaspa"})

ShardAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ContextParallel:
    """One denoiser's context-parallel setup (diffusers' `ParallelConfig`, set by `enable_parallelism`).

    `ulysses` and `ring` are the degrees; the sequence is split over `world = ulysses * ring` ranks, in
    the order of diffusers' flattened (ring, ulysses) mesh. `encoder_sharded`: whether the model's CP plan
    splits `encoder_hidden_states` too (Flux) or leaves it whole on every rank (Wan)."""

    config: Any
    ulysses: int
    ring: int
    encoder_sharded: bool

    @property
    def world(self) -> int:
        return self.ulysses * self.ring

    @property
    def _cp(self) -> Any:
        return self.config.context_parallel_config

    @property
    def group(self) -> dist.ProcessGroup:
        """Every rank holding a piece of the sequence."""
        return self._cp._flattened_mesh.get_group()

    @property
    def rank(self) -> int:
        return self._cp._flattened_mesh.get_local_rank()

    @property
    def ring_group(self) -> dist.ProcessGroup:
        return self._cp._ring_mesh.get_group()

    @property
    def ring_rank(self) -> int:
        return int(self._cp._ring_local_rank)

    @property
    def ulysses_group(self) -> dist.ProcessGroup:
        return self._cp._ulysses_mesh.get_group()

    def describe(self) -> str:
        return f"ulysses={self.ulysses}, ring={self.ring}"


def _splits(plan: Any, name: str) -> bool:
    """Whether a diffusers CP plan (nested dicts of ContextParallelInput) splits an input called `name`."""
    if isinstance(plan, dict):
        return any((key == name and type(value).__name__ == "ContextParallelInput") or _splits(value, name)
                   for key, value in plan.items())
    return False


def of(model: torch.nn.Module) -> ContextParallel | None:
    """The context-parallel setup of a denoiser, or None when it runs on one rank (no parallel config, no
    context-parallel config, or both degrees 1)."""
    config = getattr(model, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None or getattr(cp, "_mesh", None) is None:
        return None
    ulysses, ring = int(cp.ulysses_degree), int(cp.ring_degree)
    if ulysses * ring == 1:
        return None
    return ContextParallel(config, ulysses, ring, _splits(getattr(model, "_cp_plan", None), "encoder_hidden_states"))


class Watched:
    """The context-parallel setup of each denoiser at patch time. A method calls `check()` at the start of
    every run: a setup changed after patching (`enable_parallelism` called on a patched model) is refused,
    since the method's hooks were built for the other one and ranks could diverge."""

    def __init__(self, target: Any, method: str) -> None:
        self.method = method
        self.entries = [(d.module, of(d.module)) for d in target.denoisers]

    def first(self) -> ContextParallel | None:
        return next((cp for _, cp in self.entries if cp is not None), None)

    def check(self) -> None:
        for module, cp in self.entries:
            now = of(module)
            if (now is None) != (cp is None) or (now is not None and cp is not None and now.config is not cp.config):
                raise UnsupportedModelError(
                    f"{self.method}: the context parallelism of {type(module).__name__} changed after accel.patch "
                    f"(was {cp.describe() if cp else 'none'}, now {now.describe() if now else 'none'}); unpatch, "
                    "call enable_parallelism, then patch again.")


# ---- rank-consistent statistics -----------------------------------------------------------------------
def sums(parallel: ContextParallel | None, values: Sequence[torch.Tensor]) -> list[float]:
    """The scalar tensors `values`, each summed over every rank of the sequence (one all-reduce, in
    float64), as Python floats; on one rank, the values themselves. Every rank gets the same numbers."""
    return _reduced(parallel, values, dist.ReduceOp.SUM)


def maxes(parallel: ContextParallel | None, values: Sequence[torch.Tensor]) -> list[float]:
    """Like `sums`, with the maximum over the ranks."""
    return _reduced(parallel, values, dist.ReduceOp.MAX)


def all_ranks(parallel: ContextParallel | None, flag: bool | torch.Tensor) -> bool:
    """Whether `flag` holds on every rank (the same answer on all of them)."""
    if parallel is None:
        return bool(flag)
    return _reduced(parallel, [torch.tensor(1.0 if bool(flag) else 0.0)], dist.ReduceOp.MIN)[0] > 0.5


def _reduced(parallel: ContextParallel | None, values: Sequence[torch.Tensor], op: Any) -> list[float]:
    device = _collective_device(parallel)
    stacked = torch.stack([v.detach().reshape(()).to(device=device, dtype=torch.float64) for v in values])
    if parallel is not None:
        dist.all_reduce(stacked, op=op, group=parallel.group)
    return stacked.tolist()


def _collective_device(parallel: ContextParallel | None) -> torch.device:
    """Where a small tensor must be for the group's backend: the CPU for gloo (and without a group),
    the current CUDA device for NCCL."""
    if parallel is None or dist.get_backend(parallel.group) == "gloo":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def stream_weight(parallel: ContextParallel | None, stream: str) -> float:
    """What one rank's share of a stream counts in a sum over the ranks: 1 for a stream split across the
    ranks (the hidden states; the text stream when the CP plan splits it), 1 / world for one every rank
    holds whole (so that the sum counts it once)."""
    if parallel is None or stream == "hidden" or parallel.encoder_sharded:
        return 1.0
    return 1.0 / parallel.world


# ---- where the tokens are --------------------------------------------------------------------------
def gathered_positions(segments: Sequence[int], world: int) -> torch.Tensor:
    """[S] int64: for each position of the rank-major concatenation of the ranks' local sequences, the
    token's position in the whole sequence. `segments`: the lengths of the sequence's parts in model
    order (e.g. [text, image] for Flux's joint attention), each split evenly over `world` ranks, each
    rank's local sequence being its piece of every part, in order (diffusers' CP split)."""
    starts = list(itertools.accumulate([0, *segments]))
    parts = []
    for r in range(world):
        for start, length in zip(starts, segments, strict=False):
            piece = length // world
            parts.append(torch.arange(start + r * piece, start + (r + 1) * piece))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def check_split(segments: Sequence[int], world: int, what: str) -> None:
    """Refuse a sequence whose parts do not split evenly over the ranks (diffusers' plain Ulysses and
    ring need equal shards too)."""
    bad = [n for n in segments if n % world]
    if bad:
        raise UnsupportedModelError(
            f"accel under context parallelism: {what} has parts of {list(segments)} tokens, which do not split "
            f"evenly over {world} ranks; use a resolution and prompt length divisible by {world}."
        )


# ---- ring attention with an LSE ------------------------------------------------------------------
def _forward_only(ctx: Any, grad_out: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("accel's context-parallel attention is forward-only (inference)")


def ring_attention(parallel: ContextParallel, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   scale: float | None, shard_attention: ShardAttention, return_lse: bool = False) -> Any:
    """Attention of this rank's queries over the keys of every ring rank, [B, H, S_local, D] each.

    Runs diffusers' `TemplatedRingAttention` (all-gather of K/V, the loop over key shards, the LSE merge),
    with `shard_attention(shard, q, k, v) -> (out [B, H, Sq, D], lse [B, H, Sq] fp32)` as its forward op:
    `shard` is the ring rank whose keys k, v are (diffusers visits shard (rank + i) % ring at step i).
    With `return_lse`, also the merged LSE [B, H, S_local] fp32."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    calls = itertools.count()
    rank, ring = parallel.ring_rank, parallel.ring

    def forward_op(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shard = (rank + next(calls)) % ring
        out, lse = shard_attention(shard, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), lse.transpose(1, 2)

    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    out = _templated_context_parallel_attention(
        q, k, v, None, 0.0, False, scale, False, return_lse, forward_op=forward_op, backward_op=_forward_only,
        _parallel_config=parallel.config,
    )
    if return_lse:
        out, lse = out
        return out.transpose(1, 2).to(query.dtype), lse.transpose(1, 2).float()
    return out.transpose(1, 2).to(query.dtype)


def gather_ring(parallel: ContextParallel, x: torch.Tensor) -> list[torch.Tensor]:
    """Every ring rank's `x` (equal shapes), in ring order."""
    parts = [torch.empty_like(x) for _ in range(parallel.ring)]
    dist.all_gather(parts, x.contiguous(), group=parallel.ring_group)
    return parts


def recall_reduce(parallel: ContextParallel | None) -> Callable[[torch.Tensor, torch.Tensor],
                                                                 tuple[torch.Tensor, torch.Tensor]] | None:
    """For a head-adaptive statistic of sums [B, heads] (AdaSpa's recall: kept and total mass): under
    ring, the sums over every rank's query tiles (all-reduce); under Ulysses, every rank's heads side by
    side, [B, H] (all-gather, in head order: Ulysses gives rank u heads u*H/n...(u+1)*H/n - 1)."""
    if parallel is None:
        return None

    def reduce(kept: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.stack([kept, total])
        if parallel.ring > 1:
            dist.all_reduce(both, group=parallel.ring_group)
            return both[0], both[1]
        parts = [torch.empty_like(both) for _ in range(parallel.ulysses)]
        dist.all_gather(parts, both.contiguous(), group=parallel.ulysses_group)
        both = torch.cat(parts, dim=-1)
        return both[0], both[1]

    return reduce


def dense_shard(shard: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention with its LSE on accel's engine (every key tile kept)."""
    from accel.sparse_attn import TileIndex, block_sparse_attention

    every = torch.ones(1, 1, -(-q.shape[2] // 64), -(-k.shape[2] // 64), dtype=torch.bool, device=q.device)
    index = TileIndex.from_dense(every, 64, q.shape[2], k.shape[2])
    out, lse = block_sparse_attention(q, k, v, index, scale, return_lse=True)
    return out, lse


@contextmanager
def processors_unaware(module: torch.nn.Module) -> Iterator[None]:
    """While active, the attention module's processor sees no parallel config: its dispatcher call is a
    plain SDPA call on the local shard, which accel routes (and hands to diffusers' templated CP
    attention itself). Per instance; restored on exit."""
    processor: Any = getattr(module, "processor", None)
    saved = getattr(processor, "_parallel_config", None)
    if saved is None:
        yield
        return
    processor._parallel_config = None
    try:
        yield
    finally:
        processor._parallel_config = saved


class RingAttentionHook(ModelHook):
    """On one attention module of a ring-parallel denoiser whose methods leave attention alone: its SDPA
    call runs as diffusers' ring attention with accel's exact LSE forward op (native SDPA gives none)."""

    def __init__(self, parallel: ContextParallel, counters: dict[str, Any]) -> None:
        super().__init__()
        self.parallel = parallel
        self.counters = counters

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        from accel.sparse_attn.methods.sdpa_route import SDPACall, SDPARoute

        def route(call: SDPACall) -> torch.Tensor:
            if call.unsupported() or call.attn_mask is not None:
                raise UnsupportedModelError(
                    f"accel ring attention: {call.unsupported() or 'an attention mask'} is not supported under "
                    "ring context parallelism (diffusers' ring refuses masks as well)")
            self.counters["ring_calls"] = self.counters.get("ring_calls", 0) + 1

            def shard(_: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return dense_shard(_, q, k, v, call.scale)

            return ring_attention(self.parallel, call.query, call.key, call.value, call.scale, shard)

        with processors_unaware(module), SDPARoute(route):
            return compat.original_forward(self)(*args, **kwargs)


_SPLIT_HOOK = "cp_input---"  # diffusers' split hook names (hooks/context_parallel.py)


def split_inputs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A block's inputs as the block itself will see them: split by diffusers' context-parallel input
    hooks registered on `module` (Wan splits its hidden states at blocks.0), which run inside accel's
    hooks (they were there first). Without such a hook, the inputs unchanged. The split is a local view
    (no communication)."""
    registry = compat.registry_of(module)
    if registry is None:
        return args, kwargs
    for name in registry._hook_order:
        if name.startswith(_SPLIT_HOOK):
            args, kwargs = registry.hooks[name].pre_forward(module, *args, **kwargs)
    return tuple(args), kwargs


def check(target: Any, methods: Sequence[Any]) -> None:
    """Refuse, before anything is touched, a context-parallel setup the methods cannot serve."""
    names = {m.name for m in methods}
    for d in target.denoisers:
        parallel = of(d.module)
        if parallel is None:
            continue
        cp = parallel._cp
        model = type(d.module).__name__
        if getattr(cp, "ulysses_anything", False) or getattr(cp, "ring_anything", False):
            raise UnsupportedModelError(
                f"accel: {model} runs diffusers' ulysses_anything/ring_anything (uneven shards); accel supports "
                "context parallelism with even shards only (ulysses_anything=False, ring_anything=False).")
        attention = names & SPARSE_METHODS
        if parallel.ulysses > 1 and parallel.ring > 1:
            raise UnsupportedModelError(
                f"accel: {model} runs unified context parallelism ({parallel.describe()}); accel supports "
                "ulysses_degree > 1 or ring_degree > 1, one at a time.")
        if parallel.ring > 1 and getattr(cp, "convert_to_fp32", True) is False:
            raise UnsupportedModelError(
                f"accel: ring attention on {model} with convert_to_fp32=False; accel's ring merges in fp32.")
        heads = getattr(getattr(d.module, "config", None), "num_attention_heads", None)
        if parallel.ulysses > 1 and heads is not None and heads % parallel.ulysses:
            raise UnsupportedModelError(
                f"accel: {model} has {heads} attention heads, which do not split over ulysses_degree="
                f"{parallel.ulysses}; choose a degree dividing {heads}.")
        if attention and not parallel.encoder_sharded and any(
                site.kind == "joint" for site in d.adapter.attention_sites(d.module)):
            raise UnsupportedModelError(
                f"accel: {model}'s joint attention under context parallelism with a text stream the CP plan does "
                f"not split; {', '.join(sorted(attention))} need every part of the joint sequence split evenly.")
        for m in methods:
            if m.name in attention and getattr(m.config, "routing", "pooled") != "pooled" and parallel.ring > 1:
                raise UnsupportedModelError(
                    f"{m.name}: option routing={m.config.routing!r} under ring attention; allowed: 'pooled' "
                    "(the covariance score needs every key tile's moments on every rank).")


def attach(target: Any, methods: Sequence[Any], journal: Any, counters: dict[str, Any]) -> None:
    """Under ring parallelism with no method routing attention: every attention module gets the ring
    route of accel's exact engine (`RingAttentionHook`), since diffusers' native backend has no LSE."""
    if any("attention" in m.claims for m in methods):
        return
    for d in target.denoisers:
        parallel = of(d.module)
        if parallel is None or parallel.ring == 1:
            continue
        for site in d.adapter.attention_sites(d.module):
            journal.add_model_hook(site.module, RingAttentionHook(parallel, counters), "accel.ring")
