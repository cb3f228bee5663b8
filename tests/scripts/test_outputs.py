"""Each MAIN.py phase writes only the files its module declares (OUTPUTS): the --overwrite guard reads that
declaration, so a file written outside it would survive an --overwrite or be overwritten unguarded."""
from __future__ import annotations

from pathlib import Path

import pytest

from Trainer.common import Outputs
from Trainer.filenames import name_matches
from Trainer.main_flow import PHASES
from tests.scripts.fastcli import run_fast
from tests.scripts.test_bad_input import GT, flags, main_args
from tests.scripts.test_resume import fresh

# Every file kind of the phase appears: two epochs of two rounds, the kNN monitor on, the injected trigger given
PHASE_FLAGS = {"moth": {"epochs": 2, "monitor_every": 1, "trigger_file": GT},
               "nc": {"phase": "nc", "trigger_file": GT},
               "detect": {"phase": "detect", "re_steps_cap": 2, "trigger_file": GT}}


def undeclared(folder: Path, outputs: Outputs) -> list[str]:
    """The files in ``folder`` that ``outputs`` does not claim (its patterns and its fixed names)."""
    return [p.name for p in folder.iterdir()
            if not any(name_matches(p.name, t) for t in (*outputs.patterns, *outputs.writes))]


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_a_phase_writes_only_its_declared_files(workspace, tmp_path, phase):
    ws = fresh(workspace, tmp_path / "ws")
    args = flags(main_args("x", **PHASE_FLAGS[phase]), log_dir="logs", results_dir="results")
    proc = run_fast("MAIN.py", args, ws)
    assert proc.returncode == 0, proc.stderr
    declared = {out.field: out for out in PHASES[phase].OUTPUTS}
    assert set(declared) == {"log_dir", "results_dir"}
    for field, folder in (("log_dir", ws / "logs"), ("results_dir", ws / "results")):
        assert undeclared(folder, declared[field]) == [], (phase, field)
    assert any((ws / "logs").iterdir())  # the check above saw the phase's files
