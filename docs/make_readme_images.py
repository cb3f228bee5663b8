#!/usr/bin/env python
"""Regenerate the pictures of the README and docs/RESULTS.md (``images in text/``) from a finished demo run.

    python docs/make_readme_images.py --run demo_runs/<name>

Re-runs the demo's three RECEIVE command lines (MAIN.py --phase moth, Unlearn-trigger.py,
training_downstream_classifier.py; about a minute in all on 2 CPU cores) with their outputs sent
to ``<run>/readme-rerun/`` instead of the run's own folders, captures what each prints, and renders
the command, the end of its output and a listing of what it wrote as terminal-like PNGs. Then copies
the demo report's figures. Every picture therefore comes from a real run on this machine.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docs.terminal_png import render_terminal  # noqa: E402
from DEMO.layout import receive_commands  # noqa: E402
from UTILS.errors import UserError  # noqa: E402

STAGES = [  # (stage in DEMO.layout.receive_commands, picture name, title)
    ("main", "stage1-main-moth.png", "Stage 1: iterative trigger inversion and early stop (MAIN.py --phase moth)"),
    ("unlearn", "stage2-unlearn.png", "Stage 2: unlearning the inverted trigger (Unlearn-trigger.py)"),
    ("downstream", "stage3-downstream.png",
     "Stage 3: downstream classifier, ACC and ASR (training_downstream_classifier.py)"),
]
FIGURES = ("triggers.png", "trigger_growth.png", "unlearning.png", "results.png")
OUTPUT_FLAGS = ("--log_dir", "--results_dir")


def redirect_outputs(argv: list[str], scratch: Path) -> tuple[list[str], list[Path]]:
    """Point --log_dir/--results_dir into ``scratch`` so the demo's own files stay untouched."""
    argv, outputs = list(argv), []
    for i, arg in enumerate(argv[:-1]):
        if arg in OUTPUT_FLAGS:
            argv[i + 1] = str(scratch / arg.lstrip("-"))
            outputs.append(Path(argv[i + 1]))
    return argv, outputs


def listing(folders: list[Path]) -> str:
    """``ls``-style text of each folder's entries, for the README pictures."""
    lines = []
    for folder in folders:
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        lines.append(f"$ ls {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}")
        lines.append("  ".join(names))
    return "\n".join(lines)


def rerun_stage(words: list[str], scratch: Path) -> tuple[str, str, list[Path]]:
    """Run one demo command ([script, *argv]) again with redirected outputs; returns (shown command,
    output, dirs)."""
    script, argv = words[0], words[1:]
    argv, outputs = redirect_outputs(argv, scratch)
    if scratch.exists():
        shutil.rmtree(scratch)
    env = dict(os.environ, RECEIVE_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-u", script, *argv], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"error: {script} exited with {proc.returncode}:\n{proc.stdout[-2000:]}")
    shown = "python -u " + " ".join(shlex.quote(w) for w in [script, *argv])
    return shown.replace(str(ROOT) + "/", ""), proc.stdout, outputs


def main(argv: list[str] | None = None) -> None:
    """Re-run a finished demo run's RECEIVE stages, draw the README's terminal pictures of them, copy the report's
    figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished demo run folder (holds summary.json)")
    p.add_argument("--out", default=str(ROOT / "images in text"))
    args = p.parse_args(argv)
    run, out = Path(args.run).resolve(), Path(args.out)
    try:
        commands = receive_commands(run)
    except UserError as err:
        raise SystemExit(f"error: {err}")
    for stage, name, title in STAGES:
        shown, output, folders = rerun_stage(commands[stage], run / "readme-rerun" / name.removesuffix(".png"))
        text = output.rstrip() + "\n\n" + listing(folders)
        print("wrote", render_terminal(shown, text, out / name, title=title, max_lines=44))
    for figure in FIGURES:
        source = run / "report" / figure
        if source.is_file():
            shutil.copyfile(source, out / f"demo-{figure}")
            print("wrote", out / f"demo-{figure}")


if __name__ == "__main__":
    main()
