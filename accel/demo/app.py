"""The Gradio side-by-side app: `accel demo` or `python demos/app.py`.

Controls for each method's options are generated from its config dataclass (`MethodConfig.describe`),
so the app offers exactly the options, defaults and ranges that `accel.patch` validates.
"""

from __future__ import annotations

import math
from typing import Any

import accel
from accel import zoo

from .render import TABLE_HEADERS, render
from .session import DemoSession, Settings


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

    with gr.Blocks(title="accel: side by side") as app:
        gr.Markdown(
            "# accel: side by side\nThe baseline and the accelerated pipeline run with the same seed. "
            "Zoo models are offline with small weights; a local path or a cached hub id loads a real pipeline."
        )
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    [n for n in zoo.names() if not zoo.is_vlm(n) and not zoo.is_text(n) and n not in zoo.CHUNK_NAMES],
                    value="pixart-alpha",
                    allow_custom_value=True,
                    label="model (zoo name, local path or cached hub id)",
                )
                size = gr.Radio(["tiny", "bench"], value="tiny", label="zoo size")
                names = [m.name for m in infos]
                first = "delta-dit" if "delta-dit" in names else names[0]  # a fixed default, not registration order
                methods = gr.CheckboxGroup(names, value=[first], label="methods")
                with gr.Row():
                    steps = gr.Number(value=10, precision=0, label="steps")
                    seed = gr.Number(value=0, precision=0, label="seed")
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

        def compare(model_v, size_v, methods_v, steps_v, seed_v, h, w, f, *values, progress=gr.Progress()):  # noqa: B008 (Gradio idiom)
            try:
                settings = Settings(
                    str(model_v), size_v, int(steps_v), int(seed_v), _int(h), _int(w), _int(f)
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
            [model, size, methods, steps, seed, height, width, frames, *controls],
            [outputs, figures, heat, stats],
        )
    app.queue(default_concurrency_limit=1)  # one generation at a time; other users wait in the queue
    return app


def _int(value: Any) -> int | None:
    """Blank or 0 means the model's default."""
    if value in (None, "") or (isinstance(value, float) and math.isnan(value)) or int(value) == 0:
        return None
    return int(value)


def main(host: str = "127.0.0.1", port: int = 7860) -> None:
    build_app().launch(server_name=host, server_port=port)
