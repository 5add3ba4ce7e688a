"""The run journal: one SQLite file (WAL mode), the single source of truth of a run.

Every state change is committed before it is acted upon: a genome is written before it is queued,
an evaluation is marked running before its slot starts, and its result, the Thresholdout answer and
the fitness land in one transaction. A controller killed at any moment therefore loses no finished
evaluation and never counts one twice; `evo resume` (or a lost slot) re-queues what was running.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from evo.genome import Genome
from gpt.errors import UserError
from gpt.result import JOURNAL_COLUMNS, SlotResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS genomes (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, parents TEXT NOT NULL, operator TEXT NOT NULL,
    rationale TEXT NOT NULL, created REAL NOT NULL, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    genome_id TEXT NOT NULL REFERENCES genomes(id),
    purpose TEXT NOT NULL,            -- noise | child | reeval | rerun (a contended child, again) | export
    seed INTEGER NOT NULL,
    state TEXT NOT NULL,              -- queued | running | done
    slot TEXT, attempt INTEGER NOT NULL DEFAULT 0,
    queued REAL NOT NULL, started REAL, finished REAL, done_seq INTEGER UNIQUE,
    -- the SlotResult fields marked as journal columns (gpt.result.JOURNAL_COLUMNS):
    status TEXT, reason TEXT, val_bpb REAL, heldout_bpb REAL, test_bpb REAL,
    train_seconds REAL, slot_seconds REAL, eval_seconds REAL, sandbox TEXT,
    answer REAL, revealed INTEGER, penalty REAL, fitness REAL,
    result TEXT);
CREATE INDEX IF NOT EXISTS evaluations_genome ON evaluations(genome_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS llm_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, call_id TEXT, model TEXT, purpose TEXT,
    status TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, latency_s REAL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memory (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, text TEXT NOT NULL);
"""
TABLES = ("meta", "genomes", "evaluations", "events", "llm_calls", "memory")  # every journal has had all six
LOW_SPACE_BYTES = 1 << 20  # an I/O error with less free space than this is a full disk
# SQLite's primary result codes (the sqlite3 module names them from Python 3.11 on)
SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 8, 10, 13, 14, 26


class CannotWrite(UserError):  # the journal cannot be written: `kind` "readonly" place, "full" disk, or "io"
    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Evaluation:
    """One row of the `evaluations` table: a queued, running or finished evaluation."""

    id: int
    genome_id: str
    purpose: str  # noise | child | reeval | rerun | export
    seed: int
    state: str  # queued | running | done
    slot: str | None = None
    attempt: int = 0
    done_seq: int | None = None
    answer: float | None = None
    revealed: int | None = None
    penalty: float | None = None
    fitness: float | None = None
    result: SlotResult | None = None

    @classmethod
    def from_row(cls, row) -> "Evaluation":
        result = SlotResult.from_dict(json.loads(row["result"])) if row["result"] else None
        return cls(id=row["id"], genome_id=row["genome_id"], purpose=row["purpose"], seed=row["seed"],
                   state=row["state"], slot=row["slot"], attempt=row["attempt"], done_seq=row["done_seq"],
                   answer=row["answer"], revealed=row["revealed"], penalty=row["penalty"], fitness=row["fitness"],
                   result=result)


RUN_PURPOSES = ("noise", "child", "reeval", "rerun")  # everything but export: what the run itself evaluates
_IN_RUN = "purpose != 'export'"


class Journal:
    """Typed access to the run's SQLite file: named queries, no SQL outside this module. `Journal(path)` opens
    (or creates) one to write; `readonly=True` opens an existing, checked one and never writes to it or its
    folder; with `writable_later`, its first write reopens it for writing."""

    def __init__(self, path: str | Path, readonly: bool = False, *, writable_later: bool = False):
        self.path = Path(path)
        self.lock = threading.RLock()  # one connection for all threads; each transaction and read whole
        self.readonly, self.writable_later = readonly, readonly and writable_later
        db = _open_readonly(self.path) if readonly else _open_writable(self.path, True)
        self.db = _LockedConnection(db, self.lock)

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        if self.readonly:
            self._make_writable()
        return _Transaction(self.db, self.lock, self.path)

    def _make_writable(self) -> None:
        with self.lock:  # the first write of a `writable_later` journal
            if self.readonly and not self.writable_later:
                raise RuntimeError(f"{self.path} was opened read-only; this command must not write to it")
            if not self.readonly:
                return
            made = [p for p in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if not p.exists()]
            try:
                self.db.swap(_open_writable(self.path, False))
            except CannotWrite:
                for p in made:  # the -wal/-shm a failed open left (no other connection had them)
                    with suppress(OSError):  # a read-only folder: none was made
                        p.unlink(missing_ok=True)
                raise
            self.readonly = False

    # ------------------------------------------------------------ meta
    def set_meta(self, key: str, value) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    # ------------------------------------------------------------ genomes
    def _insert_genome(self, genome: Genome) -> bool:
        return self.db.execute(
            "INSERT OR IGNORE INTO genomes VALUES (?, ?, ?, ?, ?, ?, ?)",
            (genome.id, genome.source, json.dumps(list(genome.parents)), genome.operator, genome.rationale,
             genome.created, genome.length)).rowcount == 1

    def add_genome(self, genome: Genome, purpose: str | None = None, seeds=()) -> int | None:
        """Record a genome and, in the same transaction, queue its evaluations (one per seed).

        Returns the evaluation id, or None when an identical program is already known
        (a duplicate child is recognized here and never evaluated twice)."""
        with self._tx():
            if not self._insert_genome(genome):
                return None
            ids = [self._queue(genome.id, purpose, seed) for seed in seeds] if purpose else []
            return ids[0] if ids else 0

    def start_run(self, meta: dict, seeds: list[tuple[Genome, list[int]]]) -> None:
        """A new run in one transaction: its metadata, its seed genomes and their noise evaluations,
        so a run directory is either usable by `evo resume` or empty."""
        with self._tx():
            for key, value in meta.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            for genome, harness_seeds in seeds:
                self._insert_genome(genome)
                for seed in harness_seeds:
                    self._queue(genome.id, "noise", seed)

    def genome(self, genome_id: str) -> Genome:
        """The genome with its stored id (ids are never recomputed on read)."""
        row = self.db.execute("SELECT * FROM genomes WHERE id = ?", (genome_id,)).fetchone()
        if row is None:
            raise UserError(f"no genome {genome_id!r} in {self.path}; `evo status RUN_DIR` lists them")
        return Genome(source=row["source"], parents=tuple(json.loads(row["parents"])), operator=row["operator"],
                      rationale=row["rationale"], created=row["created"], id=row["id"])

    def genome_ids(self) -> list[str]:
        return [r["id"] for r in self.db.execute("SELECT id FROM genomes ORDER BY created, rowid")]

    def find_genome(self, prefix: str) -> str:
        ids = [i for i in self.genome_ids() if i.startswith(prefix)]
        if not ids:
            raise UserError(f"no genome of this run has an id starting with {prefix!r}; `evo status RUN_DIR` "
                            "lists the ids")
        if len(ids) > 1:
            raise UserError(f"genome id {prefix!r} matches {len(ids)} genomes; give more characters of the id")
        return ids[0]

    # ------------------------------------------------------------ evaluations: writes
    def _queue(self, genome_id: str, purpose: str, seed: int) -> int:
        return self.db.execute(
            "INSERT INTO evaluations (genome_id, purpose, seed, state, queued) VALUES (?, ?, ?, 'queued', ?)",
            (genome_id, purpose, seed, time.time())).lastrowid

    def queue_evaluation(self, genome_id: str, purpose: str, seed: int) -> int:
        with self._tx():
            return self._queue(genome_id, purpose, seed)

    def mark_running(self, eval_id: int, slot: str) -> int:
        """Mark an evaluation as started in a slot; returns its attempt number."""
        with self._tx():
            self.db.execute("UPDATE evaluations SET state = 'running', slot = ?, started = ?, attempt = attempt + 1 "
                            "WHERE id = ?", (slot, time.time(), eval_id))
        return self.db.execute("SELECT attempt FROM evaluations WHERE id = ?", (eval_id,)).fetchone()[0]

    def finish_evaluation(self, eval_id: int, result: SlotResult, scored: dict, events=()) -> int | None:
        """Store a result, its Thresholdout answer and fitness, and the events it caused ((kind, data)
        pairs), atomically. Returns the completion sequence number, or None if this evaluation was
        already finished (never counted twice)."""
        with self._tx():
            row = self.db.execute("SELECT state FROM evaluations WHERE id = ?", (eval_id,)).fetchone()
            if row is None or row["state"] == "done":
                return None
            seq = self.db.execute("SELECT COALESCE(MAX(done_seq), 0) + 1 FROM evaluations").fetchone()[0]
            values = [getattr(result, c) for c in JOURNAL_COLUMNS]
            self.db.execute(
                "UPDATE evaluations SET state = 'done', finished = ?, done_seq = ?, "
                + ", ".join(f"{c} = ?" for c in JOURNAL_COLUMNS)
                + ", answer = ?, revealed = ?, penalty = ?, fitness = ?, result = ? WHERE id = ?",
                (time.time(), seq, *values, scored.get("answer"), scored.get("revealed"),
                 scored.get("penalty"), scored.get("fitness"), json.dumps(result.to_dict()), eval_id))
            for kind, data in events:
                self._event(kind, data)
        return seq

    def requeue_running(self, eval_id: int | None = None) -> list[int]:
        """Running evaluations back to the queue: every one after a crash, or the one whose slot was lost."""
        where, params = ("state = 'running'", ()) if eval_id is None else ("state = 'running' AND id = ?", (eval_id,))
        with self._tx():
            ids = [r[0] for r in self.db.execute(f"SELECT id FROM evaluations WHERE {where}", params)]
            self.db.execute(f"UPDATE evaluations SET state = 'queued' WHERE {where}", params)
        return ids

    # ------------------------------------------------------------ evaluations: named queries
    def _select(self, where: str, params=(), order: str = "id") -> list[Evaluation]:
        rows = self.db.execute(f"SELECT * FROM evaluations WHERE {where} ORDER BY {order}", params).fetchall()
        return [Evaluation.from_row(r) for r in rows]

    def _count(self, where: str, params=()) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM evaluations WHERE {where}", params).fetchone()[0]

    def all_evaluations(self) -> list[Evaluation]:
        """Every evaluation in the order it was queued, exports included."""
        return self._select("1")

    def evaluation(self, eval_id: int) -> Evaluation:
        return self._select("id = ?", (eval_id,))[0]

    def done_evaluations(self) -> list[Evaluation]:
        """The run's finished evaluations (no exports), in completion order: what a replay folds."""
        return self._select(f"state = 'done' AND {_IN_RUN}", order="done_seq")

    def recent_children(self, n: int) -> list[Evaluation]:
        """The last n finished child evaluations, oldest first."""
        if n <= 0:
            return []
        return self._select("purpose = 'child' AND state = 'done'", order="done_seq")[-n:]

    def queued(self) -> list[Evaluation]:
        """What waits for a slot, oldest first (exports are never queued for the run)."""
        return self._select(f"state = 'queued' AND {_IN_RUN}")

    def running(self) -> list[Evaluation]:
        return self._select(f"state = 'running' AND {_IN_RUN}")

    def count_done(self) -> int:
        """Finished evaluations of the run itself: what `evals` limits."""
        return self._count(f"state = 'done' AND {_IN_RUN}")

    def count_by_state(self) -> dict[str, int]:
        return {state: self._count(f"state = ? AND {_IN_RUN}", (state,)) for state in ("done", "running", "queued")}

    def count_purpose(self, purpose: str) -> int:
        return self._count("purpose = ?", (purpose,))

    def count_for(self, genome_id: str, purpose: str | None = None) -> int:
        """Evaluations of one genome (of one purpose), whatever their state: numbers its harness seeds."""
        if purpose is None:
            return self._count("genome_id = ?", (genome_id,))
        return self._count("genome_id = ? AND purpose = ?", (genome_id, purpose))

    def sandboxes_used(self) -> list[str]:
        return sorted(r[0] for r in self.db.execute("SELECT DISTINCT sandbox FROM evaluations "
                                                    "WHERE sandbox IS NOT NULL"))

    # ------------------------------------------------------------ events, LLM calls, memory
    def _event(self, kind: str, data: dict) -> None:
        self.db.execute("INSERT INTO events (time, kind, data) VALUES (?, ?, ?)", (time.time(), kind, json.dumps(data)))

    def event(self, kind: str, **data) -> None:
        with self._tx():
            self._event(kind, data)

    def events(self, kind: str | None = None) -> list[dict]:
        rows = self.db.execute("SELECT * FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id",
                               (kind,) if kind else ()).fetchall()
        return [{"time": r["time"], "kind": r["kind"], **json.loads(r["data"])} for r in rows]

    def record_llm_call(self, call: dict) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO llm_calls (time, call_id, model, purpose, status, prompt_tokens, completion_tokens, "
                "cost_usd, latency_s, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), call.get("call_id"), call.get("model"), call.get("purpose"), call.get("status"),
                 call.get("prompt_tokens"), call.get("completion_tokens"), call.get("cost_usd"),
                 call.get("latency_s"), json.dumps(call, default=str)))

    def llm_calls(self) -> list[dict]:
        """Every journaled LLM call record, in order (a resumed client restores its spend from them)."""
        return [json.loads(r["data"]) for r in self.db.execute("SELECT data FROM llm_calls ORDER BY id")]

    def llm_totals(self) -> dict:
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
                              "COALESCE(SUM(cost_usd), 0) FROM llm_calls").fetchone()
        return {"calls": row[0], "prompt_tokens": row[1], "completion_tokens": row[2], "cost_usd": row[3]}

    def add_memory(self, text: str) -> None:
        with self._tx():
            self.db.execute("INSERT INTO memory (time, text) VALUES (?, ?)", (time.time(), text))

    def latest_memory(self) -> str | None:
        row = self.db.execute("SELECT text FROM memory ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None


def _open_writable(path: Path, schema: bool) -> sqlite3.Connection:
    """A writing connection in WAL mode (with `schema`: the tables created where missing)."""
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if schema:
            db.executescript(SCHEMA)
    except sqlite3.OperationalError as exc:
        if db is not None:
            db.close()
        _raise_write_error(path, exc)
    return db


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that never writes, to a checked evo journal: `mode=ro` (needs the -shm, made in the folder),
    or with no log to read `immutable` (makes nothing). Only SQLite opens it: closing a descriptor of our own
    would drop this process's SQLite locks on the file."""
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    immutable = not wal.exists() or (wal.stat().st_size == 0 and not shm.exists())
    db = tables = None
    problem = "empty" if path.stat().st_size == 0 else None
    if problem is None:
        uri = f"file:{quote(str(path.resolve()))}?" + ("immutable=1" if immutable else "mode=ro")
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            problem = "; ".join(r[0] for r in db.execute("PRAGMA quick_check").fetchall()[:3] if r[0] != "ok")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
            if "not a database" in problem or getattr(exc, "sqlite_errorcode", 0) == SQLITE_NOTADB:
                problem = "not sqlite"
            elif not immutable and not shm.exists() and not os.access(path.parent, os.W_OK):
                problem = "log unreadable"
    if problem or not tables.issuperset(TABLES):
        if db is not None:
            db.close()
        raise _not_a_journal(path, problem, tables)
    return db


def _not_a_journal(path: Path, problem: str | None, tables: set | None) -> UserError:
    """What the file at `path` is instead of a readable evo journal, and what to do; evo leaves it as it is."""
    keep, restore = "evo leaves the file as it is", "Restore journal.sqlite from a backup of the run directory"
    if problem == "empty":
        return UserError(f"{path} is empty (0 bytes): no run was ever written into it (a disk full as it was made?). "
                         f"Nothing can be recovered: remove it or its run directory, start again with `evo run`; "
                         f"{keep}")
    if problem == "not sqlite":
        return UserError(f"{path} is not an SQLite database, so not an evo journal: it was overwritten, cut short "
                         f"or is another file. {restore}, or give the directory of an evo run; {keep}")
    if problem == "log unreadable":
        return UserError(f"{path} has a write-ahead log (-wal, from a controller that did not close it) but no -shm "
                         f"file, which SQLite cannot make: {path.parent} is read-only. Make the folder writable, or "
                         "copy the run directory somewhere writable (cp -a) and run the command on the copy")
    if problem:
        return UserError(f"{path} is damaged ({problem}): SQLite cannot read it whole. {restore}; {keep}")
    if not tables.intersection(TABLES):
        found = ", ".join(sorted(tables)[:6]) or "no tables at all"
        return UserError(f"{path} is an SQLite database of another program, not an evo journal (it has {found}; a "
                         f"journal has the tables {', '.join(TABLES)}). Give the directory of an evo run (`evo run` "
                         f"creates one); {keep}")
    missing = ", ".join(t for t in TABLES if t not in tables)
    return UserError(f"{path} lacks the journal tables {missing}: damaged, or not an evo journal. {restore}; {keep}")


def _write_problem(path: Path, exc: sqlite3.Error) -> str | None:
    """"readonly", "full" or "io" for an error of writing the journal's file or folder, else None."""
    primary = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # Python 3.11+; else the message
    text = str(exc)
    if primary == SQLITE_FULL or "disk is full" in text:
        return "full"
    if primary == SQLITE_READONLY or "readonly database" in text:
        return "readonly"
    if primary not in (SQLITE_IOERR, SQLITE_CANTOPEN) and not text.startswith(
            ("disk I/O error", "unable to open database file")):
        return None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "readonly"
    with suppress(OSError):
        return "full" if shutil.disk_usage(path.parent).free < LOW_SPACE_BYTES else "io"
    return "io"


def _raise_write_error(path: Path, exc: sqlite3.Error) -> None:
    """Raise the CannotWrite saying why `path` cannot be written; `exc` itself if it is not about the place."""
    kind, run_dir = _write_problem(path, exc), path.parent
    if kind is None:
        raise exc
    why, fix = {"readonly": (f"{run_dir} is read-only", "make it writable, or copy the run directory somewhere "
                             "writable (cp -a) and run the command on the copy"),
                "full": ("the disk that holds it is full", "free space on that disk (or move the run directory to "
                         f"one with room), then `evo resume {run_dir}`"),
                "io": ("the disk reported an error", f"check the disk, then `evo resume {run_dir}`")}[kind]
    raise CannotWrite(f"cannot write the journal {path}: {why} ({exc}). Nothing of this change was written and "
                      f"what the journal held is intact; {fix}", kind) from None


class _LockedConnection:
    """A sqlite3 connection whose statements run under the journal's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self._db, self._lock = db, lock

    def execute(self, sql: str, params=()):
        with self._lock:
            return _Rows(self._db.execute(sql, params))

    def close(self):
        with self._lock:
            self._db.close()

    def swap(self, db: sqlite3.Connection) -> None:
        """Use `db` from now on (the journal became writable); the old connection is closed."""
        with self._lock:
            old, self._db = self._db, db
            old.close()


class _Rows:
    """A cursor's results, fetched at once so no cursor outlives the lock."""

    def __init__(self, cursor: sqlite3.Cursor):
        self.rowcount, self.lastrowid = cursor.rowcount, cursor.lastrowid
        self._rows = cursor.fetchall()

    def fetchall(self):
        return self._rows

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def __iter__(self):
        return iter(self._rows)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the journal's lock, rolled back on any exception (CannotWrite: the place)."""

    def __init__(self, db, lock: threading.RLock, path: Path):
        self.db, self.lock, self.path = db, lock, path

    def __enter__(self):
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")  # may fail (database locked): then __exit__ never runs
        except sqlite3.OperationalError as exc:
            self.lock.release()
            _raise_write_error(self.path, exc)
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")  # a full disk may refuse the commit itself
            except sqlite3.OperationalError as failed:
                exc = failed
            else:
                self.lock.release()
                return False
        try:
            with suppress(sqlite3.OperationalError):  # no transaction left (SQLite ended it on the error)
                self.db.execute("ROLLBACK")
        finally:
            self.lock.release()
        if isinstance(exc, sqlite3.OperationalError):
            _raise_write_error(self.path, exc)  # a read-only folder, a full disk; else `exc` as it was
        return False
