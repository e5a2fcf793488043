"""Training end to end on the synthetic set: learning, resume, determinism, divergence, eval."""

import json

import pytest
import torch
import yaml
from conftest import finished_files, metric_rows, tiny

from softmaso import devices, rundir, training
from softmaso.errors import UserError


def test_synthetic_training_learns_above_chance(tmp_path):
    res = training.fit(tiny(), tmp_path / "run", device="cpu")
    assert res["status"] == "finished" and res["epochs"] == 3
    assert res["final_test_acc"] > 0.3  # chance is 0.1
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == finished_files()
    row = metric_rows(tmp_path / "run")[-1]
    assert set(row) >= {"epoch", "train_loss", "train_acc", "test_acc", "ortho_error", "lr"}
    assert len(row["ortho_error"]) == 8
    env = json.loads((tmp_path / "run" / rundir.ENV).read_text())
    assert env["device"]["type"] == "cpu" and env["torch"] == torch.__version__


def test_finished_run_is_not_redone(tmp_path):
    cfg = tiny(**{"train.epochs": 1})
    first = training.fit(cfg, tmp_path, device="cpu")
    again = training.fit(cfg, tmp_path, device="cpu")
    assert again["skipped"] and again["final_test_acc"] == first["final_test_acc"]


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny(**{"ortho.mode": "penalty"})
    training.fit(cfg, tmp_path / "straight", device="cpu")

    real_evaluate, calls = training.evaluate, {"n": 0}

    def interrupting(s, split="test"):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C during the second epoch's evaluation
            raise KeyboardInterrupt
        return real_evaluate(s, split)

    monkeypatch.setattr(training, "evaluate", interrupting)
    with pytest.raises(KeyboardInterrupt):
        training.fit(cfg, tmp_path / "resumed", device="cpu")
    assert not (tmp_path / "resumed" / rundir.RESULT).exists()
    assert len(metric_rows(tmp_path / "resumed")) == 1  # epoch 1 was saved, epoch 2 was not
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    res = training.fit(cfg, tmp_path / "resumed", device="cpu")
    assert res["status"] == "finished"
    assert metric_rows(tmp_path / "resumed") == metric_rows(tmp_path / "straight")


def test_divergence_stops_with_status_diverged(tmp_path, monkeypatch):
    from softmaso.models import LargeCNN

    forward = LargeCNN.forward
    monkeypatch.setattr(LargeCNN, "forward", lambda self, x: forward(self, x) * float("nan"))
    res = training.fit(tiny(), tmp_path, device="cpu")
    assert res["status"] == "diverged" and res["epochs"] == 0
    assert json.loads((tmp_path / rundir.RESULT).read_text())["status"] == "diverged"
    with pytest.raises(UserError, match="diverged in epoch 1, before any checkpoint"):
        training.evaluate_saved(tmp_path, device="cpu")


def test_eval_reproduces_the_logged_accuracy_and_rejects_bad_checkpoints(tmp_path):
    res = training.fit(tiny(**{"train.epochs": 2}), tmp_path / "run", device="cpu")
    ev = training.evaluate_saved(tmp_path / "run", device="cpu")
    assert ev["test_acc"] == pytest.approx(res["final_test_acc"], abs=1e-9)

    good = (tmp_path / "run" / rundir.CHECKPOINT).read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    for name, says in (
        ("trunc.pt", "corrupt or truncated checkpoint .torch cannot read it.$"),
        ("foreign.pt", "not a softmaso"),
        ("text.pt", "not a checkpoint .checkpoint.pt files are zip archives.$"),
        ("missing.pt", "not found"),
    ):
        with pytest.raises(UserError, match=says):
            training.evaluate_saved(tmp_path / name, device="cpu")
    with pytest.raises(UserError, match="not a run directory"):
        training.evaluate_saved(tmp_path, device="cpu")


def test_a_run_dir_holds_one_config(tmp_path):
    one = tiny(**{"train.epochs": 1})
    training.fit(one, tmp_path, device="cpu")
    other = one.with_overrides(**{"optim.lr": 0.01})
    with pytest.raises(
        UserError, match=r"config \(optim.lr: 0.003 there, 0.01 here\); it is a fin"
    ):
        training.fit(other, tmp_path, device="cpu")
    (tmp_path / rundir.RESULT).unlink()  # unfinished: resumable with the run's values
    with pytest.raises(UserError, match=r"0.01 here\); choose another run directory, or --set"):
        training.fit(other, tmp_path, device="cpu")
    config = tmp_path / rundir.CONFIG
    text = config.read_text()
    config.write_text(text.replace("  method: cholesky\n", ""))  # a version without the key
    with pytest.raises(
        UserError, match=r"\(ortho.method: not set there, cholesky here\); .*version"
    ):
        training.fit(one, tmp_path, device="cpu")
    config.write_text(yaml.safe_dump(yaml.safe_load(text), sort_keys=True))  # another layout
    rundir.check_unfinished(one, tmp_path)
    for garbled in (b"[not: a config", b"\xff\xfe\x00binary", b"just a string"):
        config.write_bytes(garbled)
        with pytest.raises(UserError, match="cannot be read as a softmaso config"):
            training.fit(one, tmp_path, device="cpu")
    config.unlink()  # gone: the checkpoint's config decides, before anything is written
    with pytest.raises(UserError, match=r"config \(optim.lr: 0.003 there, 0.01 here\)"):
        training.fit(other, tmp_path, device="cpu")
    assert not config.exists()
    training.fit(one, tmp_path, device="cpu")
    assert config.read_text() == text


def test_exact_orthogonality_trains_and_exports_orthonormal_weights(tmp_path):
    from safetensors.torch import load_file

    cfg = tiny(**{"ortho.mode": "exact", "model.activation": "swish", "train.epochs": 1})
    res = training.fit(cfg, tmp_path, device="cpu")
    assert res["status"] == "finished"
    w = load_file(str(tmp_path / rundir.WEIGHTS))["features.3.0.weight"].flatten(1).double()
    assert torch.allclose(w @ w.T, torch.eye(w.shape[0], dtype=torch.float64), atol=1e-5)
    assert max(metric_rows(tmp_path)[-1]["ortho_error"].values()) < 1e-6


_KEPT = """
import os, sys, torch
from softmaso import fast
if sys.argv[1] == "keep":
    fast.keep_freed_memory()
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss_mib()
blocks = [torch.empty(4 << 20).fill_(1.0) for _ in range(4)]  # 4 x 16 MiB, touched
del blocks
print(rss_mib() - before)  # MiB the freed blocks still hold
"""


def test_cpu_training_keeps_freed_memory_on_glibc():
    import platform
    import subprocess
    import sys

    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    from softmaso import fast

    assert fast.keep_freed_memory() is on_glibc  # mallopt accepted both settings
    if not on_glibc:
        return
    run = [sys.executable, "-c", _KEPT]
    default = float(subprocess.run([*run, "default"], capture_output=True, check=True).stdout)
    keep = float(subprocess.run([*run, "keep"], capture_output=True, check=True).stdout)
    # glibc's defaults map blocks this large on their own and unmap them when freed, so the
    # next step faults them in again; with keep_freed_memory they stay for reuse
    assert default < 16 and keep > 48, (default, keep)


def test_device_errors():
    with pytest.raises(UserError, match="--device"):
        devices.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            devices.resolve_device("cuda:0")


def test_train_and_eval_cli(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {name: synthetic, synthetic_train: 500}\nmodel: {width: 0.125}\n"
        "train: {epochs: 1, eval_batch_size: 100}\n"
    )
    r = cli("train", recipe, "--device", "cpu", "--out", tmp_path / "run", "--seed", "1")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "run" / rundir.RESULT).read_text())
    r = cli("eval", tmp_path / "run", "--json", "--device", "cpu")
    assert r.exit_code == 0 and json.loads(r.stdout)["test_acc"] == pytest.approx(
        result["final_test_acc"]
    )
    r = cli("eval", tmp_path / "run", "--split", "valid")
    assert r.exit_code == 2 and "--split" in r.stderr
    r = cli("train", recipe, "--device", "cpu", "--out", tmp_path / "run", "--seed", "1")
    assert r.exit_code == 0 and "already finished" in r.stdout
    r = cli("train", recipe, "--device", "tpu", "--out", tmp_path / "run", "--seed", "1")
    assert r.exit_code == 2 and "--device" in r.stderr  # checked even when nothing is to do


def test_kill_between_checkpoint_and_metrics_loses_nothing(tmp_path, monkeypatch):
    cfg = tiny(**{"train.epochs": 2})
    real = rundir.write_metrics

    def killed(run_dir, history):
        if len(history) == 2:  # the last epoch's checkpoint is on disk, its metrics are not
            (run_dir / ".metrics.jsonl.half.tmp").write_text("{")  # a writer cut short
            raise KeyboardInterrupt
        real(run_dir, history)

    monkeypatch.setattr(rundir, "write_metrics", killed)
    with pytest.raises(KeyboardInterrupt):
        training.fit(cfg, tmp_path, device="cpu")
    assert len(metric_rows(tmp_path)) == 1 and not (tmp_path / rundir.RESULT).exists()
    monkeypatch.setattr(rundir, "write_metrics", real)
    res = training.fit(cfg, tmp_path, device="cpu")
    assert res["status"] == "finished" and res["epochs"] == 2
    assert [r["epoch"] for r in metric_rows(tmp_path)] == [1, 2]
    assert not list(tmp_path.glob(".*.tmp"))


def test_bf16_autocast_trains_on_a_cpu(tmp_path):
    """train.amp on a CPU: the forward in bf16, the loss and the weights in fp32."""
    fp32 = training.fit(tiny(**{"train.epochs": 1}), tmp_path / "a", device="cpu")
    bf16 = training.fit(
        tiny(**{"train.epochs": 1, "train.amp": True}), tmp_path / "b", device="cpu"
    )
    assert fp32["status"] == bf16["status"] == "finished"
    loss = [metric_rows(tmp_path / d)[0]["train_loss"] for d in ("a", "b")]
    assert loss[0] != loss[1] and abs(loss[0] - loss[1]) < 0.1  # bf16 rounding, same training
    s = training.build(tiny(**{"train.amp": True}), torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in s.model.parameters())


def test_cuda_compiles_unless_the_recipe_or_the_run_says_otherwise():
    """On CUDA a run compiles its steps where the recipe and --set leave train.compile open;
    on a CPU it stays eager; a started run keeps what it started with."""
    from softmaso.config import read_recipe
    from softmaso.recipes import resolve

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    open_cfg = read_recipe(resolve("smoke")).config([])
    assert "compile" not in open_cfg.train.model_fields_set
    assert training.device_defaults(open_cfg, cuda).train.compile is True
    assert training.device_defaults(open_cfg, cpu).train.compile is False
    told = read_recipe(resolve("smoke")).config(["train.compile=false"])
    assert training.device_defaults(told, cuda).train.compile is False
    started = {"train.compile": False}  # a run begun eager (on a CPU, say) resumes eager
    assert training.device_defaults(open_cfg, cuda, started).train.compile is False
    assert training.device_defaults(open_cfg, cpu, {"train.compile": True}).train.compile
