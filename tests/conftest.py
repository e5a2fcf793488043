import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(2)


@pytest.fixture
def cli():
    """Run `softmaso ARGS...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from softmaso.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
