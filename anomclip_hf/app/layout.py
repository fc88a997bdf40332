"""The Gradio page of `anomclip app`, wired to a Workspace (the only app module that imports gradio).

One page, top to bottom: the base; 1. fit (or load an adapter); 2. inspect (test images, threshold
slider, gallery, table, large view); 3. download and push. Handlers turn bad input into a message on the
page (never a traceback) and list every file that could not be used.
"""


import html
import os
from types import SimpleNamespace
from typing import Optional

from ..model.decisions import DEFAULT_SENSITIVITY, threshold_for_sensitivity
from ..model.embedded_base import EMBEDDED_BACKBONE
from .results import ScoredSet, large_view, write_scores_csv
from .workspace import BusyError, Workspace

USER_ERRORS = (ValueError, OSError, ImportError, BusyError)


def error_text(error: Exception) -> str:
    return f"**Error:** {error}"


def files_text(title: str, rejected) -> str:
    """A Markdown list of the files that could not be used (empty when there are none)."""
    if not rejected:
        return ""
    lines = "\n".join(f"- `{name}`: {html.escape(why)}" for name, why in rejected)
    count = f"1 {title.replace('files', 'file')}" if len(rejected) == 1 else f"{len(rejected)} {title}"
    return f"\n\n**{count}:**\n{lines}"


def banner_text(workspace: Workspace) -> str:
    if workspace.base.model is None:
        return f"### No base model loaded\n{workspace.base.message}"
    if workspace.pipeline_check:
        return (f"### PIPELINE CHECK: base {EMBEDDED_BACKBONE} (random weights)\nEvery score, map and decision on "
                "this page checks the pipeline only; it is not a detection result.")
    return f"### Base: {workspace.base.name}"


def summary_text(scored: ScoredSet, threshold: float) -> str:
    text = (f"**{scored.anomalous(threshold)}** of {len(scored.images)} images anomalous at threshold "
            f"{threshold:.4f}")
    if scored.stored_threshold is not None:
        text += f" (stored threshold {scored.stored_threshold:.4f})"
    return f"PIPELINE CHECK, not a detection result. {text}" if scored.pipeline_check else text


def table_html(scored: ScoredSet, threshold: float) -> str:
    """The scores as an HTML table (classes name/score/normalized/decision per cell), as scores.csv has them."""
    head = ("<tr><th>image</th><th>score</th><th>normalised (stored threshold: 0.5)</th><th>decision</th></tr>")
    rows = []
    for row in scored.rows(threshold):
        normalized = "" if row["normalized_score"] is None else f"{row['normalized_score']:.6f}"
        rows.append(f"<tr><td class='name'>{html.escape(row['name'])}</td><td class='score'>{row['image_score']:.6f}"
                    f"</td><td class='normalized'>{normalized}</td><td class='decision'>{row['decision']}</td></tr>")
    note = "<p><b>PIPELINE CHECK</b>, not a detection result</p>" if scored.pipeline_check else ""
    return f"{note}<table class='anomclip-scores'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def gallery_items(scored: ScoredSet, threshold: float) -> list[tuple[str, str]]:
    prefix = "PIPELINE CHECK | " if scored.pipeline_check else ""
    items = []
    for image, row in zip(scored.images, scored.rows(threshold)):
        normalized = "" if row["normalized_score"] is None else f" | normalised {row['normalized_score']:.3f}"
        items.append((image.thumbnail, f"{prefix}{image.name} | score {image.score:.4f}{normalized} | "
                                     f"{row['decision'].upper()}"))
    return items


def _gr():
    import gradio  # only this module imports gradio, and only when the page is built or used

    return gradio


class PageHandlers:
    """What the page's buttons, slider and gallery do: each returns the new values of the components it
    updates (Gradio's handler contract), with user errors shown as text on the page, never raised."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    def on_sensitivity(self, scored: Optional[ScoredSet], sensitivity: float):
        """The threshold slider's value for a sensitivity over the stored threshold (`model.decisions`, the
        mapping predict, serve and the ONNX runtime use); unchanged without a stored threshold."""
        stored = scored.stored_threshold if scored is not None else None
        if stored is None and self.workspace.category:
            try:
                stored = self.workspace.model.get_category(self.workspace.category).metadata.get("decision_threshold")
            except (ValueError, KeyError):  # no base loaded, or the category is gone: nothing to move
                stored = None
        if stored is None:
            return _gr().update()
        return _gr().update(value=min(threshold_for_sensitivity(sensitivity, stored), 1.0))  # the slider's range

    def decide(self, scored: Optional[ScoredSet], threshold: float):
        """(summary, gallery, table, scores.csv button) at `threshold`: no scoring, only decisions."""
        if scored is None or not scored.images:
            return "", [], "", _gr().update(value=None, interactive=False)
        folder = self.workspace.new_folder("decisions")
        csv_path = write_scores_csv(scored, threshold, os.path.join(folder, "scores.csv"))
        return (summary_text(scored, threshold), gallery_items(scored, threshold), table_html(scored, threshold),
                _gr().update(value=csv_path, interactive=True))

    def on_base(self, base: str):
        try:
            message = self.workspace.set_base(base)
        except USER_ERRORS as error:
            message = error_text(error)
        return banner_text(self.workspace), message

    def on_embedded(self):
        return self.on_base(EMBEDDED_BACKBONE)

    def adapter_download(self):
        return _gr().update(value=self.workspace.adapter_zip(), interactive=True)

    def on_fit(self, files, server_folder, category, class_name, epochs, progress):
        def report(epoch: int, total: int, logs: dict):
            progress((epoch, total), desc=f"training epoch {epoch}/{total}", unit="epochs")

        try:
            progress(0, desc="reading the references")
            outcome = self.workspace.fit(files or [], (category or "").strip(), server_folder=server_folder or "",
                                    class_name=class_name or "", epochs=int(epochs or 0), progress=report)
            download = self.adapter_download()
        except USER_ERRORS as error:
            return error_text(error), _gr().update(), _gr().update()
        stored = ("no stored threshold (it needs 2 or more references): set the threshold slider"
                  if outcome.threshold is None else f"stored threshold **{outcome.threshold:.4f}**")
        text = self.workspace.label(f"Fitted category `{outcome.category}` on {outcome.shots} references, "
                               f"{outcome.epochs} epochs: {stored}.")
        threshold = _gr().update() if outcome.threshold is None else _gr().update(value=outcome.threshold)
        return text + files_text("files not used", outcome.rejected), threshold, download

    def on_load_adapter(self, source: str):
        try:
            message = self.workspace.load_adapter(source)
            threshold = self.workspace.model.get_category(self.workspace.category).metadata.get("decision_threshold")
            download = self.adapter_download()
        except USER_ERRORS as error:
            return error_text(error), _gr().update(), _gr().update()
        return message, _gr().update() if threshold is None else _gr().update(value=threshold), download

    def on_score(self, files, threshold):
        try:
            scored = self.workspace.score(files or [])
        except USER_ERRORS as error:
            return (None, error_text(error), _gr().update(), *self.decide(None, threshold))
        if scored.stored_threshold is not None:
            threshold = scored.stored_threshold
        status = self.workspace.label(f"{len(scored.images)} images scored with category `{scored.category}`.")
        status += files_text("files could not be scored", scored.failures)
        return (scored, status, _gr().update(value=threshold), *self.decide(scored, threshold))

    def on_select(self, scored: Optional[ScoredSet], threshold: float, event):
        if scored is None or not scored.images:
            return None, ""
        index = event.index if isinstance(event.index, int) else event.index[0]
        return large_view(scored, index, threshold), gallery_items(scored, threshold)[index][1]

    def on_push(self, repo_id: str, token: str, private: bool):
        try:
            return self.workspace.push(repo_id, token, private)
        except USER_ERRORS as error:
            return error_text(error)


def _fit_and_share_column(gr, workspace: Workspace) -> SimpleNamespace:
    """Sections 1 (fit or load a category) and 3 (downloads, push)."""
    with gr.Column(scale=2):
        gr.Markdown("## 1. Fit a category on good images")
        references = gr.File(label="Good (normal) images", file_count="multiple", type="filepath",
                             height=150, elem_id="references")
        server_folder = gr.Textbox(label="... or a folder of good images on the server", elem_id="server-folder",
                                   visible=workspace.allow_server_folders)
        with gr.Row():
            category = gr.Textbox("part", label="Category name", elem_id="category")
            class_name = gr.Textbox(label="Class name (default: the category)", elem_id="class-name")
            epochs = gr.Number(10, label="Epochs", precision=0, minimum=1, elem_id="epochs")
        fit = gr.Button("Fit", variant="primary", elem_id="fit")
        fit_status = gr.Markdown(elem_id="fit-status")
        with gr.Row():
            adapter_source = gr.Textbox(label="... or load an adapter (folder or Hub repo id)",
                                        elem_id="adapter-source", scale=3)
            load_adapter = gr.Button("Load adapter", elem_id="load-adapter", scale=1)

        gr.Markdown("## 3. Download and share")
        with gr.Row():
            scores_csv = gr.DownloadButton("scores.csv", interactive=False, elem_id="download-scores")
            adapter_zip = gr.DownloadButton("adapter (.zip)", interactive=False, elem_id="download-adapter")
        repo_id = gr.Textbox(label="Hub repo id", placeholder="user/anomclip-bracket", elem_id="repo-id")
        with gr.Row():
            token = gr.Textbox(label="Hub token (optional: default HF_TOKEN or `hf auth login`)",
                               type="password", elem_id="hub-token", scale=3)
            private = gr.Checkbox(label="private repo", elem_id="hub-private", scale=1)
        push = gr.Button("Push the adapter to the Hub", elem_id="push")
        push_status = gr.Markdown(elem_id="push-status")
    return SimpleNamespace(
        references=references, server_folder=server_folder, fit=fit, fit_status=fit_status, repo_id=repo_id,
        push=push, push_status=push_status, category=category, class_name=class_name, epochs=epochs,
        adapter_source=adapter_source, load_adapter=load_adapter, scores_csv=scores_csv,
        adapter_zip=adapter_zip, token=token, private=private)


def _inspect_column(gr) -> SimpleNamespace:
    """Section 2: score test images, the threshold slider, gallery, table and large view."""
    with gr.Column(scale=3):
        gr.Markdown("## 2. Inspect test images")
        test_images = gr.File(label="Test images", file_count="multiple", type="filepath", height=150,
                              elem_id="test-images")
        score = gr.Button("Score", variant="primary", elem_id="score")
        score_status = gr.Markdown(elem_id="score-status")
        threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.000001, label="Decision threshold (anomalous at or "
                              "above; moving it re-decides without scoring again)", elem_id="threshold")
        sensitivity = gr.Slider(0.0, 1.0, value=DEFAULT_SENSITIVITY, step=0.01, label="Sensitivity over the stored "
                                "threshold (0.5: the stored one; higher flags more; sets the threshold above)",
                                elem_id="sensitivity")
        summary = gr.Markdown(elem_id="summary")
        gallery = gr.Gallery(label="Image | heat map | predicted defect; click one to enlarge",
                             columns=3, height=260, object_fit="contain", allow_preview=False,
                             elem_id="gallery")
        table = gr.HTML(elem_id="scores-table")
        large = gr.Image(label="Selected image, at the slider's threshold", type="pil", interactive=False,
                         height=300, elem_id="large-view")
        large_caption = gr.Markdown(elem_id="large-caption")
    return SimpleNamespace(
        test_images=test_images, score=score, score_status=score_status, threshold=threshold,
        sensitivity=sensitivity, summary=summary,
        gallery=gallery, table=table, large=large, large_caption=large_caption)


def build_app(workspace: Workspace):
    """The gr.Blocks page of `workspace` (not launched)."""
    import gradio as gr

    on = PageHandlers(workspace)

    # Gradio injects the progress tracker and the selection event by the parameters' default and annotation.
    def on_fit(files, server_folder, category, class_name, epochs, progress=gr.Progress()):
        return on.on_fit(files, server_folder, category, class_name, epochs, progress)

    def on_select(scored: Optional[ScoredSet], threshold: float, event: gr.SelectData):
        return on.on_select(scored, threshold, event)

    with gr.Blocks(title="anomclip: few-shot anomaly detection", analytics_enabled=False) as app:
        scored_state = gr.State(None)
        banner = gr.Markdown(banner_text(workspace), elem_id="banner")
        with gr.Row():
            base_box = gr.Textbox(workspace.base.name, label="Base: a CLIP (or AnomCLIP) Hub id or folder",
                                  elem_id="base", scale=4)
            load_base = gr.Button("Load base", elem_id="load-base", scale=1)
            use_embedded = gr.Button("Use the embedded random base (PIPELINE CHECK)", elem_id="use-embedded", scale=1)
        base_status = gr.Markdown(elem_id="base-status")

        with gr.Row():
            left = _fit_and_share_column(gr, workspace)
            right = _inspect_column(gr)
        decided = [right.summary, right.gallery, right.table, left.scores_csv]
        load_base.click(on.on_base, [base_box], [banner, base_status])
        use_embedded.click(on.on_embedded, None, [banner, base_status])
        left.fit.click(on_fit, [left.references, left.server_folder, left.category, left.class_name, left.epochs],
                       [left.fit_status, right.threshold, left.adapter_zip], concurrency_limit=1)
        left.load_adapter.click(on.on_load_adapter, [left.adapter_source],
                                [left.fit_status, right.threshold, left.adapter_zip])
        right.score.click(on.on_score, [right.test_images, right.threshold],
                          [scored_state, right.score_status, right.threshold, *decided])
        right.threshold.change(on.decide, [scored_state, right.threshold], decided)
        right.sensitivity.release(on.on_sensitivity, [scored_state, right.sensitivity], [right.threshold])
        right.gallery.select(on_select, [scored_state, right.threshold], [right.large, right.large_caption])
        left.push.click(on.on_push, [left.repo_id, left.token, left.private], [left.push_status])
    return app
