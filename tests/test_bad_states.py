"""A clear word for every bad state (issue 14): each is made for real in a temporary folder and met by a
real `python -m evo.cli` subprocess, which must exit non-zero (2 for a user error) with one `error: ` line
naming the problem and the fix, no traceback, and leave what is on disk as it was (hashes before/after).

Read-only places and full disks are real too: the command runs in a private mount namespace
(`unshare -m`, see `in_namespace`) where a folder is bind-mounted read-only (root cannot write through a
read-only mount) or a small tmpfs (`mount -t tmpfs -o size=1m`) is filled up so that writes get ENOSPC.
Those mounts die with the process; tests that need them are skipped where mount namespaces are refused.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from evo.run import JOURNAL_NAME
from synthetic import new_run

GENOMES = Path(__file__).resolve().parent / "genomes"


# ---------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with the sha256 of its bytes: what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def assert_refused(proc, *fragments: str, code: int = 2) -> str:
    """A user error: the exit code, one `error: ` message with every fragment, no traceback."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, err)
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    return err


def _namespaces_work() -> bool:
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs \"$d\" && umount \"$d\" && rmdir \"$d\""
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True, timeout=30,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -m and mount (root)")


def read_only(folder: Path) -> str:
    """Shell lines that make `folder` read-only for the namespace (a read-only bind mount of itself)."""
    q = shlex.quote(str(folder))
    return f"mount --bind {q} {q}\nmount -o remount,bind,ro {q}"


def full_tmpfs(mount: Path, free: int = 0, copy: Path | None = None) -> str:
    """Shell lines that mount a 1 MiB tmpfs at `mount`, copy `copy` into it as `run`, then fill it with a file
    until `free` bytes are left (a multiple of the 4 KiB page), so that further writes get ENOSPC."""
    q = shlex.quote(str(mount))
    lines = [f"mount -t tmpfs -o size=1m tmpfs {q}"]
    if copy is not None:
        lines.append(f"cp -a {shlex.quote(str(copy))} {q}/run")
    lines.append(f"head -c $(( $(df -B1 --output=avail {q} | tail -1) - {free} )) /dev/zero > {q}/filler")
    return "\n".join(lines)


def in_namespace(env: dict, setup: str, args, after: str = "", cwd=None, timeout: float = 120):
    """`python -m evo.cli ARGS` in a private mount namespace, after the shell lines `setup` (mounts) and
    before `after` (e.g. copying what a tmpfs holds out of it: the tmpfs ends with the process)."""
    script = f"set -e\n{setup}\nset +e\n\"$EVO_PYTHON\" -m evo.cli \"$@\"\nrc=$?\n{after}\nexit $rc\n"
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, check=False,
                          env={**env, "EVO_PYTHON": sys.executable, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    """A run directory as `evo run` makes one (config, the seed, its noise evaluations queued), no slot run."""
    run_dir = tmp_path_factory.mktemp("template") / "run"
    new_run(run_dir, GENOMES / "evo_tiny.py", str(tmp_path_factory.mktemp("no-dataset") / "gone")).journal.close()
    return run_dir


@pytest.fixture
def run_dir(template_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(template_run, copy)
    assert sorted(p.name for p in copy.iterdir()) == [JOURNAL_NAME, "tb"]  # closed cleanly: no -wal, no -shm
    return copy


# ---------------------------------------------------------------- 1. corrupt or foreign journals
def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header_only(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _foreign(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO photos (name) VALUES ('cat.jpg')")
    db.commit()
    db.close()


def _no_config(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta")  # the tables of a journal, but no run in it
    db.commit()
    db.close()


BAD_JOURNALS = {  # how the journal is spoiled: (what the message must name, its fix)
    "zero bytes": (_zero_bytes, ["is empty (0 bytes)", "start again with `evo run`"]),
    "random bytes": (_random_bytes, ["is not an SQLite database", "Restore journal.sqlite from a backup"]),
    "truncated": (_truncated, ["is damaged", "malformed", "Restore journal.sqlite from a backup"]),
    "header only": (_header_only, ["is damaged", "Restore journal.sqlite from a backup"]),
    "another program's": (_foreign, ["an SQLite database of another program", "photos",
                                     "Give the directory of an evo run"]),
    "no run in it": (_no_config, ["holds a journal but no run", "start again with `evo run`"]),
}


@pytest.mark.parametrize("command", ["status", "resume", "show"])
@pytest.mark.parametrize("state", list(BAD_JOURNALS))
def test_a_corrupt_or_foreign_journal_is_named_and_never_written(run_dir, evo_cli, state, command):
    spoil, fragments = BAD_JOURNALS[state]
    spoil(run_dir / JOURNAL_NAME)
    before = snapshot(run_dir)
    args = [command, run_dir] + (["deadbeef"] if command == "show" else [])
    assert_refused(evo_cli(*args, cwd=run_dir.parent), str(run_dir / JOURNAL_NAME) if state != "no run in it"
                   else str(run_dir), *fragments)
    assert snapshot(run_dir) == before  # no byte changed, no -wal or -shm made next to it


def test_export_of_another_programs_database_writes_nothing_into_it(run_dir, evo_cli):
    _foreign(run_dir / JOURNAL_NAME)
    before = snapshot(run_dir)
    assert_refused(evo_cli("export", run_dir, cwd=run_dir.parent), "another program", "photos")
    assert snapshot(run_dir) == before
    db = sqlite3.connect(f"file:{run_dir / JOURNAL_NAME}?mode=ro", uri=True)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["photos"]  # no evo table added
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    db.close()


def test_a_folder_without_a_journal_is_not_a_run_directory(tmp_path, evo_cli):
    (tmp_path / "empty").mkdir()
    assert_refused(evo_cli("status", tmp_path / "empty", cwd=tmp_path), "is not a run directory",
                   "has no journal.sqlite", "`evo run --out DIR` creates one")
    assert_refused(evo_cli("resume", tmp_path / "nowhere", cwd=tmp_path), "does not exist", "evo run --out DIR")
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- read-only opens and WAL
def test_status_and_show_of_a_healthy_run_create_no_file_next_to_the_journal(run_dir, evo_cli):
    before = snapshot(run_dir)
    status = evo_cli("status", run_dir, cwd=run_dir.parent)
    assert status.returncode == 0, status.stderr
    assert "evaluations: 0 done of 8, 0 running, 2 queued" in status.stdout
    show = evo_cli("show", run_dir, "deadbeef", cwd=run_dir.parent)
    assert_refused(show, "no genome of this run has an id starting with 'deadbeef'", "`evo status RUN_DIR` lists")
    assert snapshot(run_dir) == before  # a journal closed cleanly is opened immutable: no -wal, no -shm


def _crash_with_a_log(journal: Path, evals: int) -> None:
    """A writer that changes the run's evaluation limit and dies without closing: the change lives only in
    the -wal file (the -shm beside it)."""
    script = (f"import os\nfrom evo.journal import Journal\nj = Journal({str(journal)!r})\n"
              f"j.set_meta('config', dict(j.get_meta('config'), evals={evals}))\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert Path(f"{journal}-wal").stat().st_size > 0 and Path(f"{journal}-shm").exists()


@needs_mounts
def test_status_reads_a_run_in_a_read_only_folder(run_dir, data_env):
    before = snapshot(run_dir)
    proc = in_namespace(data_env, read_only(run_dir), ["status", run_dir])
    assert proc.returncode == 0, proc.stderr
    assert "evaluations: 0 done of 8" in proc.stdout
    assert snapshot(run_dir) == before


@needs_mounts
def test_status_reads_what_only_the_write_ahead_log_holds_in_a_read_only_folder(run_dir, data_env):
    _crash_with_a_log(run_dir / JOURNAL_NAME, evals=5)
    before = snapshot(run_dir)
    proc = in_namespace(data_env, read_only(run_dir), ["status", run_dir])
    assert proc.returncode == 0, proc.stderr
    assert "evaluations: 0 done of 5" in proc.stdout  # the limit the dead writer left in the -wal
    assert snapshot(run_dir) == before


@needs_mounts
def test_a_write_ahead_log_without_its_shm_in_a_read_only_folder_is_named(run_dir, data_env):
    _crash_with_a_log(run_dir / JOURNAL_NAME, evals=5)
    Path(f"{run_dir / JOURNAL_NAME}-shm").unlink()
    before = snapshot(run_dir)
    for command in (["status", run_dir], ["show", run_dir, "deadbeef"]):
        assert_refused(in_namespace(data_env, read_only(run_dir), command), "has a write-ahead log", "no -shm",
                       f"{run_dir} is read-only", "copy the run directory somewhere writable")
    assert snapshot(run_dir) == before
    # where SQLite may make the -shm, the same log is read (and the journal file itself is not touched)
    journal = (run_dir / JOURNAL_NAME).read_bytes()
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "status", str(run_dir)], capture_output=True, text=True,
                          env=data_env, timeout=60, check=False)
    assert proc.returncode == 0 and "0 done of 5" in proc.stdout, proc.stderr
    assert (run_dir / JOURNAL_NAME).read_bytes() == journal


_WRITER = """
import sys
from evo.run import open_run
run = open_run(sys.argv[1])
for i in range(3):
    run.journal.event("writer", i=i)
run.journal.close()
"""


def test_a_read_only_open_keeps_the_locks_of_the_processes_other_connections(run_dir):
    """Closing a descriptor of the journal that SQLite did not open drops every lock this process holds on
    it: a writer elsewhere then takes itself for the last connection and removes the -wal under a live
    reader, whose reads turn 'malformed'. A read-only open (with a journal check) must leave them held."""
    journal = run_dir / JOURNAL_NAME
    reader = sqlite3.connect(journal)  # a live connection of this process
    assert reader.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 2
    from evo.run import open_run

    run = open_run(run_dir, readonly=True)
    assert run.journal.count_by_state()["queued"] == 2
    for writers in (1, 2):
        subprocess.run([sys.executable, "-c", _WRITER, str(run_dir)], check=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
        assert Path(f"{journal}-wal").exists(), "the writer removed the log under this process's connections"
        fresh = sqlite3.connect(journal)
        assert fresh.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert fresh.execute("SELECT COUNT(*) FROM events WHERE kind = 'writer'").fetchone()[0] == 3 * writers
        fresh.close()
    run.journal.close()
    reader.close()


# ---------------------------------------------------------------- 2. unwritable places, full disks
@needs_mounts
def test_resume_of_a_run_in_a_read_only_folder_names_it_and_changes_nothing(run_dir, data_env):
    before = snapshot(run_dir)
    proc = in_namespace(data_env, read_only(run_dir), ["resume", run_dir, "--quiet"])
    assert_refused(proc, f"cannot write the journal {run_dir / JOURNAL_NAME}", f"{run_dir} is read-only",
                   "make it writable", "copy the run directory somewhere writable")
    assert snapshot(run_dir) == before


@needs_mounts
def test_evo_run_into_a_read_only_place_is_refused_before_the_dataset(tmp_path, data_env):
    place = tmp_path / "ro"
    place.mkdir()
    # a data source that would fail if it were read: the place is refused first
    proc = in_namespace(data_env, read_only(place), ["run", "--out", place / "new", "--data",
                                                     f"text:{tmp_path}/none/*.txt"], cwd=tmp_path)
    assert_refused(proc, f"cannot create the run directory {place / 'new'}", "read-only file system",
                   "pick a writable --out")
    assert list(place.iterdir()) == []


@needs_mounts
def test_resume_on_a_full_disk_names_it_and_the_journal_survives_byte_for_byte(run_dir, data_env, tmp_path):
    mount, kept = tmp_path / "disk", tmp_path / "after"
    mount.mkdir()
    proc = in_namespace(data_env, full_tmpfs(mount, copy=run_dir), ["resume", mount / "run", "--quiet"],
                        after=f"cp -a {shlex.quote(str(mount))}/run {shlex.quote(str(kept))}")
    assert_refused(proc, f"cannot write the journal {mount / 'run' / JOURNAL_NAME}", "the disk that holds it is full",
                   "free space on that disk", f"`evo resume {mount / 'run'}`")
    assert snapshot(kept) == snapshot(run_dir)  # the same files, the journal byte for byte, no -wal/-shm left


@pytest.mark.slow  # the first `evo run` of a session measures the dataset's seal (about 10 s), cached after
@needs_mounts
@pytest.mark.parametrize("free, at", [(0, "new"), (64 * 1024, f"new/{JOURNAL_NAME}")])
def test_evo_run_on_a_full_disk_names_it_and_leaves_nothing_behind(tmp_path, data_env, default_dataset, free, at):
    mount, listing = tmp_path / "disk", tmp_path / "listing.txt"
    mount.mkdir()
    # run from a folder outside the repository: the shipped seed genome is found all the same
    proc = in_namespace(data_env, full_tmpfs(mount, free), ["run", "--preset", "smoke", "--out", mount / "new"],
                        after=f"ls -A {shlex.quote(str(mount))} > {shlex.quote(str(listing))}", cwd=tmp_path)
    assert_refused(proc, f"cannot create the run directory {mount / 'new'}", "the disk is full",
                   f"(at {mount / at}", "pick --out on a writable disk with free space")
    assert listing.read_text().split() == ["filler"]  # no half-made run directory, no zero-byte journal


@needs_mounts
def test_a_read_only_data_cache_is_named_with_the_fix(tmp_path, data_env, small_source):
    cache = tmp_path / "cache"
    cache.mkdir()
    proc = in_namespace({**data_env, "EVO_DATA_DIR": str(cache)}, read_only(cache),
                        ["prepare", "--data", small_source])
    assert_refused(proc, f"cannot write the dataset into the data cache {cache}", "read-only file system",
                   "set EVO_DATA_DIR")
    assert list(cache.iterdir()) == []


@needs_mounts
def test_a_read_only_data_cache_that_holds_the_dataset_is_used(data_env, default_dataset, stdlib_data_root):
    before = snapshot(stdlib_data_root)
    proc = in_namespace(data_env, read_only(stdlib_data_root), ["prepare"])
    assert proc.returncode == 0, proc.stderr
    assert f"dataset:   {default_dataset.path}" in proc.stdout
    assert snapshot(stdlib_data_root) == before


@needs_mounts
def test_a_full_data_cache_is_named_with_its_size_and_the_fix(tmp_path, data_env, small_source):
    mount, listing = tmp_path / "disk", tmp_path / "listing.txt"
    mount.mkdir()
    proc = in_namespace({**data_env, "EVO_DATA_DIR": str(mount / "cache")}, full_tmpfs(mount, free=128 * 1024),
                        ["prepare", "--data", small_source],
                        after=f"ls -A {shlex.quote(str(mount))} > {shlex.quote(str(listing))}")
    err = assert_refused(proc, f"cannot write the dataset into the data cache {mount / 'cache'}",
                         "no space left on its disk", "the dataset needs about", "set EVO_DATA_DIR")
    assert float(err.split("needs about ")[1].split(" MB")[0]) > 0.128  # more than the disk had free
    assert listing.read_text().split() == ["filler"]  # no half-written dataset, no tmp folder, no cache folder


def test_a_run_whose_dataset_is_gone_says_how_to_prepare_it_again(run_dir, evo_cli):
    before = snapshot(run_dir)
    proc = evo_cli("eval", GENOMES / "evo_tiny.py", "--run", run_dir, "--device", "cpu", "--out",
                   run_dir.parent / "eval", cwd=run_dir.parent)
    assert_refused(proc, "is gone (no manifest.json", "evo prepare --data SOURCE")
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------- 3. evo eval
@pytest.mark.parametrize("flags, fragments", [
    (["--budget", "0.1"], ["--budget 0.1", "slots.budget_s", ">= 0.5"]),
    (["--budget", "0"], ["--budget 0", "slots.budget_s", ">= 0.5"]),
    (["--budget", "inf"], ["--budget inf", "finite"]),
    (["--eval-tokens", "100"], ["--eval-tokens 100", "slots.eval_tokens", ">= 512"]),
    (["--grace", "-1"], ["--grace -1", "slots.grace_s", ">= 0"]),
])
def test_evo_eval_refuses_out_of_range_flags_by_the_config_rules(tmp_path, evo_cli, flags, fragments):
    # a data source that would fail if it were read: the flags are refused before any dataset
    proc = evo_cli("eval", GENOMES / "evo_tiny.py", *flags, "--data", f"text:{tmp_path}/none/*.txt", "--out",
                   tmp_path / "eval", cwd=tmp_path)
    assert_refused(proc, *fragments)
    assert not (tmp_path / "eval").exists()


def test_evo_eval_with_a_run_checks_the_flags_too(run_dir, evo_cli):
    proc = evo_cli("eval", GENOMES / "evo_tiny.py", "--run", run_dir, "--budget", "0.2", cwd=run_dir.parent)
    assert_refused(proc, "--budget 0.2", ">= 0.5")


def test_evo_eval_of_a_genome_that_does_not_parse_prints_the_line_and_no_empty_fields(tmp_path, evo_cli,
                                                                                     default_dataset):
    genome = tmp_path / "broken.py"
    genome.write_text("import math\n\n\ndef f(x):\n    return math.sqrt(x\n")
    proc = evo_cli("eval", genome, "--device", "cpu", "--budget", "2", "--out", tmp_path / "eval", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)  # a failed evaluation, not a usage error
    lines = proc.stdout.splitlines()
    assert "status:          failed" in lines and "reason:          rejected" in lines
    assert any("line 5:" in line and "'(' was never closed" in line for line in lines), proc.stdout
    assert "n/a" not in proc.stdout and "val_bpb" not in proc.stdout  # only the fields that have a value
    assert "Traceback" not in proc.stderr


def test_evo_eval_of_a_genome_that_never_submits_explains_it(tmp_path, evo_cli, default_dataset):
    proc = evo_cli("eval", GENOMES / "no_submit.py", "--device", "cpu", "--budget", "2", "--out", tmp_path / "eval",
                   cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "reason:          no_submit" in proc.stdout.splitlines()
    assert "detail:          the genome exited without calling run.submit(model)" in proc.stdout
    assert "n/a" not in proc.stdout and "heldout_bpb" not in proc.stdout
    assert "forgot to submit" in proc.stderr  # the tail of the genome's stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- 4. done elsewhere, checked here
def test_evo_show_of_an_unknown_id_says_so_and_writes_nothing(run_dir, evo_cli):
    before = snapshot(run_dir)
    assert_refused(evo_cli("show", run_dir, "deadbeef", cwd=run_dir.parent),
                   "no genome of this run has an id starting with 'deadbeef'", "`evo status RUN_DIR` lists the ids")
    assert snapshot(run_dir) == before


def test_a_directory_given_as_a_corpus_glob_is_named_a_directory(tmp_path, evo_cli, small_corpus):
    proc = evo_cli("prepare", "--data", f"text:{small_corpus}", "--out", tmp_path / "data", cwd=tmp_path)
    assert_refused(proc, "is a directory, not a glob of files", f"text:'{small_corpus}/**/*.txt'")
    assert not (tmp_path / "data").exists()


def test_evo_run_outside_the_repository_finds_the_shipped_seed_genome(tmp_path, evo_cli):
    (tmp_path / "a-file").write_text("")
    # from a folder with no genomes/ in it; the run then stops at its --out (under a file), before any data
    proc = evo_cli("run", "--preset", "smoke", "--out", tmp_path / "a-file" / "run", cwd=tmp_path)
    assert_refused(proc, f"{tmp_path / 'a-file'} is a file, not a directory", "pick another --out")
    assert "seed genome" not in proc.stderr
    missing = evo_cli("run", "--genome", "genomes/no_such_genome.py", "--out", tmp_path / "run", cwd=tmp_path)
    assert_refused(missing, "seed genome genomes/no_such_genome.py does not exist", "--genome PATH")
