"""Writing a benchmark's results: a markdown table, results.json, results.csv and the Pareto plot."""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import noise
from .accuracy import has_task
from .runner import BenchResult, RowResult


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _stat_summary(stats: dict[str, Any]) -> str:
    """The method's own counters, flattened to `key=value` (step tracking omitted); in a composition a key
    two methods share is named `method.key` (lego-skip.skip_rate, tdc.skip_rate), and the memory every
    method holds is summed into one `held_peak_MB`."""
    parts, held = [], []
    methods = {name: values for name, values in stats.items()
               if name not in ("methods", "steps") and isinstance(values, dict)}
    seen: dict[str, int] = {}
    for values in methods.values():
        for k in values:
            seen[k] = seen.get(k, 0) + 1
    for name, values in methods.items():
        for k, v in values.items():
            label = f"{name}.{k}" if seen[k] > 1 else k
            if k == "held_peak_MB":
                held.append(v)
            elif not isinstance(v, (dict, list)):  # 3 significant digits: mask_vs_byte_mask=0.125 as it is
                parts.append(f"{label}={v:.3g}" if isinstance(v, float) else f"{label}={_fmt(v)}")
    if held:
        parts.append(f"held_peak_MB={sum(held):.3g}")
    return ", ".join(parts)


def _psnr(row: RowResult) -> str:
    if row.fidelity.get("identical"):
        return "inf (identical)"
    return _fmt(row.fidelity.get("psnr"))


def _accuracy(row: RowResult) -> str:
    """`98.0 (-1.0)`: task accuracy in percent and its change from the baseline in points."""
    if row.accuracy is None:
        return "-"
    delta = "" if row.accuracy_delta_pts is None else f" ({row.accuracy_delta_pts:+.1f})"
    return f"{100 * row.accuracy:.1f}{delta}"


def _spread(row: RowResult) -> str:
    """`1.2`: the timed runs' interquartile range over their median, in percent; `(2/3)` disturbed runs."""
    if row.spread is None:
        return "-"
    disturbed = f" ({row.disturbed_runs}/{row.latency_s.get('n')})" if row.disturbed_runs else ""
    return f"{100 * row.spread:.1f}{disturbed}"


def timing(result: BenchResult) -> str:
    """What the machine did during the timed runs, whether the medians settled, and the verdict: an
    unreliable table says so first, with its reasons."""
    rel, cal = result.reliability, result.calibration
    out = ""
    if rel and not rel.get("reliable", True):
        out += (f"**Unreliable timings: {'; '.join(rel['reasons'])}.** The speedups of this table are not to be "
                "trusted; run it alone.\n\n")
    if cal and not cal.get("reliable", True):
        out += (f"**The fewer-steps rows are not timed to match any row: the calibration runs were disturbed "
                f"({'; '.join(cal['reasons'])}).**\n\n")
    if not rel:
        return out
    settle = result.spec.settle_tol
    if rel.get("settled"):
        settled = f"settled: no median moved {100 * settle:.0f}% in the last round"
    elif rel.get("moved") is None:
        settled = "no settling rounds"
    else:
        settled = f"not settled: the last round moved a median {100 * rel['moved']:.1f}% (budget spent)"
    line = f"Timing: {rel['runs']} timed runs in {rel['rounds']} interleaved rounds ({settled})"
    if rel.get("other_cpu") is not None:
        line += (f"; other processes used {100 * rel['other_cpu']:.0f}% of the CPUs on average, more than "
                 f"{100 * noise.DISTURBED_SHARE:.0f}% during {rel['disturbed_runs']} runs")
    if rel.get("load"):
        low, high = rel["load"]
        line += f"; load average {low:.1f}-{high:.1f}"
    if rel.get("none_vs_baseline") is not None:
        line += (f"; `none` {100 * abs(rel['none_vs_baseline']):.1f}% from the baseline "
                 f"(allowed: {100 * rel['tolerance']:.1f}%, the larger of {100 * noise.AGREE:.0f}% and their spreads)")
    out += line + ". Spread: interquartile range over median; in brackets the disturbed runs.\n\n"
    if any(r.kind == "noise-floor" for r in result.rows):
        columns = "PSNR, SSIM and task accuracy" if result.model.get("task_accuracy") else "PSNR and SSIM"
        out += (f"`{noise.NOISE_FLOOR}`: the exact model through SDPA's math kernel instead of the fused one, "
                f"a second exact path; its {columns} are how far two exact runs already differ, the floor of "
                "every quality column.\n\n")
    return out


def markdown(result: BenchResult, command: str | None = None) -> str:
    spec = result.spec
    task = result.model.get("task_accuracy")
    head = f"Command: `{command}`\n\n" if command else ""
    size = "trained" if task or has_task(spec.model) else spec.size
    head += (
        f"model `{spec.model}` ({result.model['pipeline']}, {size}), {spec.steps} steps, seeds "
        f"{','.join(map(str, spec.seeds))}, repeat {spec.repeat}, {spec.dtype}, device: {result.env['device']}\n\n"
    )
    head += timing(result)
    if task:
        head += (
            f"Task accuracy: the entry's judge over {task['samples']} samples (seed {task['seed']}) per row, "
            "each row with its own steps and patch, outside the timed runs; in brackets the change from the "
            "baseline in points.\n\n"
        )
    cols = ["row", "steps", "latency s (median [min-max])", "spread %", "speedup", "attention s (share)", "peak MB",
            "PSNR dB", "SSIM", "rel L1", *(["task accuracy %"] if task else []), "stats / note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result.rows:
        if r.status != "ok":
            lines.append(f"| {r.label} | {r.steps} | {r.status} |" + " |" * (len(cols) - 3))
            continue
        lat = r.latency_s
        attn = "-" if r.attention_s is None else f"{r.attention_s:.2f} ({100 * (r.attention_share or 0):.0f}%)"
        cells = [
            r.label, str(r.steps), f"{lat['median']:.3f} [{lat['min']:.3f}-{lat['max']:.3f}]", _spread(r),
            f"{r.speedup:.2f}x" if r.speedup else "-", attn, _fmt(r.peak_mem_mb, 1), _psnr(r),
            _fmt(r.fidelity.get("ssim"), 4), _fmt(r.fidelity.get("rel_l1"), 4),
            *([_accuracy(r)] if task else []), _stat_summary(r.stats) or r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_csv(result: BenchResult, path: Path) -> None:
    fields = ["label", "kind", "steps", "status", "latency_median_s", "latency_min_s", "latency_max_s", "spread",
              "disturbed_runs", "speedup",
              "attention_s", "attention_share", "peak_mem_mb", "psnr", "identical", "ssim", "rel_l1", "lpips",
              "accuracy", "accuracy_delta_pts"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in result.rows:
            writer.writerow({
                "label": r.label, "kind": r.kind, "steps": r.steps, "status": r.status,
                "latency_median_s": r.latency_s.get("median"), "latency_min_s": r.latency_s.get("min"),
                "latency_max_s": r.latency_s.get("max"), "spread": r.spread, "disturbed_runs": r.disturbed_runs,
                "speedup": r.speedup, "attention_s": r.attention_s,
                "attention_share": r.attention_share, "peak_mem_mb": r.peak_mem_mb,
                **{k: r.fidelity.get(k) for k in ("psnr", "identical", "ssim", "rel_l1", "lpips")},
                "accuracy": r.accuracy, "accuracy_delta_pts": r.accuracy_delta_pts,
            })


def write_plot(result: BenchResult, path: Path) -> bool:
    """Speedup against PSNR, one point per row (identical rows drawn at the top). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result.rows if r.status == "ok" and r.speedup and r.kind not in ("baseline", "noise-floor")]
    floor = next((r.fidelity.get("psnr") for r in result.rows if r.kind == "noise-floor" and r.status == "ok"), None)
    finite = [r.fidelity["psnr"] for r in rows if r.fidelity.get("psnr") is not None]
    top = (max(finite) if finite else 40.0) + 5.0
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    markers = {"accel": "o", "diffusers-cache": "s", "fewer-steps": "^", "backend": "D"}
    for r in rows:
        y = top if r.fidelity.get("identical") else r.fidelity.get("psnr")
        if y is None:
            continue
        ax.scatter(r.speedup, y, marker=markers.get(r.kind, "o"), s=50)
        ax.annotate(r.label, (r.speedup, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("speedup over baseline (x)")
    floor_text = "" if floor is None else f"; noise floor {floor:.0f}"
    ax.set_ylabel(f"PSNR vs baseline (dB); identical drawn at {top:.0f}{floor_text}")
    unreliable = "" if result.reliable else " UNRELIABLE TIMINGS"
    ax.set_title(f"accel bench: {result.spec.model}, {result.spec.steps} steps ({result.env['device']}){unreliable}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def command_line(argv: Sequence[str]) -> str:
    """The command that made a table, as a shell would take it: "accel " and the quoted arguments."""
    return "accel " + " ".join(shlex.quote(a) for a in argv)


def bad_doc_key(key: str) -> str | None:
    """Why `key` cannot name a section of `update_doc` (a line break, "-->" or "--!>" would end its HTML-comment
    marker early, and a later run could not find the section), or None when it can."""
    if "\n" in key or "\r" in key or "-->" in key or "--!>" in key:
        return ("holds a line break, '-->' or '--!>', which would end the section's marker; expected one line "
                "without them")
    return None


def can_write_dir(path: Path) -> bool:
    """Whether `path` is, or could be made, a directory a file can be written into, found without making
    anything: no part of it is a file, and a file can be made in its nearest existing ancestor (tried, not
    read from the permission bits: root passes every permission check, yet /proc refuses files)."""
    import tempfile

    path = path.absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def check_outputs(command: str, out: str | None = None, doc: str | None = None, doc_key: str | None = None,
                  out_files: Sequence[str] = (), files: dict[str, str | None] | None = None,
                  default_key: str | None = None) -> None:
    """Refuse, before a benchmark runs, what it could write only by failing after the run: an empty path, a
    path through a link to nothing, a link loop or a name too long; an `--out` directory that is (or lies
    under) a file or cannot be written; a `--doc` (or another file of `files`, option -> path) that exists
    but is not a regular file (a directory, a device, a pipe), is not UTF-8 text (--doc is read back), cannot
    be written, or lands on `--out`, one of the files `out_files` it writes there, a folder above it, or
    another output, or under one (paths resolved: `..` and links followed; hard links compared by file); and
    a `--doc-key` (or, without one, `default_key`, e.g. the command line) that is empty or cannot mark a
    section (`bad_doc_key`), or a `--doc-key` without `--doc`. Nothing is made. Raises `InvalidOptionError`
    naming the option, its value and what is expected, prefixed with `command` (e.g. "bench-backbones")."""
    import os

    from accel.errors import InvalidOptionError

    def refuse(message: str) -> NoReturn:
        raise InvalidOptionError(f"{command}: {message}")

    def resolved(flag: str, value: str) -> Path:
        if not value.strip():
            refuse(f"{flag}={value!r} is empty; expected a path")
        path = Path(value)
        try:
            if any(len(part.encode()) > 255 for part in path.parts):
                raise OSError("a name over 255 bytes")
            if any(p.is_symlink() and not p.exists() for p in (path, *path.parents)):
                raise OSError("a link to nothing on the way")
            return path.resolve()
        except (OSError, RuntimeError) as err:  # RuntimeError: a link loop
            refuse(f"{flag}={value!r} cannot be used as a path ({err}); expected a path that can be written")

    targets = {"--doc": doc, **(files or {})}
    taken: dict[Path, str] = {}  # resolved output path -> the option that writes it
    folder = None
    if out is not None:
        folder = resolved("--out", out)
        if not can_write_dir(folder):
            refuse(f"--out={out!r} is, or lies under, a file, or cannot be written; expected a directory (made if "
                   "missing)")
        taken = {folder: "--out", **{folder / name: "--out" for name in out_files}}
    def owner(path: Path) -> str | None:
        """The option already writing `path`, a folder under it, a file above it, or the same file."""
        for t, flag in taken.items():
            if (path == t or path in t.parents or (t != folder and t in path.parents)
                    or (path.exists() and t.exists() and os.path.samefile(path, t))):
                return flag
        return None

    for flag, value in targets.items():
        if value is None:
            continue
        path = resolved(flag, value)
        clash = owner(path)
        if clash:
            other = f"{clash}={out if clash == '--out' else targets[clash]!r}"
            refuse(f"{flag}={value!r} is where {other} writes; expected another file")
        if (path.exists() and not path.is_file()) or not can_write_dir(path.parent):
            refuse(f"{flag}={value!r}: expected a regular file (made if missing, with its folder) where a file "
                   "can be written")
        if flag == "--doc" and path.exists():
            try:
                path.read_text()
            except (UnicodeDecodeError, OSError) as err:
                refuse(f"--doc={value!r} cannot be read back as UTF-8 text ({err}); expected a markdown file")
        taken[path] = flag
    if doc_key is not None:
        if not doc_key.strip():
            refuse(f"--doc-key={doc_key!r} is empty; expected the section's key, or no --doc-key for the default")
        if bad_doc_key(doc_key):
            refuse(f"--doc-key={doc_key!r} {bad_doc_key(doc_key)}")
        if doc is None:
            refuse(f"--doc-key={doc_key!r} acts only with --doc")
    elif doc is not None and default_key is not None and bad_doc_key(default_key):
        refuse(f"--doc={doc!r}: the section's default key, {default_key!r}, {bad_doc_key(default_key)}; give "
               "--doc-key")


def update_doc(path: Path, key: str, body: str) -> None:
    """Put `body` into the markdown file `path` between markers named by `key`, replacing an earlier
    run of the same key: docs/benchmarks.md is assembled from tool output, never typed by hand.

    Raises `ValueError` for a key the markers cannot hold (`bad_doc_key`), before the file is read."""
    problem = bad_doc_key(key)
    if problem:
        raise ValueError(f"doc key {key!r} {problem}")
    start, end = f"<!-- accel-bench:{key} -->", f"<!-- /accel-bench:{key} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def write_all(result: BenchResult, out_dir: Path, command: str | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "md": out_dir / "results.md"}
    data = result.to_json()
    data["command"] = command
    paths["json"].write_text(json.dumps(data, indent=2, default=str))
    write_csv(result, paths["csv"])
    paths["md"].write_text(markdown(result, command))
    plot = out_dir / "pareto.png"
    if write_plot(result, plot):
        paths["plot"] = plot
    return paths
