"""Every `python -m mmjax.*` command ends a user error with one line naming it (after argparse's
usage lines where argparse reports it), never a traceback; `--verbose` adds the traceback
(mmjax.cli)."""

import importlib

import pytest

from mmjax.cli import run

# (module with `main`, arguments that name a missing file, a word the message must contain)
CASES = [
    ("mmjax.convert.__main__", ["ml4m", "--checkpoint", "{tmp}/none.safetensors", "--out",
                                "{tmp}/out"], "none.safetensors"),
    ("mmjax.eval.reconstruction", ["--tokenizer", "{tmp}/no_bundle", "--num", "2"], "no_bundle"),
    ("mmjax.eval.tokens", ["{tmp}/no_data"], "no_data"),
    ("mmjax.eval.nextscale", ["--model", "{tmp}/no_model", "--num", "2"], "no_model"),
    # fid / lpips: without torch or the lpips package, that is the error named first
    ("mmjax.eval.fid", ["convert", "--pth", "{tmp}/none.pth", "--out", "{tmp}/f.npz"], "error"),
    ("mmjax.eval.lpips", ["convert", "--net", "vgg", "--backbone", "{tmp}/none.pth", "--out",
                          "{tmp}/l.npz"], "error"),
    ("mmjax.storage.upgrade", ["{tmp}/no_bundle"], "no_bundle"),
    ("mmjax.pretokenize.run", ["--source", "scenes", "--num-examples", "2", "--tokenizers",
                               "rgb={tmp}/no_tok", "--out", "{tmp}/pretok"], "no_tok"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "argv", "word"), CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line(module, argv, word, tmp_path, capsys):
    main = importlib.import_module(module).main
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        run(main, "prog", argv)
    err = capsys.readouterr().err
    assert exit_.value.code not in (0, None)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert ": error: " in last and word in last, err
    if not err.startswith("usage:"):  # mmjax.cli's report: exactly one line
        assert err.count("\n") == 1 and last.startswith("prog: error: "), err


def test_verbose_prints_the_traceback(tmp_path, capsys):
    from mmjax.convert.__main__ import main

    with pytest.raises(SystemExit):
        run(main, "prog", ["ml4m", "--checkpoint", str(tmp_path / "x.safetensors"),
                           "--out", str(tmp_path / "o"), "--verbose"])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("prog: error: ")


def test_a_successful_command_exits_zero(tmp_path):
    from mmjax.data.scenes.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        run(main, "prog", ["--out", str(tmp_path / "s"), "--num", "2", "--resolution", "16"])
    assert exit_.value.code == 0
    assert any((tmp_path / "s").iterdir())
