"""bench/vs_original.py without the user's snapshot of the original: one line, exit 0; a wrong folder: one
error line, exit 2. (The comparison itself needs the original's code, which the project does not hold.)"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "vs_original.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_without_the_original_it_skips_in_one_line():
    proc = run()
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("vs_original: skipped")


def test_a_folder_that_is_not_the_original_is_refused_in_one_line(tmp_path):
    proc = run("--orig", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and f"--orig {tmp_path}" in proc.stderr and "Traceback" not in proc.stderr
