"""Models tab: the base model, the adapter table, and load / unload / delete / upload / rescan."""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pandas as pd

from kernel.errors import ArenaError
from models.adapters import validate_name
from models.upload import install_adapter

from .access import Need, needs
from .settings import AppContext
from .widgets import user_errors

COLUMNS = ["name", "status", "reason", "note", "served_by", "step", "epoch", "train_loss", "eval_loss", "rank",
           "alpha", "target_modules", "carries", "trainable_parameters", "base", "created", "dataset"]
# Widths by column, so a narrow page scrolls the table instead of wrapping a header into one letter a line.
WIDTHS = {"name": "150px", "status": "90px", "reason": "280px", "note": "280px", "step": "70px", "epoch": "70px", "train_loss": "90px",
          "eval_loss": "90px", "served_by": "110px", "rank": "70px", "alpha": "70px",
          "target_modules": "170px", "trainable_parameters": "170px", "base": "220px", "created": "170px",
          "dataset": "150px"}
FILE_TYPES = [".zip", ".json", ".safetensors", ".md"]


class ModelsTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def build(self) -> gr.Tab:
        public = self.ctx.settings.public
        with gr.Tab("Models", id="models") as self.tab:
            self.base_info = gr.Markdown(self._base_markdown())
            # Plain-text cells: reasons and config fields come from adapter files and must never become HTML.
            self.table = gr.Dataframe(self._table(), label="Adapters", interactive=False, wrap=True, datatype="str",
                                      column_widths=[WIDTHS.get(c, "140px") for c in COLUMNS], elem_id="models-table")
            with gr.Row(visible=not public):
                self.choice = gr.Dropdown(self._names(), label="Adapter", scale=3)
                self.load = gr.Button("Load")
                self.unload = gr.Button("Unload")
                self.rescan = gr.Button("Rescan folders")
            with gr.Row(visible=not public):
                # For an adapter named for another model whose weights fit: kept in DATA/adapter_decisions.json.
                self.serve_anyway = gr.Button("Serve anyway")
                self.do_not_serve = gr.Button("Do not serve")
                self.forget = gr.Button("Forget decision")
            with gr.Row(visible=not public):
                self.confirm = gr.Checkbox(label="Yes, move this adapter to the trash folder", value=False)
                self.delete = gr.Button("Delete", variant="stop")
            with gr.Accordion("Upload an adapter", open=False, visible=not public):
                gr.Markdown(f"A .zip of a PEFT LoRA folder, or `adapter_config.json` + `adapter_model.safetensors`. "
                            f"At most {self.ctx.settings.max_upload_mb} MB. It is checked against the base before it is accepted.")
                with gr.Row():
                    # A button, not a drop zone: each choice replaces the files, never piles onto the last ones.
                    self.choose = gr.UploadButton("Choose a .zip or the adapter files", file_count="multiple",
                                                  file_types=FILE_TYPES, elem_id="models-choose")
                    self.files = gr.File(file_count="multiple", label="Files to install", interactive=False,
                                         elem_id="models-files")
                self.new_name = gr.Textbox(label="Adapter name", placeholder="my-adapter (a .zip's name by default)",
                                           elem_id="models-name")
                self.install = gr.Button("Install", variant="primary", elem_id="models-install")
            self.status = gr.Markdown(elem_id="models-status")
        self._wire()
        return self.tab

    def _wire(self) -> None:
        refreshed = [self.table, self.choice, self.base_info, self.status]
        note = dict(show_progress_on=self.status)  # a refusal: a toast and the note, never over the table
        self.tab.select(self._on_select, None, refreshed, api_visibility="private", **note)
        self.load.click(self._act(self.ctx.engine.load_adapter, "loaded", "loading adapters"), self.choice, refreshed,
                        api_name="models_load", **note)
        self.unload.click(self._act(self.ctx.engine.unload_adapter, "unloaded", "unloading adapters"), self.choice,
                          refreshed, api_name="models_unload", **note)
        self.rescan.click(self._rescan, None, refreshed, api_name="models_rescan", **note)
        for button, decision in ((self.serve_anyway, "serve anyway"), (self.do_not_serve, "do not serve"),
                                 (self.forget, None)):
            button.click(self._decider(decision), self.choice, refreshed,
                         api_name=f"models_decide_{(decision or 'forget').replace(' ', '_')}", **note)
        self.delete.click(self._delete, [self.choice, self.confirm], refreshed + [self.confirm], api_name="models_delete",
                          **note)
        self.choose.upload(self._chosen, self.choose, [self.files, self.new_name], api_name="models_choose", **note)
        self.install.click(self._install, [self.files, self.new_name], refreshed + [self.files, self.new_name],
                           api_name="models_install", **note)

    @needs(Need.VIEW)
    def _on_select(self):
        return self._refresh("")

    def _refresh(self, message: str):
        return [self._table(), gr.Dropdown(choices=self._names()), self._base_markdown(), message]

    def _act(self, action, verb: str, what: str):
        @needs(Need.OPERATOR, what)
        @user_errors
        def run(name: str | None):
            if not name:
                raise ArenaError("pick an adapter first")
            action(name)
            info = {a.name: a for a in self.ctx.engine.adapters()}.get(name)
            if info is not None and info.status == "failed":
                return self._refresh(f"**{name}** failed: {info.reason}")
            return self._refresh(f"**{name}** {verb}.")
        return run

    def _decider(self, decision: str | None):
        @needs(Need.OPERATOR, "deciding which adapters serve")
        @user_errors
        def decide(name: str | None):
            if not name:
                raise ArenaError("pick an adapter first")
            info = self.ctx.engine.decide(name, decision)
            said = f"marked '{decision}'" if decision else "back to the usual check"
            return self._refresh(f"**{name}** {said}: {info.status}" + (f" ({info.reason})" if info.reason else "."))
        return decide

    @needs(Need.OPERATOR, "rescanning adapter folders")
    @user_errors
    def _rescan(self):
        adapters = self.ctx.engine.rescan()
        failed = sum(a.status == "failed" for a in adapters)
        return self._refresh(f"Rescanned: {len(adapters)} adapters, {failed} failed.")

    @needs(Need.OPERATOR, "deleting adapters")
    @user_errors
    def _delete(self, name: str | None, confirmed: bool):
        if not name:
            raise ArenaError("pick an adapter first")
        if not confirmed:
            raise ArenaError("tick the confirmation box to delete")
        trash = self.ctx.engine.delete_adapter(name)
        return self._refresh(f"**{name}** moved to `{trash}`.") + [False]

    @needs(Need.OPERATOR, "uploading adapters")
    @user_errors
    def _chosen(self, files):
        """The files just chosen replace the list; a .zip names the adapter unless the name box says otherwise."""
        paths = [str(f if isinstance(f, str) else f.name) for f in files or []]
        zips = [Path(p) for p in paths if p.lower().endswith(".zip")]
        return paths or None, name_from_zip(zips[0]) if len(zips) == 1 else gr.skip()

    @needs(Need.OPERATOR, "uploading adapters")
    @user_errors
    def _install(self, files, name: str):
        if not files:
            raise ArenaError("choose a .zip or the two adapter files first")
        paths = [Path(f if isinstance(f, str) else f.name) for f in files]
        info = install_adapter(self.ctx.engine, (name or "").strip(), paths,
                               max_bytes=self.ctx.settings.max_upload_mb * 2**20)
        return self._refresh(f"**{info.name}** installed and {info.status}.") + [None, ""]

    def _names(self) -> list[str]:
        return [a.name for a in self.ctx.engine.adapters()]

    def _table(self) -> pd.DataFrame:
        rows = [a.to_row() for a in self.ctx.engine.adapters()]
        return pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)

    def _base_markdown(self) -> str:
        info = self.ctx.engine.info()
        notes = "".join(f"\n\n> {note}" for note in info["notes"])
        saved = f" ({info['memory_saved_mb']:.0f} MB saved by quantization)" if info["memory_saved_mb"] else ""
        kv_cache = f" · KV cache: {info['kv_cache']}" if info.get("kv_cache") else ""
        return (
            f"### Base model: {info['name']}\n"
            f"| parameters | dtype | device | quantization | memory | load time |\n|---|---|---|---|---|---|\n"
            f"| {info['parameters'] / 1e6:.1f}M | {info['dtype']} | {info['device']} | {info['quantization']} "
            f"| {info['memory_mb']:.0f} MB{saved} | {info['load_seconds']:.1f} s |\n\n"
            f"Served by the {info['backend']}{kv_cache} · waiting now: {info['waiting']}{notes}"
        )


def name_from_zip(path: Path) -> str:
    """'My adapter (2).zip' -> 'My-adapter-2': the zip's name made into a valid adapter name, or '' if none."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:64]
    try:
        return validate_name(name)
    except ArenaError:
        return ""
