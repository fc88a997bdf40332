"""Hostile input and faults: one test row per root cause.

Each row asserts the exact outcome: the errors.csv row, the error type and the path/field its message
names, or the bytes on disk. Kill tests run real subprocesses. Nothing here touches the network.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomclip_hf.data.files import probe_size
from anomclip_hf.inference.predictor import predict_folder
from anomclip_hf.inference.writers import ERRORS_FILE, MANIFEST_FILE, OVERLAY_DIR, SCORES_FILE
from anomclip_hf.io.image_io import ImageReadError, load_image
from anomclip_hf.io.run_lock import LOCK_FILE, FolderInUseError

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- helpers
def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a few hundred bytes: a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    pixels = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def random_png(path: Path, seed: int, size=(30, 30)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture
def scored_model(tiny_model):
    references = [Image.fromarray(np.random.default_rng(s).integers(0, 255, (30, 30, 3), dtype=np.uint8))
                  for s in range(2)]
    tiny_model.add_category("gizmo", reference_images=references)
    return tiny_model


def _predict(model, images: Path, output: Path):
    return predict_folder(model, str(images), str(output), category="gizmo", progress=False, batch_size=4)


# --------------------------------------------------------------------- A. images and folders (one row each)
def _bomb(folder: Path) -> str:
    png_header_only(folder / "bomb.png", 30000, 30000)  # PIL's own bomb limit (2 x 89 MP) refuses it
    return str(folder / "bomb.png")


def _large(folder: Path) -> str:
    png_header_only(folder / "large.png", 12000, 12000)  # between PIL's warning and error: our limit
    return str(folder / "large.png")


def _undecodable_name(folder: Path) -> str:
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    random_png(Path(os.fsdecode(raw)), seed=9)
    return os.fsencode(folder).decode() + "/caf\\xe9.png"


def _unlistable(folder: Path, monkeypatch) -> str:
    locked = folder / "locked"
    locked.mkdir()
    random_png(locked / "hidden.png", seed=8)
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root ignores chmod 000, so refuse the listing here
    return str(locked)


@pytest.mark.parametrize("make_bad, reason", [
    (_bomb, "decompression bomb"),
    (_large, "12000x12000 pixels, more than the 100,000,000"),
    (_undecodable_name, "not valid UTF-8"),
    (_unlistable, "cannot list folder: Permission denied"),
], ids=["decompression-bomb", "too-many-pixels", "non-utf8-name", "unlistable-subfolder"])
def test_a_bad_file_is_one_errors_row_and_the_rest_are_scored(scored_model, tmp_path, monkeypatch, make_bad, reason):
    images = tmp_path / "images"
    for index in range(3):
        random_png(images / f"good_{index}.png", seed=index)
    arguments = (images, monkeypatch) if make_bad is _unlistable else (images,)
    bad = make_bad(*arguments)
    result = _predict(scored_model, images, tmp_path / "out")
    assert sorted(os.path.basename(p) for p in result.scores) == ["good_0.png", "good_1.png", "good_2.png"]
    rows = read_csv(tmp_path / "out" / ERRORS_FILE)
    assert rows[0] == ["path", "error"] and len(rows) == 2
    assert rows[1][0] == bad and reason in rows[1][1]
    assert len(read_csv(tmp_path / "out" / SCORES_FILE)) == 4  # header + the three good images


def test_a_exif_orientation_is_applied_by_every_reader(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)  # stored landscape 40x20, top-left pixel red
    pixels[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "portrait.png", exif=exif)
    shown = np.asarray(load_image(tmp_path / "portrait.png"))
    assert shown.shape == (40, 20, 3)  # displayed portrait
    assert tuple(shown[0, -1]) == (255, 0, 0)  # clockwise: the top-left corner moves to the top-right
    assert probe_size(str(tmp_path / "portrait.png")) == (20, 40)  # the header check agrees with the decoder
    with Image.open(tmp_path / "portrait.png") as opened:  # an in-memory image is turned the same way
        assert np.array_equal(np.asarray(load_image(opened)), shown)


def test_a_too_many_pixels_fails_before_decoding_with_the_file_name(tmp_path):
    png_header_only(tmp_path / "huge.png", 12000, 12000)
    with pytest.raises(ImageReadError, match=r"huge\.png is 12000x12000 pixels"):
        load_image(tmp_path / "huge.png")
    with pytest.raises(ImageReadError, match=r"huge\.png is 12000x12000 pixels"):
        probe_size(str(tmp_path / "huge.png"))


# ------------------------------------------------------------------------- numeric flags: one rule everywhere
NUMERIC_FLAG_CASES = [
    (["demo", "--epochs", "-1"], "--epochs", "expected an integer >= 0, got '-1'"),
    (["demo", "--shots", "0"], "--shots", "expected an integer >= 1, got '0'"),
    (["fit", "--base", "b", "--references", "r", "--category", "c", "--output", "o", "--shots", "0"],
     "--shots", "expected an integer >= 1, got '0'"),
    (["fit", "--base", "b", "--references", "r", "--category", "c", "--output", "o", "--epochs", "-1"],
     "--epochs", "expected an integer >= 0, got '-1'"),
    (["fit", "--base", "b", "--references", "r", "--category", "c", "--output", "o", "--lr", "nan"],
     "--lr", "expected a finite number >= 0, got 'nan'"),
    (["evaluate", "--base", "b", "--dataset", "mvtec", "--data-root", "d", "--output", "o", "--shots", "0"],
     "--shots", "expected an integer >= 1, got '0'"),
    (["evaluate", "--base", "b", "--dataset", "mvtec", "--data-root", "d", "--output", "o", "--epochs", "-1"],
     "--epochs", "expected an integer >= 0, got '-1'"),
    (["predict", "--base", "b", "--category", "c", "--images", "i", "--output", "o", "--output-size", "4096"],
     "--output-size", "expected an integer from 1 to 2048, got '4096'"),
    (["predict", "--base", "b", "--category", "c", "--images", "i", "--output", "o", "--threshold", "inf"],
     "--threshold", "expected a number greater than 0 and at most 2 (scores are in [0, 1]), got 'inf'"),
]


@pytest.mark.parametrize("argv, flag, message", NUMERIC_FLAG_CASES, ids=[" ".join(c[0][:1] + c[0][-2:])
                                                                         for c in NUMERIC_FLAG_CASES])
def test_numeric_flags_share_one_rule(argv, flag, message, capsys):
    from anomclip_hf.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag, message", [
    (["--shots", "0"], "--shots", "expected an integer >= 1, got '0'"),
    (["--epochs", "-1"], "--epochs", "expected an integer >= 0, got '-1'"),
    (["--lr", "nan"], "--lr", "expected a finite number >= 0, got 'nan'"),
], ids=["shots-0", "epochs-negative", "lr-nan"])
def test_numeric_flags_of_train_script_share_the_rule(argv, flag, message, capsys):
    sys.path.insert(0, str(REPO / "training"))
    try:
        import train
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--base", "b", "--data-root", "d", "--category", "c", "--output-dir", "o",
                                         *argv])
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_nan_in_a_preset_is_refused_naming_the_setting(tmp_path):
    from anomclip_hf.training import TrainingConfig

    with pytest.raises(ValueError, match=r"lr=nan.* not a finite number"):
        TrainingConfig(lr=float("nan"))
    (tmp_path / "bad.yaml").write_text("lr: .nan\n")
    with pytest.raises(ValueError, match=r"lr=nan.* not a finite number"):
        TrainingConfig.from_preset(str(tmp_path / "bad.yaml"))


# ------------------------------------------------------------------------------------ B. outputs of predict
def test_b_a_second_run_on_a_locked_folder_is_refused_naming_it(scored_model, tmp_path):
    random_png(tmp_path / "images" / "a.png", seed=1)
    output = tmp_path / "out"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (output / LOCK_FILE).write_text(f"{holder.pid}\n")
        with pytest.raises(FolderInUseError, match=rf"{output}.* in use .*process {holder.pid}"):
            _predict(scored_model, tmp_path / "images", output)
        assert not (output / SCORES_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over; the lock goes when the run ends
    result = _predict(scored_model, tmp_path / "images", output)
    assert len(result.scores) == 1 and not (output / LOCK_FILE).exists()


def test_b_a_run_removes_what_the_earlier_run_wrote_and_nothing_else(scored_model, tmp_path):
    for name in ("a", "b", "c"):
        random_png(tmp_path / "images" / f"{name}.png", seed=len(name))
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "out"
    _predict(scored_model, tmp_path / "images", output)  # writes a, b, c and errors.csv (broken.png)
    assert (output / ERRORS_FILE).exists()
    (output / OVERLAY_DIR / "sub").mkdir(parents=True)
    (output / OVERLAY_DIR / "sub" / "mine.png").write_bytes(b"mine")  # the user's, in a folder the run uses
    (output / "notes.txt").write_text("mine")
    for name in ("c.png", "broken.png"):
        (tmp_path / "images" / name).unlink()
    _predict(scored_model, tmp_path / "images", output)
    assert sorted(p.name for p in (output / OVERLAY_DIR).rglob("*")) == ["a.png", "b.png", "mine.png", "sub"]
    assert not (output / ERRORS_FILE).exists()  # the earlier run's: recorded in its manifest, so removed
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / OVERLAY_DIR / "sub" / "mine.png").read_bytes() == b"mine"
    assert [row[0] for row in read_csv(output / SCORES_FILE)[1:]] == [str(tmp_path / "images" / n)
                                                                       for n in ("a.png", "b.png")]


def test_b_output_inside_the_input_folder_is_never_scanned(scored_model, tmp_path):
    images = tmp_path / "images"
    random_png(images / "a.png", seed=1)
    for _ in range(2):  # the second run would find the first run's overlays
        result = _predict(scored_model, images, images / "out")
    assert list(result.scores) == [str(images / "a.png")] and not result.failures


def test_b_output_path_that_is_a_file_is_one_clear_oserror(scored_model, tmp_path):
    random_png(tmp_path / "images" / "a.png", seed=1)
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OSError, match=rf"cannot write output folder {tmp_path / 'out'}: it is a file"):
        _predict(scored_model, tmp_path / "images", tmp_path / "out")


def test_b_disk_full_names_the_file_and_leaves_no_torn_csv(scored_model, tmp_path, monkeypatch):
    import anomclip_hf.io.atomic_io as atomic_io

    random_png(tmp_path / "images" / "a.png", seed=1)
    output = tmp_path / "out"
    output.mkdir()
    (output / SCORES_FILE).write_text("path,image_score,decision\nold,1,\n")

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def writerows(self, rows):
            self.handle.write("path,")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_io.csv, "writer", FullDisk)
    with pytest.raises(OSError, match=rf"cannot write scores file {output / SCORES_FILE}.*: No space left on device"):
        _predict(scored_model, tmp_path / "images", output)
    # no partial CSV, no lock stays behind; the scores.csv that no recorded run wrote is left as it was, and the
    # unfinished run's manifest lists what it planned (the next run removes those)
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST_FILE, OVERLAY_DIR, SCORES_FILE]
    assert (output / SCORES_FILE).read_text() == "path,image_score,decision\nold,1,\n"
    manifest = json.loads((output / MANIFEST_FILE).read_text())
    assert manifest["complete"] is False and f"{OVERLAY_DIR}/a.png" in manifest["files"]


# ------------------------------------------------------------------------ C. kill -9 during adapter saves
KILL_LOOP = r'''
import json, os, random, signal, sys, time
import numpy as np, torch
sys.path.insert(0, "tests/helpers")
from tiny_models import perturb_norms, tiny_clip_config
from transformers import CLIPModel
from anomclip_hf import AnomCLIPModel
from anomclip_hf.io import atomic_io
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

root, trials = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = AnomCLIPModel.from_clip(perturb_norms(CLIPModel(tiny_clip_config())).eval(),
                                tokenizer=build_offline_clip_tokenizer(real_vocab=False))
images = [np.random.default_rng(s).integers(0, 255, (30, 30, 3), dtype=np.uint8) for s in range(2)]
model.add_category("gizmo", reference_images=images)
real_rename, exchange = os.rename, atomic_io._exchange
def slow_rename(source, destination):  # widen the window between the two renames of a rename-based swap
    real_rename(source, destination)
    time.sleep(0.003)
os.rename = slow_rename
report = {}
for mode in ("exchange", "backup"):
    # "backup": a platform without renameat2, so the rename-to-backup path and its recovery
    atomic_io._exchange = exchange if mode == "exchange" else (lambda first, second: False)
    target = os.path.join(root, mode, "adapter")
    model.save_category(target)
    expected = sorted(os.listdir(target))
    random.seed(7)
    missing_before_recovery, outcomes = 0, []
    for trial in range(trials):
        child = os.fork()
        if child == 0:
            while True:
                model.save_category(target)
        time.sleep(random.uniform(0.0, 0.06))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        missing_before_recovery += not os.path.isdir(target)
        atomic_io.recover_directory(target)  # what the next save (or load) does first
        complete = os.path.isdir(target) and sorted(os.listdir(target)) == expected
        if complete:
            model.load_category(target)  # it loads
        leftovers = [n for n in os.listdir(os.path.dirname(target)) if n != os.path.basename(target)]
        outcomes.append({"complete": complete, "leftovers": leftovers})
    report[mode] = {"missing_before_recovery": missing_before_recovery, "outcomes": outcomes}
print(json.dumps(report))
'''


def test_c_kill_during_adapter_saves_never_loses_the_adapter(tmp_path):
    """20 kill -9 at random points of a save loop, with the atomic swap and with the rename fallback."""
    import json

    run = subprocess.run([sys.executable, "-c", KILL_LOOP, str(tmp_path), "20"], cwd=REPO, capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    for mode in ("exchange", "backup"):
        assert all(o["complete"] for o in report[mode]["outcomes"]), (mode, report[mode])
        assert all(o["leftovers"] == [] for o in report[mode]["outcomes"]), (mode, report[mode])  # all cleaned
    assert report["exchange"]["missing_before_recovery"] == 0  # the swap has no window at all


# ----------------------------------------------------------------------------------------------- D. training
def fast_config(**overrides):
    from anomclip_hf.training import TrainingConfig

    settings = dict(stage1_epochs=2, stage2_epochs=2, checkpoint_every=0, trackers="none", progress_bar=False)
    return TrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from anomclip_hf.data import generate_mvtec_tree

    return generate_mvtec_tree(str(tmp_path_factory.mktemp("data") / "mvtec"), categories=("widget",), n_train=3,
                               n_test_good=1, n_test_defect=1, image_size=32)


@pytest.fixture(scope="module")
def base_dir(tiny_clip, tmp_path_factory):
    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

    folder = str(tmp_path_factory.mktemp("base"))
    AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False)).save_pretrained(folder)
    return folder


class Killed(Exception):
    pass


def test_d_checkpoints_hold_only_safetensors_and_json_and_resume_is_bitwise_exact(base_dir, train_data, tmp_path):
    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.training import train_category

    job = dict(data_root=train_data, shots=2, seed=1, config=fast_config(checkpoint_every=1))
    straight = AnomCLIPModel.from_pretrained(base_dir)
    train_category(straight, "widget", str(tmp_path / "straight"), **job)

    def kill_after_two(epoch, logs):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train_category(base_dir, "widget", str(tmp_path / "killed"), callbacks=[kill_after_two], **job)
    checkpoint = tmp_path / "killed" / "checkpoints" / "epoch_0002"
    assert sorted(os.listdir(checkpoint)) == ["state.json", "tensors.safetensors"]
    resumed = AnomCLIPModel.from_pretrained(base_dir)
    train_category(resumed, "widget", str(tmp_path / "killed"), resume_from_checkpoint="latest", **job)
    assert torch_equal(resumed.prompt_parameters("widget")[0], straight.prompt_parameters("widget")[0])


def torch_equal(first, second) -> bool:
    import torch

    return first.dtype == second.dtype and bool(torch.equal(first.detach().cpu(), second.detach().cpu()))


def test_d_resume_never_unpickles(base_dir, train_data, tmp_path):
    import pickle

    from anomclip_hf.training import train_category

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    crafted = tmp_path / "crafted"  # accelerate's layout: what the old resume unpickled
    crafted.mkdir()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (crafted / name).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=rf"{crafted} is not a checkpoint of this package: it needs tensors"):
        train_category(base_dir, "widget", str(tmp_path / "job"), data_root=train_data, shots=1,
                       config=fast_config(), resume_from_checkpoint=str(crafted))
    assert not marker.exists()


def test_d_non_finite_loss_stops_the_run_and_saves_nothing(base_dir, train_data, tmp_path):
    from anomclip_hf.training import train_category
    from anomclip_hf.training.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"the loss is (nan|inf) at epoch \d"):
        train_category(base_dir, "widget", str(tmp_path / "job"), data_root=train_data, shots=2,
                       config=fast_config(lr=1e38, min_lr=0.0, checkpoint_every=1))
    assert not (tmp_path / "job" / "adapter").exists() and not (tmp_path / "job" / "summary.json").exists()
    for checkpoint in (tmp_path / "job" / "checkpoints").glob("epoch_*"):  # only epochs with a finite loss
        state = json.loads((checkpoint / "state.json").read_text())
        assert all(math.isfinite(h["loss"]) for h in state["progress"]["history"])


def test_d_summary_never_describes_another_adapter(base_dir, train_data, tmp_path, monkeypatch):
    import anomclip_hf.training.job as job_module
    from anomclip_hf.training import run_grid

    def grid():
        return run_grid(base_dir, "mvtec", train_data, ["widget"], [1], [0], str(tmp_path), config=fast_config())

    (first,) = grid()
    job_dir = Path(first["job_dir"])
    assert first["status"] == "trained" and (job_dir / "summary.json").is_file()

    def killed_before_summary(path, payload):
        raise Killed

    monkeypatch.setattr(job_module, "write_json", killed_before_summary)
    with pytest.raises(Killed):  # a retrain (e.g. fit into the same folder) killed after its adapter save
        job_module.train_category(base_dir, "widget", str(job_dir), data_root=train_data, shots=1,
                                  config=fast_config(lr=0.01))
    assert (job_dir / "adapter" / "category.json").is_file() and not (job_dir / "summary.json").exists()
    monkeypatch.undo()
    (again,) = grid()  # adapter without summary: the job runs again instead of being skipped
    assert again["status"] == "trained"
    stored = json.loads((job_dir / "summary.json").read_text())
    record = json.loads((job_dir / "adapter" / "category.json").read_text())
    assert stored["run_settings"]["lr"] == record["training"]["config"]["lr"] == 0.002


def test_d_rerun_with_other_settings_is_refused_and_keeps_the_adapter(base_dir, train_data, tmp_path):
    from anomclip_hf.training import run_grid

    def grid(**overrides):
        (result,) = run_grid(base_dir, "mvtec", train_data, ["widget"], [1], [0], str(tmp_path),
                             config=fast_config(**overrides))
        return result

    assert grid()["status"] == "trained"
    weights = Path(grid()["adapter_dir"]) / "adapter_model.safetensors"
    before = weights.read_bytes()
    assert grid()["status"] == "skipped"  # same settings: skipped
    refused = grid(lr=0.01)
    assert refused["status"] == "failed"
    assert "refusing to rerun" in refused["error"] and "lr: 0.002 -> 0.01" in refused["error"]
    assert weights.read_bytes() == before


GRID_SCRIPT = r'''
import sys
from anomclip_hf.training import TrainingConfig, run_grid
config = TrainingConfig(stage1_epochs=1, stage2_epochs=1, checkpoint_every=0, trackers="none", progress_bar=False,
                        cpu=True)
# two jobs, one per process: "ghost" does not exist, so the second process fails before the gather
run_grid(sys.argv[1], "mvtec", sys.argv[2], ["widget", "ghost"], [1], [0], sys.argv[3], config=config,
         on_error="raise")
'''


def test_d_a_failing_process_does_not_leave_the_others_waiting(base_dir, train_data, tmp_path):
    """Two ranks started by hand (no launcher that would kill the survivor): before the fix, rank 0 waited
    in gather_object forever; now both end, rank 0 with GridAbortedError naming rank 1's error."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "grid.py"
    script.write_text(GRID_SCRIPT)
    ranks = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        ranks.append(subprocess.Popen([sys.executable, str(script), base_dir, train_data, str(tmp_path / "out")],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        errors = [rank.communicate(timeout=400)[1] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert [rank.returncode != 0 for rank in ranks] == [True, True]
    assert "GridAbortedError: the grid stopped: process 1 failed (DatasetLayoutError: category folder not found" \
        in errors[0]
    assert "DatasetLayoutError: category folder not found" in errors[1] and "ghost" in errors[1]


def test_b_read_only_output_folder_is_one_oserror_naming_it(scored_model, tmp_path, monkeypatch):
    import anomclip_hf.io.run_lock as run_lock

    random_png(tmp_path / "images" / "a.png", seed=1)
    (tmp_path / "out").mkdir()
    real_open = open

    def read_only(path, *args, **kwargs):  # root ignores chmod, so refuse the lock file's creation here
        if str(path).startswith(str(tmp_path / "out")):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_lock, "open", read_only, raising=False)
    with pytest.raises(OSError, match=rf"cannot write output folder {tmp_path / 'out'}.*: Read-only file system"):
        _predict(scored_model, tmp_path / "images", tmp_path / "out")
