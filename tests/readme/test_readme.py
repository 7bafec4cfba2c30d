"""Every command in README.md's ```bash blocks, and in the user guide's (docs/guide, in GUIDE's order),
runs as written (issue 33 item 4): the blocks, in that order, as one bash script (an `export` or `source` carries on, as in a user's shell), run
in a copy of the checkout with a fresh HOME whose ~/tkg-data holds tiny copies of the four
benchmarks in their own formats (tests/readme/tinydata.py), so each command runs in seconds.

Lines that cannot run in a test are replaced, each by a rule of SUBSTITUTIONS with its reason; the
test fails when a rule matches no line (the README changed: the rule must go) and when a command
fails (the script stops there, naming the README line). The lane: ``bash scripts/test.sh -m readme``
(CI runs it after the suite, .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme.tinydata import write_tiny_benchmarks

pytestmark = pytest.mark.readme
REPO = Path(__file__).resolve().parents[2]
# the user guide's pages in the order a reader (and this script) goes through them: later pages read
# what earlier commands wrote (the walk-through's runs, the quickstart's students)
GUIDE = ["setup", "data", "training", "llm", "distillation", "ray", "runs", "serving", "layout"]


def documents() -> list[tuple[str, str]]:
    """(name, text) of README.md and each guide page, in order."""
    return [("README.md", (REPO / "README.md").read_text())] + [
        (f"docs/guide/{page}.md", (REPO / "docs" / "guide" / f"{page}.md").read_text()) for page in GUIDE]

# (pattern of one logical line, replacement, why)
SUBSTITUTIONS = [
    (r"^distkg data download (\S+)(.*)$", r"distkg data stats \1\2 > /dev/null",
     "no network in tests: the tiny copy is in place; downloads are tested against a local mirror "
     "(tests/data/test_download.py)"),
    (r"^bash scripts/test\.sh.*$", r": the test suite itself",
     "this is the test suite"),
    (r"^distkg serve (.*--port (\d+).*)$", r"set -m; distkg serve \1 & SERVE=$!; set +m; wait_port \2",
     "a server runs until Ctrl-C: started in the background (job control on, so that it takes Ctrl-C), "
     "the next line (curl) asks it, then Ctrl-C"),
    (r"^(curl .*)$", r"\1; kill -INT $SERVE; wait $SERVE || true",
     "ends the server started above"),
]

PREAMBLE = r"""
wait_port() {  # until a server answers on 127.0.0.1:$1 (at most 120 s)
  python -c "
import socket, sys, time
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close(); sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit('no server on port ' + sys.argv[1])" "$1"
}
"""


def bash_blocks(text: str) -> list[tuple[int, list[str]]]:
    """The README's ```bash blocks: (line number of the first command, logical lines), continuation
    lines joined."""
    blocks = []
    for m in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        first = text[: m.start(1)].count("\n") + 1
        joined = re.sub(r"\\\n\s*", "", m.group(1))
        blocks.append((first, [line for line in joined.splitlines() if line.strip()]))
    return blocks


def readme_script(pages: list[tuple[str, str]]) -> tuple[str, set[int]]:
    """The pages' blocks as one script, with SUBSTITUTIONS applied; the indices of the rules that matched."""
    used, out = set(), ["set -euo pipefail", PREAMBLE]
    for name, first, lines in ((name, first, lines) for name, text in pages for first, lines in bash_blocks(text)):
        out.append(f"echo '### {name} block at line {first}' >&2")
        for line in lines:
            for i, (pattern, replacement, _) in enumerate(SUBSTITUTIONS):
                command = re.sub(r"\s+#.*$", "", line).strip()
                if re.match(pattern, command):
                    line, _n = re.subn(pattern, replacement, command)
                    used.add(i)
                    break
            out.append(f"echo '+ {line[:150].replace(chr(39), '')}' >&2")
            out.append(line)
    return "\n".join(out) + "\n", used


def test_every_guide_page_is_in_the_lane():
    assert sorted(p.stem for p in (REPO / "docs" / "guide").glob("*.md")) == sorted(GUIDE)


def test_every_substitution_matches_a_readme_line():
    _, used = readme_script(documents())
    assert used == set(range(len(SUBSTITUTIONS))), [SUBSTITUTIONS[i][0] for i in set(range(len(SUBSTITUTIONS))) - used]


def test_the_blocks_are_read_as_commands():
    blocks = bash_blocks("text\n```bash\ndistkg a \\\n  --b c   # note\nls\n```\nmore\n")
    assert blocks == [(3, ["distkg a --b c   # note", "ls"])]


@pytest.mark.timeout(3000)
def test_every_readme_command_runs_as_written(tmp_path):
    venv = Path(sys.executable).parents[1]
    repo = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / ".venv").symlink_to(venv)
    home = tmp_path / "home"
    write_tiny_benchmarks(home / "tkg-data")
    script, _ = readme_script(documents())
    (tmp_path / "readme.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTKG_"))}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", DISTKG_DATA=str(home / "tkg-data"), OMP_NUM_THREADS="1")
    log = tmp_path / "readme.log"
    with open(log, "w") as f:
        proc = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=repo, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=3000)
    text = log.read_text()
    if proc.returncode != 0:
        where = [line for line in text.splitlines() if line.startswith(("### ", "+ "))][-2:]
        pytest.fail(f"rc {proc.returncode} at {where}:\n{text[-4000:]}")
