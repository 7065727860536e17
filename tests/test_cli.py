"""The command line: each subcommand, golden determinism/atomicity/resume, check, user errors."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reflrp.cli import main
from reflrp.golden import read_golden
from zoo import MODELS, feeds, golden

LLAMA = str(MODELS / "llama.onnx")


def run(*argv):
    return main([str(a) for a in argv])


def test_explain_prints_tokens_and_conservation(tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert run("explain", LLAMA, "--input", MODELS / "llama.ref.npz", "--no-color", "--out", out,
               "--html", tmp_path / "h.html", "--png", tmp_path / "h.png") == 0
    text = capsys.readouterr().out
    assert "most relevant tokens" in text and "relevance at inputs" in text and "#5[+1.00]" in text
    rel, meta = read_golden(out)
    assert meta["preset"] == "attnlrp" and rel["inputs_embeds"].shape == (2, 6, 32)
    assert (tmp_path / "h.html").read_text().count('class="tok"') == 12  # every batch row (2 x 6 tokens)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_image_png(tmp_path, capsys):
    assert run("explain", MODELS / "vit.onnx", "--input", MODELS / "vit.ref.npz", "--row", 1,
               "--png", tmp_path / "v.png", "--preset", "cp-lrp") == 0
    assert "most relevant elements" in capsys.readouterr().out
    assert (tmp_path / "v.png").stat().st_size > 1000


def test_plan_and_ops(capsys):
    assert run("plan", MODELS / "gpt2.onnx", "--preset", "cp-lrp") == 0
    text = capsys.readouterr().out
    assert "bilinear-cp" in text and "region" in text and "softmax" in text
    assert run("ops") == 0
    assert "LayerNormalization" in capsys.readouterr().out


def test_verify(capsys):
    assert run("verify", MODELS / "bert.onnx") == 0
    assert "ok" in capsys.readouterr().out


def _inputs_dir(tmp_path, n):
    x = feeds("llama")["inputs_embeds"]
    d = tmp_path / "inputs"
    d.mkdir()
    for i in range(n):
        np.savez(d / f"ex{i:03d}.npz", inputs_embeds=x * (1 + 0.1 * i))
    return d


def test_golden_deterministic_and_resumable(tmp_path):
    inputs = _inputs_dir(tmp_path, 3)
    assert run("golden", LLAMA, "--inputs", inputs, "--out", tmp_path / "a") == 0
    assert run("golden", LLAMA, "--inputs", inputs, "--out", tmp_path / "b") == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["ex000.golden.npz", "ex001.golden.npz", "ex002.golden.npz"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    (tmp_path / "a" / names[1]).unlink()
    before = (tmp_path / "a" / names[0]).stat().st_mtime_ns
    assert run("golden", LLAMA, "--inputs", inputs, "--out", tmp_path / "a") == 0
    assert (tmp_path / "a" / names[0]).stat().st_mtime_ns == before  # complete files are skipped
    assert (tmp_path / "a" / names[1]).read_bytes() == (tmp_path / "b" / names[1]).read_bytes()


def test_golden_killed_midway_leaves_no_partial_file(tmp_path):
    inputs = _inputs_dir(tmp_path, 40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reflrp", "golden", LLAMA, "--inputs", str(inputs), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.golden.npz"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(out.glob("*.golden.npz"))
    assert 3 <= len(written) < 40
    for p in written:  # every file under its final name is complete
        read_golden(p)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert len(list(out.glob("*.golden.npz"))) == 40 and not list(out.glob(".*.part"))


def test_check_passes_on_own_output_and_fails_on_perturbation(tmp_path, capsys):
    gold = tmp_path / "g.npz"
    assert run("explain", LLAMA, "--input", MODELS / "llama.ref.npz", "--out", gold) == 0
    rel, _ = read_golden(gold)
    r = rel["inputs_embeds"]
    np.savez(tmp_path / "same.npz", inputs_embeds=r)
    assert run("check", gold, "--candidate", tmp_path / "same.npz") == 0
    noisy = r * (1 + 1e-3 * np.random.default_rng(0).standard_normal(r.shape))
    np.savez(tmp_path / "noisy.npz", inputs_embeds=noisy)
    assert run("check", gold, "--candidate", tmp_path / "noisy.npz") == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2", "bert"])
def test_check_passes_on_lxt_relevance(tmp_path, name):
    g = golden(name)
    if g is None:
        pytest.skip("no LXT golden")
    gold = tmp_path / "g.npz"
    np.savez(tmp_path / "in.npz", **{k.split(":", 1)[1]: g[k] for k in g.files if k.startswith("inputs:")})
    assert run("explain", MODELS / f"{name}.onnx", "--input", tmp_path / "in.npz", "--out", gold) == 0
    np.savez(tmp_path / "lxt.npz", inputs_embeds=g["attnlrp:relevance"])
    # documented tolerance for LXT 2.1 in float64: 1e-6 relative to the largest relevance
    assert run("check", gold, "--candidate", tmp_path / "lxt.npz", "--rtol", "1e-6") == 0


@pytest.mark.parametrize("argv,needle", [
    (["explain", "/no/such.onnx", "--input", "x.npz"], "no ONNX file"),
    (["explain", LLAMA, "--input", "inputs_embeds"], "bad --input"),
    (["explain", LLAMA, "--input", "nope=x.npy"], "has no input 'nope'"),
    (["explain", LLAMA, "--input", "/no/such.npz"], "does not exist"),
    (["explain", LLAMA, "--input", str(MODELS / "llama.ref.npz"), "--preset", "magic"], "unknown preset"),
    (["explain", LLAMA, "--input", str(MODELS / "llama.ref.npz"), "--target", "5,999"], "out of range"),
    (["explain", LLAMA, "--input", str(MODELS / "vit.ref.npz")], "no array named like an input"),
    (["check", str(MODELS / "llama.ref.npz"), "--candidate", "x.npz"], "not a reflrp golden"),
    (["check", "/no/golden.npz", "--candidate", "x.npz"], "does not exist"),
])
def test_user_errors_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reflrp: error:") and needle in err and err.count("\n") == 1


def test_unreadable_candidate(tmp_path, capsys):
    gold = tmp_path / "g.npz"
    assert run("explain", LLAMA, "--input", MODELS / "llama.ref.npz", "--out", gold) == 0
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["check", str(gold), "--candidate", str(bad)]) == 2
    assert "cannot read candidate file" in capsys.readouterr().err


def test_shape_mismatch(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 6, 16), np.float32))
    argv = ["explain", LLAMA, "--input", f"inputs_embeds={tmp_path / 'x.npy'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "inputs_embeds" in err and "axis 2 must be 32" in err and err.count("\n") == 1
    with pytest.raises(Exception, match="axis 2 must be 32"):  # --debug shows the traceback instead
        main(["--debug"] + argv)


def test_golden_rerun_with_other_options_names_the_change(tmp_path, capsys):
    """A rerun skips a file only when its fingerprint matches; otherwise exit 2 naming what changed."""
    inputs = _inputs_dir(tmp_path, 2)
    out = tmp_path / "g"
    assert run("golden", LLAMA, "--inputs", inputs, "--out", out) == 0
    first = (out / "ex000.golden.npz").read_bytes()
    assert run("golden", LLAMA, "--inputs", inputs, "--out", out, "--preset", "cp-lrp") == 2
    err = capsys.readouterr().err
    assert "preset: 'attnlrp' -> 'cp-lrp'" in err and "--force" in err
    assert run("golden", str(MODELS / "llama_op23.onnx"), "--inputs", inputs, "--out", out) == 2
    assert "model_sha256" in capsys.readouterr().err
    assert (out / "ex000.golden.npz").read_bytes() == first
    assert run("golden", LLAMA, "--inputs", inputs, "--out", out, "--preset", "cp-lrp", "--force") == 0
    _, meta = read_golden(out / "ex000.golden.npz")
    assert meta["preset"] == "cp-lrp" and meta["fingerprint"]["preset"] == "cp-lrp"


def test_golden_bad_input_is_reported_and_the_run_goes_on(tmp_path, capsys):
    inputs = _inputs_dir(tmp_path, 2)
    (inputs / "ex001_bad.npz").write_bytes(b"not a zip")
    np.savez(inputs / "ex001_wrongshape.npz", inputs_embeds=np.zeros((2, 6, 16), np.float32))
    out = tmp_path / "g"
    assert run("golden", LLAMA, "--inputs", inputs, "--out", out) == 1
    err = capsys.readouterr().err
    assert "ex001_bad.npz" in err and "ex001_wrongshape.npz" in err and "axis 2 must be 32" in err
    assert sorted(p.name for p in out.iterdir()) == ["ex000.golden.npz", "ex001.golden.npz"]


def test_golden_files_follow_the_umask(tmp_path):
    import os
    inputs = _inputs_dir(tmp_path, 1)
    old = os.umask(0o022)
    try:
        assert run("golden", LLAMA, "--inputs", inputs, "--out", tmp_path / "g") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "g" / "ex000.golden.npz").stat().st_mode & 0o777 == 0o644


def test_golden_bytes_do_not_depend_on_blas_threads(tmp_path):
    import os
    inputs = _inputs_dir(tmp_path, 2)
    digests = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        cmd = [sys.executable, "-m", "reflrp", "golden", LLAMA, "--inputs", str(inputs), "--out", str(out)]
        assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
        digests.append([p.read_bytes() for p in sorted(out.iterdir())])
    assert digests[0] == digests[1]


def test_explain_flags_mirror_the_python_arguments(tmp_path, capsys):
    np.save(tmp_path / "x.npy", feeds("llama")["inputs_embeds"])
    assert run("explain", LLAMA, "--input", tmp_path / "x.npy", "--rules", "Softmax=identity", "--keep",
               "logits", "--checkpoint", "sqrt", "--strict", "--out", tmp_path / "r.npz") == 0
    rel, meta = read_golden(tmp_path / "r.npz")
    import reflrp
    want = reflrp.explain(reflrp.load(LLAMA), feeds("llama"), rules={"Softmax": "identity"})
    np.testing.assert_allclose(rel["inputs_embeds"], want.relevance["inputs_embeds"], rtol=1e-12, atol=0)
    assert run("explain", LLAMA, "--random", "--no-color") == 0
    assert "books                 ok" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["explain", LLAMA], "inputs_embeds: float32 [batch, seq, 32]"),
    (["explain", LLAMA, "--random", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["explain", LLAMA, "--random", "--rules", "softmax=identity"], "matches no node"),
    (["explain", LLAMA, "--random", "--rules", "Softmax=nope"], "unknown rule 'nope'"),
    (["explain", LLAMA, "--random", "--keep", "nope"], "no tensor 'nope'"),
    (["explain", LLAMA, "--random", "--output", "nope"], "not a graph output"),
    (["explain", LLAMA, "--random", "--epsilon", "-1"], "finite number >= 0"),
    (["explain", LLAMA, "--random", "--wrt", "nope"], "no tensor 'nope'"),
])
def test_explain_argument_errors(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reflrp: error:") and needle in err and err.count("\n") == 1


def test_every_flag_has_help_text():
    from reflrp.cli import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{name} {a.option_strings or a.dest}" for name, sp in subs.choices.items() for a in sp._actions
               if a.help is None and a.dest != "help"]
    assert not missing, missing


def test_golden_takes_rule_options_and_fingerprints_them(tmp_path, capsys):
    """--option reaches the rules of a golden run (gamma changes the numbers) and is part of the fingerprint."""
    model = str(MODELS / "cnn.onnx")
    d = tmp_path / "inputs"
    d.mkdir()
    np.savez(d / "x.npz", x=np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32))
    assert run("golden", model, "--inputs", d, "--out", tmp_path / "a", "--preset", "epsilon-plus") == 0
    assert run("golden", model, "--inputs", d, "--out", tmp_path / "b", "--preset", "epsilon-plus",
               "--option", "stabilizer=0.5") == 0
    ga, _ = read_golden(tmp_path / "a" / "x.golden.npz")
    gb, meta = read_golden(tmp_path / "b" / "x.golden.npz")
    assert meta["fingerprint"]["options"] == {"stabilizer": 0.5}
    assert list(ga) == ["x"] and not np.allclose(ga["x"], gb["x"])
    assert run("golden", model, "--inputs", d, "--out", tmp_path / "b", "--preset", "epsilon-plus") == 2
    assert "options" in capsys.readouterr().err


def test_a_closed_stdout_ends_the_command_quietly():
    """``reflrp ops | head -1``: the reader leaves early; no 'Broken pipe' error, exit 0."""
    p = subprocess.Popen([sys.executable, "-m", "reflrp", "ops"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Broken pipe" not in err and "Traceback" not in err
