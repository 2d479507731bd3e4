"""`python -m recdemo finetune`: bad settings are one line and exit code, no traceback."""


def test_cli_rejects_bad_flags_without_a_traceback(capsys):
    from recdemo.cli.main import main
    code = main(["finetune", "--dataset", "movielens-small", "--tasks", "recommend,poetry", "--out", "/tmp/x"])
    err = capsys.readouterr().err
    assert code == 1 and "unknown fine-tuning task(s) poetry" in err and "Traceback" not in err
