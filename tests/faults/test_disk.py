"""(c) A full disk: the command's output folder on a small tmpfs (mounted in a private mount namespace,
`unshare -rm`, so nothing outside the test sees it) that also holds an earlier finished run. The
command must stop with one line (rc 2) naming the full disk, leave the earlier run byte for byte as
it was, and, once the tmpfs is enlarged, the same command must finish with the metrics of a run that
never met a full disk."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from tests.faults.conftest import COMMON, KG, REPO, check, child_env, metrics, run_distkg, same_results, student_args

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not namespaces_work(), reason="no private mount namespace here (unshare -rm)")


def files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def full_disk(tmp_path, earlier, args_for, room: int):
    """Run ``args_for(MOUNT)`` twice on a tmpfs holding a copy of EARLIER plus ``room`` bytes: first as it
    is, then after enlarging it to 64 MB. Returns (rc, stderr) of each and the tmpfs's files, copied out."""
    mount, saved = tmp_path / "mnt", tmp_path / "saved"
    mount.mkdir()
    saved.mkdir()
    size = sum(-(-p.stat().st_size // 4096) * 4096 for p in earlier.rglob("*") if p.is_file()) + room  # tmpfs pages
    python = [sys.executable, "-m", "distkg"]
    first, second = (" ".join(shlex.quote(str(a)) for a in [*python, *args_for(mount)]) for _ in range(2))
    script = f"""
mount -t tmpfs -o size={size} tmpfs {mount} || exit 97
cp -a {earlier} {mount}/earlier
{first} 2> {saved}/err1; echo $? > {saved}/rc1
cp -a {mount}/. {saved}/after-full
mount -o remount,size=64m {mount}
{second} 2> {saved}/err2; echo $? > {saved}/rc2
cp -a {mount}/. {saved}/after-room
"""
    done = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    read = lambda name: (saved / name).read_text()  # noqa: E731
    return (int(read("rc1")), read("err1")), (int(read("rc2")), read("err2")), saved


@pytest.fixture(scope="module")
def reference_train(finished, tmp_path_factory):
    out = tmp_path_factory.mktemp("disk") / "train"
    done = run_distkg(["train", "--out", out, "--data-root", finished.data, *COMMON, *KG])
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def expect_full(first, saved, earlier, record, command: str, what: str) -> str:
    outcome = check(*first)
    assert first[0] == 2 and "no space left on the device" in outcome, outcome
    kept = files(saved / "after-full" / "earlier")
    original = files(earlier)
    assert {k: v for k, v in kept.items() if k in original} == original  # the earlier run, byte for byte
    return outcome


@needs_mounts
def test_train_on_a_full_disk(finished, reference_train, tmp_path, record):
    first, second, saved = full_disk(tmp_path, finished.kg, lambda m: ["train", "--out", m / "run", "--data-root",
                                                                       finished.data, *COMMON, *KG], room=48 << 10)
    outcome = expect_full(first, saved, finished.kg, record, "train", "checkpoints")
    assert check(*second) == "rc 0"
    same_results(metrics(saved / "after-room" / "run"), metrics(reference_train))
    record("train", "disk full (tmpfs) during the run", outcome.split(":")[0] + ": no space left (one line); "
           "earlier run intact; rerun with room: rc 0, metrics identical")


@needs_mounts
def test_distill_on_a_full_disk(finished, tmp_path, record):
    first, second, saved = full_disk(tmp_path, finished.kg, lambda m: ["distill", "--out", m / "run",
                                                                       *student_args(m / "earlier", finished.data)],
                                     room=24 << 10)
    expect_full(first, saved, finished.kg, record, "distill", "")
    assert check(*second) == "rc 0"
    same_results(metrics(saved / "after-room" / "run"), metrics(finished.student))
    record("distill", "disk full (tmpfs) during the run", "rc 2: no space left (one line); teacher intact; "
           "rerun with room: rc 0, metrics identical")


@needs_mounts
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_readers_writing_to_a_full_disk(finished, tmp_path, record, command):
    args = {"evaluate": lambda m: ["evaluate", "--run", m / "earlier", "--out", m / "rescore", "--data-root", finished.data],
            "export": lambda m: ["export", "--run", m / "earlier", "--out", m / "export", "--data-root", finished.data]}
    first, second, saved = full_disk(tmp_path, finished.kg, args[command], room=0)
    expect_full(first, saved, finished.kg, record, command, "")
    assert check(*second) == "rc 0"
    record(command, "disk full (tmpfs) writing its output", "rc 2: no space left (one line); the run read is intact; "
           "rerun with room: rc 0")
