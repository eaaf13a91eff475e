"""The Training tab's settings form: one widget per TrainConfig field, presets, and form -> TrainConfig."""
from __future__ import annotations

from dataclasses import dataclass, fields

import gradio as gr

from training.config import FORMATS, METHODS, PREFERENCE_FORMATS, REFERENCES, SCHEDULERS, TrainConfig

from .access import Need, needs

QUICK_CPU_DEMO = dict(method="lora", rank=16, alpha=32, dropout=0.05, target_modules="attention",
                      learning_rate=1e-3, lr_scheduler="cosine", epochs=5.0, max_steps=-1, batch_size=4,
                      grad_accum=1, max_length=256, eval_every=9, early_stopping_patience=0)
NEW = "a new LoRA"  # init_adapter's "none": the other choices are adapter names
OBJECTIVE_LABELS = {"sft": "SFT: imitate the answers", "dpo": "DPO: prefer chosen over rejected",
                    "orpo": "ORPO: SFT + preference, no reference", "kto": "KTO: desirable / undesirable answers"}
CUSTOM = "Custom"
PRESETS = {"Quick CPU demo (a few minutes on the default model)": QUICK_CPU_DEMO, CUSTOM: {}}
FEW_EPOCHS = 2  # below this the demo adapter had not learned its style (it answered "Oh no, no no no…")
EPOCHS_INFO = "the Quick CPU demo needs about 5; 1 is too little for the adapter to learn the style"


@dataclass
class TrainingForm:
    """Widgets keyed by TrainConfig field name, so the form, the CLI and job files stay one schema."""

    widgets: dict[str, gr.components.Component]
    preset: gr.Radio

    @classmethod
    def build(cls, adapters: list[str]) -> "TrainingForm":
        d = TrainConfig(name="x", dataset="x")  # the defaults, one source of truth
        w: dict[str, gr.components.Component] = {}
        with gr.Row():
            w["name"] = gr.Textbox(label="Adapter name", value="ahoy", elem_id="train-name")
            w["objective"] = gr.Dropdown([(label, key) for key, label in OBJECTIVE_LABELS.items()], value=d.objective,
                                         label="Objective", elem_id="train-objective",
                                         info="DPO/ORPO/KTO take preference data: pairs or labelled answers")
            w["format"] = gr.Dropdown(list(dict.fromkeys(FORMATS + PREFERENCE_FORMATS)), value=d.format, label="Format")
            w["init_adapter"] = gr.Dropdown([NEW] + adapters, value=NEW, elem_id="train-init-adapter",
                                            label="Start from (pick an adapter to train a later stage of it)",
                                            info="a picked adapter keeps its own rank, alpha and target modules")
            preset = gr.Radio(list(PRESETS), value=next(iter(PRESETS)), label="Preset")
        with gr.Accordion("Advanced settings", open=False):
            with gr.Row():
                w["method"] = gr.Dropdown(list(METHODS), value="lora", label="Method (QLoRA needs CUDA)")
                w["rank"] = gr.Slider(1, 256, value=QUICK_CPU_DEMO["rank"], step=1, label="Rank r")
                w["alpha"] = gr.Slider(1, 512, value=QUICK_CPU_DEMO["alpha"], step=1, label="Alpha")
                w["dropout"] = gr.Slider(0, 0.5, value=d.dropout, step=0.01, label="LoRA dropout")
                w["target_modules"] = gr.Dropdown(["attention", "all-linear"], value="attention", allow_custom_value=True,
                                                  label="Target modules (preset or comma-separated names)")
            with gr.Row():
                w["learning_rate"] = gr.Number(value=QUICK_CPU_DEMO["learning_rate"], label="Learning rate")
                w["lr_scheduler"] = gr.Dropdown(list(SCHEDULERS), value=d.lr_scheduler, label="Schedule")
                w["warmup_ratio"] = gr.Slider(0, 0.5, value=d.warmup_ratio, step=0.01, label="Warm-up share")
                w["epochs"] = gr.Number(value=QUICK_CPU_DEMO["epochs"], label="Epochs", info=EPOCHS_INFO)
                w["max_steps"] = gr.Number(value=-1, precision=0, label="Max steps (-1 = use epochs)")
            with gr.Row():
                w["batch_size"] = gr.Slider(1, 64, value=d.batch_size, step=1, label="Batch size")
                w["grad_accum"] = gr.Slider(1, 64, value=d.grad_accum, step=1, label="Gradient accumulation")
                w["max_length"] = gr.Slider(32, 4096, value=QUICK_CPU_DEMO["max_length"], step=32, label="Max length (tokens)")
                w["overlong"] = gr.Radio(["truncate", "drop"], value=d.overlong, label="Longer rows")
                w["loss_on"] = gr.Radio(["assistant", "all"], value=d.loss_on, label="Loss on")
            with gr.Row():
                w["packing"] = gr.Checkbox(value=d.packing, label="Packing (else length-grouped batches)")
                w["gradient_checkpointing"] = gr.Checkbox(value=d.gradient_checkpointing, label="Gradient checkpointing")
                w["validation_split"] = gr.Slider(0, 0.5, value=d.validation_split, step=0.01, label="Validation share")
                w["eval_every"] = gr.Number(value=QUICK_CPU_DEMO["eval_every"], precision=0, label="Evaluate every N steps")
                w["early_stopping_patience"] = gr.Number(value=0, precision=0, label="Early-stopping patience (0 = off)")
                w["seed"] = gr.Number(value=d.seed, precision=0, label="Seed")
            with gr.Row():
                w["beta"] = gr.Number(value=d.beta, label="Preference beta (DPO/KTO: KL strength; ORPO: odds-ratio weight)")
                w["reference"] = gr.Radio(list(REFERENCES), value=d.reference,
                                          label="Reference (DPO/KTO): the frozen start adapter (init) or the base")
        form = cls(w, preset)
        # .input, not .change: only a click applies a preset (clicking it again after an edit reapplies it),
        # and an edit of a preset's setting turns the preset to Custom, in the browser (no server call).
        preset.input(form.apply_preset, preset, list(w.values()), api_visibility="private")
        for name in QUICK_CPU_DEMO:
            w[name].input(None, None, preset, js=f"() => {CUSTOM!r}")
        return form

    @property
    def components(self) -> list:
        return list(self.widgets.values())

    def adapter_choices(self, adapters: list[str]) -> gr.Dropdown:
        return gr.Dropdown(choices=[NEW] + adapters)

    @needs(Need.SESSION)
    def apply_preset(self, preset: str):
        values = PRESETS.get(preset, {})
        return [gr.update(value=values[name]) if name in values else gr.update() for name in self.widgets]

    def config(self, data: dict, dataset: str, base: str) -> TrainConfig:
        """The form's values as a TrainConfig (ArenaError names a bad field)."""
        ints = {f.name for f in fields(TrainConfig) if f.type == "int"}
        values = {name: data[widget] for name, widget in self.widgets.items()}
        for name in ints & set(values):
            values[name] = int(values[name])
        values["name"] = (values["name"] or "").strip()
        values["init_adapter"] = None if values["init_adapter"] in (None, "", NEW) else values["init_adapter"]
        return TrainConfig.from_dict({**values, "dataset": dataset, "base": base}, where="training form")


def adapter_source(engine, name: str | None) -> str | None:
    """What a job's init_adapter should say: the name for DATA/adapters, the folder for an extra --adapters-dir."""
    info = next((a for a in engine.adapters() if a.name == name), None) if name else None
    if info is not None and info.path.parent != engine.config.paths.adapters:
        return str(info.path)
    return name
def few_epochs_warning(config: TrainConfig) -> str:
    """A line for the Training tab's note when the run is likely too short to change the answers."""
    if config.max_steps and config.max_steps > 0 or config.epochs >= FEW_EPOCHS:
        return ""
    return (f"**Note:** {config.epochs:g} epoch is likely too little: the demo adapter learns its style in about 5 "
            "(after 1 it answered \"Oh no, no no no…\" until the token limit).")
