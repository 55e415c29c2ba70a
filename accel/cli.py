"""The `accel` command. Subcommands: `methods`, `info` (and the benchmarks, added with them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import AccelError


def _cmd_methods(args: argparse.Namespace) -> int:
    from .method import methods

    rows = methods()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return 0
    for r in rows:
        families = ", ".join(r.families) if r.families else "any"
        print(f"{r.name:12s} {r.summary}")
        print(f"{'':12s} families: {families}" + (f"; paper: {r.paper}" if r.paper else ""))
        for opt in r.options:
            print(f"{'':12s}   {opt['name']} = {opt['default']!r}  ({opt['allowed']}) {opt['help']}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from . import zoo
    from .quant import calibrate

    local = Path(args.model)
    if args.model in zoo.names():
        if zoo.is_vlm(args.model) or zoo.is_text(args.model) or args.model in zoo.CHUNK_NAMES:
            raise AccelError(f"--model {args.model}: sixbit calibrates image and video diffusion pipelines of "
                             "`accel.zoo.generate`; this is a language model or a chunk-wise video pipeline")
        pipe = zoo.load(args.model, size=args.size)
        out = Path(args.out or f"calibration/{args.model}.json")
    elif local.is_dir():
        from . import load

        pipe = load(str(local))
        out = Path(args.out) if args.out else local / "sixbit_calibration.json"
    else:
        raise AccelError(f"--model {args.model}: neither a zoo name ({', '.join(zoo.names())}) nor a local directory")
    from .bench.report import can_write_dir

    if out.is_dir() or not can_write_dir(out.parent):
        raise AccelError(f"--out {out}: expected a JSON file whose directory can be written (checked before the run)")
    extra = _sixbit_options(pipe, args.model)  # before the run: the call the calibration is for
    result = calibrate.calibrate(pipe, seeds=args.seeds, steps=args.steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibrate.write({**result, "model": args.model}, out)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}; use it with accel.patch(pipe, method='sixbit', calibration='{out}'{extra})")
    return 0


def _sixbit_options(pipe: Any, model: str) -> str:
    """The options `accel.patch(pipe, method="sixbit", ...)` needs on `pipe` besides the calibration: "" or
    ", unsupported='skip'" (some layers' input sizes do not block into 16s; they stay in full precision).
    Raises AccelError when sixbit cannot patch the pipeline at all."""
    import accel

    from .errors import UnsupportedModelError

    for extra, options in (("", {}), (", unsupported='skip'", {"unsupported": "skip"})):
        try:
            accel.patch(pipe, method="sixbit", **options).unpatch()
            return extra
        except UnsupportedModelError as err:
            why = str(err).removeprefix("accel: ")
    raise AccelError(f"--model {model}: sixbit cannot patch this pipeline, so a calibration would serve nothing: "
                     f"{why}")


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import info

    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        if key != "attention":
            print(f"{key:13s} {value}")
    print("attention paths:")
    for name, status in data["attention"].items():
        print(f"  {name:20s} {status}")
    return 0


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _methods_csv(text: str) -> tuple[str, ...]:
    """`--methods`: comma-separated rows, a comma inside a token's brackets kept (tdc(order=1,threshold=0.5))."""
    from .bench.variants import split_methods

    try:
        return split_methods(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def counting(low: int) -> Callable[[str], int]:
    """An argparse type: an int >= low (a step count, a repeat count, a port), named in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}; expected an integer >= {low}")
        return value

    return parse


def positive(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number of `unit` (minutes, seconds) > 0, named in the error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of {unit} > 0")
        return value

    return parse


def _ints_csv(text: str) -> tuple[int, ...]:
    """Comma-separated integers (seeds, step counts)."""
    try:
        return tuple(int(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _seeds_csv(text: str) -> tuple[int, ...]:
    """Comma-separated seeds: at least one, each in [0, 2**63) (torch's range), none twice."""
    try:
        seeds = tuple(int(x) for x in _csv(text))
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) < len(seeds) or any(not 0 <= s < 2**63 for s in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated distinct integer seeds in [0, 2**63)")
    return seeds


def _ratios_csv(text: str) -> tuple[float, ...]:
    """Comma-separated fractions in (0, 1] (keep ratios)."""
    try:
        values = tuple(float(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers in (0, 1]") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every keep ratio must be in (0, 1]")
    return values


def _device(text: str) -> str:
    """cpu, cuda or cuda:N, refused up front when this torch has no such device."""
    import torch

    if text != "cpu" and not text.startswith("cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this torch ({torch.__version__}) sees no CUDA device")
    return text


def _option(text: str) -> tuple[str, str, object]:
    """`method.key=value` with a Python literal value (strings may be bare)."""
    import ast

    target, _, raw = text.partition("=")
    method, _, key = target.partition(".")
    if not (method and key and raw):
        raise argparse.ArgumentTypeError(
            f"--option {text!r}: expected METHOD.KEY=VALUE, e.g. pisa.density=0.1"
        )
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return method, key, value


def _bench_language(spec: Any, args: argparse.Namespace, command: str, default_key: str) -> int:
    """`accel bench` on a VLM (accel/bench/vlm.py), or a block-diffusion language pipeline or chunk-wise video
    pipeline (bench/dllm.py)."""
    import json

    from . import zoo
    from .bench import dllm, vlm
    from .bench.report import update_doc

    if zoo.is_vlm(spec.model):
        result = vlm.run_vlm(spec)
        text = vlm.markdown(result, command)
    else:
        result = dllm.run_dllm(spec)
        text = dllm.markdown(result, command)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(text)
    written = [out / "results.json", out / "results.md"]
    if zoo.is_vlm(spec.model) and vlm.write_plot(result, out / "accuracy.png"):
        written.append(out / "accuracy.png")
    if args.doc:
        key = args.doc_key or default_key
        update_doc(Path(args.doc), key, f"### {key}\n\n{text}")
        written.append(Path(args.doc))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Options not given on the command line keep `BenchSpec`'s defaults (one place for them)."""
    from .bench import BenchSpec, markdown, quick, run, write_all

    if args.publish_unreliable and not args.doc:
        raise AccelError("--publish-unreliable acts only with --doc (it writes a disturbed run's table there)")
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(BenchSpec)}}
    options: dict[str, dict[str, object]] = {}
    for method, key, value in getattr(args, "option", []):
        options.setdefault(method, {})[key] = value
    from .bench import variants

    entries = given.get("methods") or ()
    for entry in options:  # an option for a row that is not asked for is refused before anything runs
        if entry not in entries:
            raise AccelError(f"--option {entry}.*: {entry!r} is not among --methods ({', '.join(entries) or 'auto'})")
    for entry in entries:  # and so is an unknown name or a bad option: building the row checks each config
        if entry != "auto":
            variants.accel_method(entry, 1, options.get(entry))
    unknown = [b for b in given.get("backends") or () if b not in variants.BACKENDS]
    if unknown:
        raise AccelError(f"--backends {','.join(unknown)}: unknown; expected some of {', '.join(variants.BACKENDS)}")
    from .bench.report import check_outputs, command_line

    command, default_key = command_line(args.argv), args.default_doc_key
    check_outputs("bench", args.out, args.doc, args.doc_key,
                  ("results.json", "results.csv", "results.md", "pareto.png", "accuracy.png"), default_key=default_key)
    spec = BenchSpec(**given, method_options=options)
    if args.quick:
        spec = quick(spec)
    from . import zoo

    if zoo.is_vlm(spec.model) or zoo.is_text(spec.model) or spec.model in zoo.CHUNK_NAMES:
        if "steps" in given and not zoo.is_vlm(spec.model):
            raise AccelError(f"--steps {spec.steps}: {spec.model} runs its own steps per block or chunk (its zoo "
                             "size's); this option sets the denoising steps of image and video pipelines")
        return _bench_language(spec, args, command, default_key)
    result = run(spec)
    print(markdown(result, command))
    paths = write_all(result, Path(args.out), command)
    publish = result.reliable or args.publish_unreliable
    if args.doc and publish:
        from .bench.report import update_doc

        key = args.doc_key or default_key
        update_doc(Path(args.doc), key, f"### {key}\n\n{markdown(result, command)}")
        paths["doc"] = Path(args.doc)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.doc and not publish:  # a disturbed run is caught, not published
        print(f"accel bench: unreliable timings; {args.doc} left unchanged (run it alone, or pass "
              "--publish-unreliable)", file=sys.stderr)
        return 3
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    """`accel tune`: the fastest configuration that keeps a quality floor (accel/tune)."""
    from .tune import Floor, TuneSpec, run

    floor = Floor.parse(args.floor)
    from .bench.report import check_outputs, command_line

    command, default_key = command_line(args.argv), args.default_doc_key
    check_outputs("tune", args.out, args.doc, args.doc_key,  # *.tmp: each file is written there, then renamed
                  ("tuned.json", "results.json", "results.md", "pareto.png", "tuned.tmp", "results.tmp"),
                  default_key=default_key)
    spec = TuneSpec(model=args.model, floor=floor, out=args.out, prompts=args.prompts, methods=args.methods or (),
                    steps=args.steps, samples=args.samples, held_out=args.held_out, seed=args.seed,
                    budget_minutes=args.budget_minutes, size=args.size, device=args.device,
                    progress=args.progress, command=command)
    result, paths = run(spec)
    text = paths["md"].read_text()
    print(text)
    if args.doc:
        from .bench.report import update_doc

        key = args.doc_key or default_key
        update_doc(Path(args.doc), key, f"### {key}\n\n{text}")
        paths["doc"] = Path(args.doc)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if result.best is not None:
        print(f"apply: accel.patch(pipe, method=accel.load_config({str(paths['config'])!r}))"
              + (f", and run at num_inference_steps={result.best.candidate.steps}"
                 if result.best.candidate.steps != result.base_steps else ""))
    return 0 if result.best is not None else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.app import main as launch
    from .demo.session import Preset

    for path in args.config:  # a bad file is refused before the server starts
        Preset.from_file(path)
    launch(args.host, args.port, tuple(args.config))
    return 0


def _unavailable(sub: argparse._SubParsersAction, name: str, why: str) -> None:
    """A subcommand that cannot run here: it says why and exits 2."""

    def refuse(args: argparse.Namespace) -> int:
        print(f"accel {name}: {why}", file=sys.stderr)
        return 2

    p = sub.add_parser(name, help=f"(unavailable: {why})", prefix_chars="\0", add_help=False)
    p.add_argument("rest", nargs="*")  # whatever was asked, the answer is the same
    p.set_defaults(func=refuse)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="accel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"accel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("methods", help="list the acceleration methods and their options")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_methods)
    p = sub.add_parser("info", help="versions, device and the attention paths usable here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "bench",
        help="latency, memory and fidelity of methods and peers, side by side",
        argument_default=argparse.SUPPRESS,  # absent options keep BenchSpec's defaults
    )
    p.add_argument("--model", help="zoo name, local directory, or hub id in the local cache (default digits-video, "
                   "trained: the quality columns are task accuracy)")
    p.add_argument("--size", choices=("tiny", "bench"), help="zoo model size (default bench)")
    p.add_argument("--weights", help="with --model digits-vqa: another checkpoint of its architecture (a safetensors "
                   "file, e.g. one trained by digits_vqa.train_full_depth) in place of the committed one")
    p.add_argument("--methods", type=_methods_csv, help="accel methods, comma-separated ('a+b': one patch with both); 'auto' (default) = none + every method that supports the model + each that is not a step cache composed with tdc; "
                   "options in the token: 'tdc(order=1,threshold=0.5)' (the row's label); "
                   "'name:label' adds another row of a method, with options --option name:label.key=value")
    p.add_argument("--option", type=_option, action="append", metavar="METHOD.KEY=VALUE")
    p.add_argument(
        "--peers", type=_csv,
        help="fewer-steps and diffusers caches: fbc, taylorseer, pab, fastercache; fbc@T: FirstBlockCache at threshold "
             "T; quantization: torchao-int8wo, torchao-int8dq, diffusers-torchao-int8wo, diffusers-quanto-int8, "
             "diffusers-bnb-8bit (GPU)"
    )
    p.add_argument("--backends", type=_csv, help="extra dense attention backends: sdpa, flex, xformers")
    p.add_argument("--fewer-steps", type=_ints_csv, help="explicit step counts for fewer-steps rows")
    p.add_argument("--steps", type=counting(1), help="denoising steps of an image or video pipeline (default 20; "
                   "refused for block-diffusion and chunk-wise pipelines, which run their zoo size's steps)")
    p.add_argument("--height", type=counting(1))
    p.add_argument("--width", type=counting(1))
    p.add_argument("--frames", type=counting(1))
    p.add_argument("--seeds", type=_seeds_csv, help="comma-separated seeds (default 0)")
    p.add_argument("--repeat", type=counting(1), help="timed repeats per row and seed (default 3)")
    p.add_argument("--warmup", type=counting(0), help="untimed runs per row first (default 1)")
    p.add_argument("--device", type=_device, help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--output-type", choices=("latent", "pt"), help="'latent' compares final latents; 'pt' decoded outputs")
    p.add_argument("--out", default="bench-results")
    p.add_argument(
        "--quick",
        action="store_true",
        default=False,
        help="half resolution (random-weight models), <= 8 steps, one repeat, no settling rounds, <= 10 accuracy "
             "samples: about ten minutes on 2 cores; a smoke test: one run per row cannot be judged, so its timings "
             "are marked unreliable",
    )
    p.add_argument(
        "--no-profile",
        dest="profile_attention",
        action="store_false",
        help="skip the torch.profiler run for attention time",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--accuracy-n",
        type=counting(0),
        help="task-accuracy samples per row on trained reference models (default 20; 0 = off)",
    )
    p.add_argument("--no-noise-floor", dest="noise_floor", action="store_false",
                   help="leave out the noise-floor row (the exact model through SDPA's math kernel)")
    p.add_argument("--settle-s", type=float, help="seconds of extra interleaved rounds, after --repeat, until no "
                   "row's median moves 2%% (default 60; 0 = none)")
    p.add_argument("--publish-unreliable", action="store_true", default=False,
                   help="write --doc even when the timings are marked unreliable (default: leave it, exit 3)")
    p.add_argument(
        "--keep-sweep", type=_ratios_csv,
        help="VLMs: PyramidDrop rows at these keep ratios and FastV rows at the same visual-token budget "
             "(with digits-vqa: an accuracy-against-budget plot)",
    )
    p.add_argument(
        "--doc", default=None, help="also write the table into this markdown file (docs/benchmarks.md)"
    )
    p.add_argument("--doc-key", default=None, help="section name in --doc (default: the command line without the options that say where results go)")
    p.set_defaults(func=_cmd_bench)

    from accel.sparse_attn.bench import add_bench_attn_parser
    add_bench_attn_parser(sub)
    from .bench.scale_out import add_parser as add_bench_parallel_parser
    add_bench_parallel_parser(sub)
    from .bench.attention_quality import add_parser as add_attention_quality_parser
    add_attention_quality_parser(sub)
    from accel.sparse_attn.gpu_check import add_parser as add_gpu_check_parser
    add_gpu_check_parser(sub)
    try:  # triton is a Linux-only dependency; every other command works without it
        from accel.sparse_attn.triton_compile import add_parser as add_compile_check_parser
        add_compile_check_parser(sub)
    except ImportError as exc:
        _unavailable(sub, "compile-check", f"needs triton, which is not importable here ({exc})")

    p = sub.add_parser("calibrate", help="fit a method's predictor on a few prompts (sixbit: alpha, beta, threshold)")
    p.add_argument("--model", required=True, help="zoo name or local pipeline directory")
    p.add_argument("--size", choices=("tiny", "bench"), default="tiny", help="zoo model size (default tiny)")
    p.add_argument("--method", choices=("sixbit",), default="sixbit")
    p.add_argument("--seeds", type=_seeds_csv, default=(0, 1), help="comma-separated seeds (default 0,1)")
    p.add_argument("--steps", type=counting(2), default=20, help="denoising steps per run (default 20)")
    p.add_argument("--out", default=None, help="the JSON to write (default: sixbit_calibration.json in the "
                   "local model directory, or calibration/<zoo name>.json)")
    p.set_defaults(func=_cmd_calibrate)

    from accel.quant.bench_linear import add_parser as add_bench_linear_parser
    add_bench_linear_parser(sub)
    from accel.bench.backbones import add_parser as add_bench_backbones_parser
    add_bench_backbones_parser(sub)

    p = sub.add_parser("tune", help="the fastest methods, options and steps that keep a quality floor on your model")
    p.add_argument("--model", required=True, help="zoo name, local pipeline directory, or hub id in the local cache")
    p.add_argument("--floor", required=True, metavar="METRIC=VALUE",
                   help="psnr=DB (mean PSNR against the exact output of the same seeds), accuracy-drop=POINTS "
                        "(task accuracy below the exact run's; trained reference models), agreement=SHARE")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (pipelines with a text encoder)")
    p.add_argument("--methods", type=_methods_csv, default=None,
                   help="methods to search (default: every one that applies); a token with options, e.g. "
                        "'tdc(order=1)', is searched as it is")
    p.add_argument("--budget-minutes", type=positive("minutes"), default=20.0, help="time for the search (default 20)")
    p.add_argument("--steps", type=counting(2), default=None,
                   help="the exact run's steps (default: the trained entry's, else 20)")
    p.add_argument("--samples", type=counting(1), default=None,
                   help="tuning samples at the last rung (default 40 for accuracy-drop, 8 seeds for psnr)")
    p.add_argument("--held-out", type=counting(1), default=None, help="held-out samples (default: as --samples)")
    p.add_argument("--seed", type=int, default=0, help="first tuning seed; held-out seeds start 10,000 later")
    p.add_argument("--size", choices=("tiny", "bench"), default="bench", help="zoo model size (default bench)")
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--out", default="tune-results", help="folder for tuned.json, results.md/.json, pareto.png")
    p.add_argument("--doc", default=None, help="also write the table into this markdown file (docs/benchmarks.md)")
    p.add_argument("--doc-key", default=None, help="section name in --doc (default: the command line without the options that say where results go)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("demo", help="the Gradio side-by-side demo on localhost (needs hf-accel[demo])")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=counting(1), default=7860)
    p.add_argument("--config", action="append", default=[], metavar="PATH",
                   help="a configuration written by `accel tune --out` (its folder or tuned.json), offered beside "
                        "the methods; repeatable")
    p.set_defaults(func=_cmd_demo)
    return parser


OUTPUT_OPTIONS = ("--out", "--doc", "--doc-key", "--publish-unreliable", "--json", "--no-progress")  # where results go, how shown


def _word(value: Any) -> str:
    """A parsed option value as one command-line word: sequences comma-joined, numbers as Python prints them."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(_word, value))
    return str(value)


def default_doc_key(parser: argparse.ArgumentParser, argv: Sequence[str],
                    args: argparse.Namespace | None = None) -> str:
    """The `--doc` section of a run given no `--doc-key`: "accel", the subcommand and the options given in
    `argv` (which `parser`, the subcommand's, accepted), each by its long name and in the parser's order,
    without `OUTPUT_OPTIONS`; with `args` (the parsed namespace), each single-valued option by its parsed
    value, and left out when that is its default. Spellings of one study (an abbreviation, `--x=v` or
    `--x v`, another order, `01` for `1`, a default given explicitly, another `--out`) share a section;
    two studies differ in some option, so never do."""
    actions = {name: a for a in parser._actions for name in a.option_strings}
    order = {id(a): i for i, a in enumerate(parser._actions)}
    given: list[tuple[int, int, list[str]]] = []
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            positionals.append(token)
            continue
        name, eq, inline = token.partition("=")
        action = actions.get(name)
        if action is None:  # an abbreviation argparse accepted: the one option it begins
            begun = {id(a): a for s, a in actions.items() if s.startswith(name)}
            action = next(iter(begun.values())) if len(begun) == 1 else None
        if action is None:
            continue
        values = [inline] if eq else []
        if not eq and action.nargs != 0:
            while i < len(argv) and (not argv[i].startswith("-") or argv[i][1:2].isdigit() or argv[i] == "-"):
                values.append(argv[i])
                i += 1
                if action.nargs in (None, "?"):
                    break
        long = max(action.option_strings, key=len)
        if long in OUTPUT_OPTIONS:
            continue
        if args is not None and action.nargs != 0 and not isinstance(action, argparse._AppendAction):
            parsed = getattr(args, action.dest, None)
            given = [g for g in given if g[0] != order[id(action)]]  # given twice: argparse keeps the last
            if parsed != action.default:
                given.append((order[id(action)], len(given), [long, _word(parsed)]))
            continue
        given.append((order[id(action)], len(given), [long, *values]))
    words = ["accel", *positionals, *(w for _, _, ws in sorted(given) for w in ws)]
    return " ".join(shlex.quote(w) for w in words)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # recorded with benchmark results, so tables show the command that made them
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    args.default_doc_key = default_doc_key(subparsers.choices[args.command], argv[argv.index(args.command):], args)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # a request that cannot be honoured (AccelError is a
        # ValueError, and so are the zoo's and the engine's refusals of a size or a density): its message
        print(f"accel: error: {str(err).removeprefix('accel: ')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
