"""The README's PyTorch example runs as written and its model learns."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_trains():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## In PyTorch") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    losses = [float(line.split()[1]) for line in run.stdout.splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0] - 2.0, losses
