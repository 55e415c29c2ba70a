"""The Gradio side-by-side app: `accel demo` or `python demos/app.py`.

It opens on the trained `digits-video` (a real digit, moving; the task-accuracy column is its judge's),
offers every method that applies to the chosen model and the tuned configurations (`session.Preset`:
the one measured on digits-video, and any `accel demo --config PATH` from `accel tune --out`).
Controls for each method's options are generated from its config dataclass (`MethodConfig.describe`),
so the app offers exactly the options, defaults and ranges that `accel.patch` validates.
"""

from __future__ import annotations

import math
from typing import Any

import accel
from accel import zoo

from .render import TABLE_HEADERS, render
from .session import DEFAULT_MODEL, DemoSession, Preset, Settings, default_presets, default_steps


def _control(gr: Any, method: str, opt: dict[str, Any]) -> Any:
    label = f"{opt['name']} — {opt['help']}"
    if opt["choices"] is not None:
        return gr.Dropdown(list(opt["choices"]), value=opt["default"], label=label)
    if opt["type"] == "bool":
        return gr.Checkbox(value=opt["default"], label=label)
    low, high = opt["low"], opt["high"]
    if opt["type"] == "float" and low is not None and high is not None and math.isfinite(high):
        return gr.Slider(minimum=low, maximum=high, value=opt["default"], label=label)
    return gr.Number(value=opt["default"], precision=0 if opt["type"] == "int" else None, label=label)


def _options(values: list[Any], layout: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Control values back to per-method option dicts, with Gradio's floats turned back into ints."""
    out: dict[str, dict[str, Any]] = {}
    for value, (method, opt) in zip(values, layout, strict=True):
        if opt["type"] == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value != opt["default"]:
            out.setdefault(method, {})[opt["name"]] = value
    return out


def build_app(session: DemoSession | None = None) -> Any:
    import gradio as gr

    session = session or DemoSession()
    infos = [m for m in accel.methods() if m.name != "none"]
    layout: list[tuple[str, dict[str, Any]]] = []
    controls: list[Any] = []

    choices = session.choices(DEFAULT_MODEL, "tiny")
    with gr.Blocks(title="accel: side by side") as app:
        gr.Markdown(
            "# accel: side by side\nThe baseline and the accelerated pipeline run with the same seed. "
            f"`{DEFAULT_MODEL}` is trained here (a real digit, moving as its prompt says): the task accuracy is "
            "its judge's, per generated frame. Other zoo models are offline with small random weights; a local "
            "path or a cached hub id loads a real pipeline."
        )
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    [n for n in zoo.names() if not zoo.is_vlm(n) and not zoo.is_text(n) and n not in zoo.CHUNK_NAMES],
                    value=DEFAULT_MODEL,
                    allow_custom_value=True,
                    label="model (zoo name, local path or cached hub id)",
                )
                size = gr.Radio(["tiny", "bench"], value="tiny", label="zoo size (random-weight entries)")
                methods = gr.CheckboxGroup(choices, value=list(session.presets)[:1] or choices[:1],
                                           label="methods and tuned configurations (those that apply to the model)")
                with gr.Row():
                    steps = gr.Number(value=default_steps(DEFAULT_MODEL), precision=0, label="steps")
                    seed = gr.Number(value=0, precision=0, label="seed")
                    samples = gr.Number(value=Settings().accuracy_n, precision=0,
                                        label="task-accuracy samples (trained models)")
                with gr.Row():
                    height = gr.Number(value=0, precision=0, label="height (0: model default)")
                    width = gr.Number(value=0, precision=0, label="width (0: model default)")
                    frames = gr.Number(value=0, precision=0, label="frames (0: default; video)")
                for info in infos:
                    with gr.Accordion(f"{info.name} options", open=False):
                        gr.Markdown(f"{info.summary} *{info.paper}*")
                        for opt in info.options:
                            controls.append(_control(gr, info.name, opt))
                            layout.append((info.name, opt))
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                outputs = gr.Gallery(
                    label="outputs (baseline first)", columns=4, height="auto", elem_id="outputs"
                )
                figures = gr.Dataframe(
                    headers=TABLE_HEADERS, label="figures", elem_id="figures", interactive=False
                )
                heat = gr.Gallery(
                    label="difference to the baseline", columns=4, height="auto", elem_id="heat"
                )
                stats = gr.JSON(label="method stats")

        def offer(model_v, size_v, chosen):
            """The model changed: offer what applies to it, keep what still does, its own steps."""
            try:
                names = session.choices(str(model_v), size_v)
            except Exception as err:
                raise gr.Error(f"{type(err).__name__}: {err}") from err
            kept = [c for c in chosen or [] if c in names]
            return gr.update(choices=names, value=kept), gr.update(value=default_steps(str(model_v)))

        model.change(offer, [model, size, methods], [methods, steps])

        def compare(model_v, size_v, methods_v, steps_v, seed_v, n_v, h, w, f, *values, progress=gr.Progress()):  # noqa: B008 (Gradio idiom)
            try:
                settings = Settings(
                    str(model_v), size_v, int(steps_v), int(seed_v), _int(h), _int(w), _int(f), int(n_v or 0)
                )
                result = session.compare(
                    settings,
                    list(methods_v or []),
                    _options(list(values), layout),
                    progress=lambda frac, desc: progress(frac, desc=desc),
                )
            except Exception as err:  # shown in the page as a message, never a dead page
                raise gr.Error(f"{type(err).__name__}: {err}") from err
            gallery, heatmaps, rows = render(result)
            return gallery, rows, heatmaps, {r.label: r.stats for r in result.methods}

        run.click(
            compare,
            [model, size, methods, steps, seed, samples, height, width, frames, *controls],
            [outputs, figures, heat, stats],
        )
    app.queue(default_concurrency_limit=1)  # one generation at a time; other users wait in the queue
    return app


def _int(value: Any) -> int | None:
    """Blank or 0 means the model's default."""
    if value in (None, "") or (isinstance(value, float) and math.isnan(value)) or int(value) == 0:
        return None
    return int(value)


def main(host: str = "127.0.0.1", port: int = 7860, configs: tuple[str, ...] = ()) -> None:
    """Serve the app; `configs`: files (or folders) written by `accel tune --out`, offered as presets
    beside the built-in tuned configuration."""
    presets = default_presets() + [Preset.from_file(path) for path in configs]
    build_app(DemoSession(presets)).launch(server_name=host, server_port=port)
