"""The train / sample / gradcheck commands end to end, each in a subprocess on tiny sizes."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from graphgrad import checkpoint

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def gg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphgrad.cli", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=120)


def one_line_error(r, *words):
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run with checkpoints, shared by the sample and resume tests."""
    d = tmp_path_factory.mktemp("cli")
    (d / "corpus.txt").write_text("hello world, the quick brown fox. " * 60)
    r = gg("train", "--text", "corpus.txt", "--hidden", 16, "--k1", 10, "--k2", 14, "--batch", 8,
           "--epochs", 2, "--checkpoint", "ck.npz", "--every", 20, "--lr", 0.02, cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r


def test_train_runs_and_checkpoints(trained):
    d, r = trained
    lines = r.stdout.splitlines()
    assert lines[0].startswith("train: 1,836 training / 204 validation characters, vocab 20; "
                               "lstm hidden 16") and "k1=10 k2=14 batch 8" in lines[0]
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all("val loss" in e and "perplexity" in e for e in epochs)
    first, second = (float(e.split("val loss ")[1].split()[0]) for e in epochs)
    assert second < first < np.log(20)
    assert "saved checkpoint ck.npz (step 20, every 20)" in r.stdout
    assert lines[-1] == "saved checkpoint ck.npz (step 46, end of training)"
    _, opt, meta = checkpoint.load(d / "ck.npz")
    assert meta["config"]["hidden_size"] == 16 and meta["vocab"]["chars"].startswith(" ,.")
    assert meta["trainer"]["step"] == 46 and opt["type"] == "Adam"


def test_resume_continues_the_run(trained):
    d, _ = trained
    import shutil
    shutil.copy(d / "ck.npz", d / "ck2.npz")
    r = gg("train", "--text", "corpus.txt", "--hidden", 16, "--k1", 10, "--k2", 14, "--batch", 8,
           "--epochs", 3, "--checkpoint", "ck2.npz", "--resume", "--lr", 0.02, cwd=d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "resuming from ck2.npz: step 46, epoch 3, update 0 of the epoch"
    assert "epoch 3:" in r.stdout and "(step 69, end of training)" in r.stdout
    bad = gg("train", "--text", "corpus.txt", "--hidden", 8, "--checkpoint", "ck2.npz",
             "--resume", cwd=d)
    one_line_error(bad, "graphgrad train: error: checkpoint was saved from a different model")
    other = gg("train", "--text", "corpus.txt", "--hidden", 16, "--k1", 10, "--k2", 14,
               "--optim", "sgd", "--checkpoint", "ck2.npz", "--resume", cwd=d)
    one_line_error(other, "cannot load optimizer state saved by 'Adam'")


def test_resume_options(trained):
    """--lr on resume replaces the checkpoint's (and says so); a finished run says there is
    nothing to train; a mid-epoch checkpoint refuses another --batch, naming it."""
    d, _ = trained
    import shutil
    shutil.copy(d / "ck.npz", d / "ck3.npz")
    common = ["--text", "corpus.txt", "--hidden", 16, "--k1", 10, "--k2", 14, "--checkpoint",
              "ck3.npz", "--resume"]
    done = gg("train", *common, "--batch", 8, cwd=d)          # 2 epochs done, --epochs 1
    assert done.returncode == 0, done.stderr
    assert "nothing to train" in done.stdout and "saved checkpoint" not in done.stdout
    r = gg("train", *common, "--batch", 8, "--epochs", 3, "--max-steps", 50, "--lr", 0.05,
           cwd=d)
    assert r.returncode == 0, r.stderr
    assert "learning rate 0.05 (the checkpoint's was 0.02)" in r.stdout
    assert "adam lr 0.05" in r.stdout and "(step 50, end of training)" in r.stdout
    one_line_error(gg("train", *common, "--batch", 4, "--epochs", 3, cwd=d),
                   "stopped mid-epoch with batch 8", "--batch 8")


def test_a_diverging_run_ends_with_a_checkpoint(tmp_path):
    """A huge learning rate gives a huge but finite loss: perplexity is inf, no crash, and the
    final checkpoint is written."""
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 30)
    r = gg("train", "--text", "corpus.txt", "--hidden", 8, "--k1", 6, "--batch", 4, "--optim",
           "sgd", "--lr", 1e6, "--no-clip", "--max-steps", 20, "--checkpoint", "div.npz",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "perplexity inf" in r.stdout and (tmp_path / "div.npz").exists()


def test_model_files_import_their_neighbours(tmp_path):
    (tmp_path / "helpers.py").write_text("import graphgrad as gg, numpy as np\n"
                                         "def make():\n    return gg.GRU(2, 3, dtype=np.float64)\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "uses.py").write_text("from helpers import make\n")
    r = gg("gradcheck", "--model", str(tmp_path / "uses.py") + ":make", "--T", 2,
           cwd=tmp_path / "models")
    assert r.returncode == 0 and r.stdout.rstrip().splitlines()[-1].startswith("ok"), r.stderr


def test_sample_from_checkpoint(trained):
    d, _ = trained
    r = gg("sample", "ck.npz", "--prefix", "hello", "-n", 40, "--temperature", 0.5, 1.5, cwd=d)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "--- temperature 0.5 ---" and out[1].startswith("hello")
    assert len(out[1]) == 45 and "--- temperature 1.5 ---" in out
    again = gg("sample", "ck.npz", "--prefix", "hello", "-n", 40, "--temperature", 0.5, cwd=d)
    assert again.stdout.splitlines()[0] == out[1]      # same seed, same text
    one_line_error(gg("sample", "ck.npz", "--prefix", "HELLO", cwd=d),
                   "--prefix has characters the model never saw in training: 'EHLO'")
    one_line_error(gg("sample", "ck.npz", "--temperature", 0, cwd=d), "--temperature")


def test_gradcheck_builtin_and_custom(tmp_path):
    r = gg("gradcheck", "--cell", "gru_v1", "--T", 3, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.rstrip().splitlines()[-1].startswith("ok"), r.stdout
    (tmp_path / "mycell.py").write_text(textwrap.dedent("""
        import numpy as np, graphgrad as gg

        def step(p, x, h):
            h = gg.tanh(x @ p["Wx"] + h @ p["Wh"] * gg.sigmoid(h) + p["b"])
            return h, h

        def model():
            rng = np.random.default_rng(0)
            m = gg.Recurrent(step, {"Wx": rng.standard_normal((2, 3)) * .5,
                                    "Wh": rng.standard_normal((3, 3)) * .5, "b": np.zeros(3)})
            return m, rng.standard_normal((4, 2, 2)), np.zeros((2, 3))

        def lstm():
            return gg.LSTM(2, 3, dtype=np.float64)

        def broken():
            raise RuntimeError("boom")
    """))
    r = gg("gradcheck", "--model", "mycell.py:model", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gradcheck mycell.py:model: 18 parameters")
    assert "Wh" in r.stdout and r.stdout.rstrip().splitlines()[-1].startswith("ok")
    assert gg("gradcheck", "--model", "mycell.py:lstm", "--T", 3, cwd=tmp_path).returncode == 0
    one_line_error(gg("gradcheck", "--model", "mycell.py:nope", cwd=tmp_path), "no function 'nope'")
    one_line_error(gg("gradcheck", "--model", "missing.py:f", cwd=tmp_path), "not found")
    one_line_error(gg("gradcheck", "--model", "mycell.py", cwd=tmp_path), "file.py:function")
    one_line_error(gg("gradcheck", "--model", "mycell.py:broken", cwd=tmp_path),
                   "RuntimeError: boom")
    # these describe the built-in model; beside --model they were silently ignored
    one_line_error(gg("gradcheck", "--model", "mycell.py:lstm", "--hidden", 8, "--input", 2,
                      cwd=tmp_path), "--input, --hidden describe the built-in model")


@pytest.mark.parametrize("args,words", [
    (["train", "--k1", "0"], ["--k1", "positive integer"]),
    (["train", "--k1", "5", "--k2", "3"], ["k2 must be an integer >= k1"]),
    (["train", "--cell", "transformer"], ["invalid choice"]),
    (["train", "--lr", "-1"], ["--lr"]),
    (["train", "--val-frac", "1.5"], ["--val-frac"]),
    (["train", "--text", "missing.txt"], ["text file not found: missing.txt"]),
    (["train", "--text", "empty.txt"], ["is empty"]),
    (["train", "--text", "binary.bin"], ["binary"]),
    (["train", "--text", "short.txt"], ["too few"]),
    (["train", "--resume"], ["--resume needs --checkpoint"]),
    (["train", "--checkpoint", "no/such/dir/ck.npz"], ["directory does not exist"]),
    (["train", "--text", "short.txt", "--checkpoint", "adir"],
     ["--checkpoint adir names a directory"]),
    (["train", "--text", "short.txt", "--checkpoint", "adir/"],
     ["--checkpoint adir/ names a directory"]),
    (["compile", "--model", "broken.py:make"], ["broken.py:make raised RuntimeError: boom"]),
    (["train", "--text", "short.txt", "--forget-bias", "1", "--cell", "gru"], ["too few"]),
    (["train", "--text", "short.txt", "--forget-bias", "nan"], ["--forget-bias", "finite"]),
    (["sample", "corrupt.npz"], ["corrupt"]),
    (["sample", "other.npz"], ["other.npz is not a graphgrad checkpoint"]),
    # a text file was reported as a corrupt checkpoint
    (["sample", "short.txt"], ["short.txt is not a graphgrad checkpoint (not an .npz archive)"]),
    (["sample"], ["required: checkpoint"]),
    (["bogus"], ["invalid choice"]),
    (["bench", "--bogus"], ["graphgrad bench: error:", "--bogus"]),
    (["bench", "--", "--cells", "cnn"], ["graphgrad bench: error:", "invalid choice: 'cnn'"]),
    (["demo", "--batch", "100000", "--steps", "1"], ["--batch 100000", "--seq-len"]),
    ([], ["required: COMMAND"]),
])
def test_bad_arguments_and_files(tmp_path, args, words):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(b"\x7fELF\x00\x01\x02")
    (tmp_path / "short.txt").write_text("abc")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    (tmp_path / "adir").mkdir()
    (tmp_path / "broken.py").write_text("def make():\n    raise RuntimeError('boom')\n")
    one_line_error(gg(*args, cwd=tmp_path), *words)


def test_train_backends_agree(tmp_path):
    """`--backend tape` and `--backend compiled` run the same float64 training to the same
    validation losses."""
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 30)
    losses = {}
    for backend in ("tape", "compiled"):
        r = gg("train", "--text", "corpus.txt", "--hidden", 8, "--k1", 6, "--k2", 9, "--batch", 4,
               "--epochs", 1, "--dtype", "float64", "--backend", backend, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"backend {backend}" in r.stdout or backend in r.stdout
        losses[backend] = [float(ln.split("val loss ")[1].split()[0])
                           for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert losses["tape"] and losses["tape"] == pytest.approx(losses["compiled"], rel=1e-6)


def test_help_for_every_command(tmp_path):
    for cmd in ("train", "sample", "gradcheck", "compile", "demo", "bench", "flow"):
        r = gg(cmd, "--help", cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("usage: graphgrad " + cmd), r.stderr
    assert "--quick" in gg("bench", "--help", cwd=tmp_path).stdout
    assert "--k2" in gg("train", "--help", cwd=tmp_path).stdout
    # `python -m graphgrad` is the same command (it was "No module named graphgrad.__main__")
    r = subprocess.run([sys.executable, "-m", "graphgrad", "sample", "--help"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: graphgrad sample"), r.stderr
