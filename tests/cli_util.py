"""Helpers shared by the command-line tests."""
from litevar.commands.cli import main


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `litevar ARGV` (arguments may be paths or numbers)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version, and bad flags (one line, status 2)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
