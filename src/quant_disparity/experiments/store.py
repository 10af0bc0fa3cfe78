"""The results store: SQLite (WAL journal, one transaction per commit), one row per (trial, document).

Trials are keyed by a content hash of everything that determines their numbers (model digest, corpus digest
and selection, resolved plan, evaluation settings, results version), so a stored trial is never recomputed
and any change makes a new one. Work is committed per batch: while a trial is in progress its per-batch
partial sums sit in ``partials``; the transaction that stores its last batch also writes its final ``rows``
(exact sums, :func:`math.fsum`, so the order batches arrived in cannot change a bit) and marks it done.
A process killed at any moment loses at most the batch in flight.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError

SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of our stores ("QDIS"), so a store is recognised as ours before anything is added.
APPLICATION_ID = 0x51444953

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial_key TEXT PRIMARY KEY,
    model TEXT NOT NULL, model_digest TEXT NOT NULL, scheme TEXT NOT NULL, plan TEXT NOT NULL,
    resolved TEXT NOT NULL, corpus_digest TEXT NOT NULL, selection TEXT NOT NULL, eval TEXT NOT NULL,
    code_version TEXT NOT NULL, n_batches INTEGER NOT NULL, status TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}', created TEXT NOT NULL, finished TEXT
);
CREATE TABLE IF NOT EXISTS documents (
    trial_key TEXT NOT NULL, doc INTEGER NOT NULL, lang TEXT NOT NULL, doc_id TEXT NOT NULL,
    bytes INTEGER NOT NULL, chars INTEGER NOT NULL, tokens INTEGER NOT NULL, n_pred INTEGER NOT NULL,
    PRIMARY KEY (trial_key, doc)
);
CREATE TABLE IF NOT EXISTS partials (
    trial_key TEXT NOT NULL, batch INTEGER NOT NULL, doc INTEGER NOT NULL,
    nll REAL NOT NULL, nll_ref REAL NOT NULL, kl REAL NOT NULL, top1 REAL NOT NULL,
    PRIMARY KEY (trial_key, batch, doc)
);
CREATE TABLE IF NOT EXISTS batches_done (trial_key TEXT NOT NULL, batch INTEGER NOT NULL,
    PRIMARY KEY (trial_key, batch));
CREATE TABLE IF NOT EXISTS rows (
    trial_key TEXT NOT NULL, lang TEXT NOT NULL, doc_id TEXT NOT NULL, doc INTEGER NOT NULL,
    bytes INTEGER NOT NULL, chars INTEGER NOT NULL, tokens INTEGER NOT NULL, n_pred INTEGER NOT NULL,
    nll REAL NOT NULL, nll_ref REAL NOT NULL, kl REAL NOT NULL, top1 REAL NOT NULL,
    PRIMARY KEY (trial_key, doc)
);
CREATE TABLE IF NOT EXISTS spec_trials (spec TEXT NOT NULL, trial_name TEXT NOT NULL, trial_key TEXT NOT NULL,
    PRIMARY KEY (spec, trial_name));
"""


#: Task results (``run`` with a ``[tasks]`` section), added to a store when its first task result is committed, so
#: stores without tasks are unchanged. A task run is keyed by its trial's key and the task's content
#: (:func:`quant_disparity.experiments.tasks.task_key`); ``task_items`` holds one value per (language, item,
#: metric, arm): the item's ``num`` and ``den`` (a language's value is Σ num / Σ den).
_TASK_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_runs (
    task_key TEXT PRIMARY KEY, trial_key TEXT NOT NULL, task TEXT NOT NULL, settings TEXT NOT NULL,
    info TEXT NOT NULL, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_items (
    task_key TEXT NOT NULL, lang TEXT NOT NULL, item INTEGER NOT NULL, item_id TEXT NOT NULL,
    metric TEXT NOT NULL, arm TEXT NOT NULL, num REAL NOT NULL, den REAL NOT NULL,
    PRIMARY KEY (task_key, lang, item, metric, arm)
);
"""


class ResultRow(NamedTuple):
    """One row of the ``rows`` table: one document of one finished trial, with its exact sums (nats)."""

    trial_key: str
    lang: str
    doc_id: str
    doc: int  # position in the trial's selection
    bytes: int
    chars: int
    tokens: int
    n_pred: int
    nll: float  # the trial's model
    nll_ref: float  # the reference
    kl: float
    top1: float


ROW_COLUMNS = ResultRow._fields
#: Trial keys per ``IN (...)`` query: under the 999 host parameters older SQLite builds allow at most.
_KEYS_PER_QUERY = 500


#: SQLite's primary result codes that the store turns into user errors (the extended codes carry them in their low
#: byte): https://www.sqlite.org/rescode.html
_SQLITE_BUSY_OR_LOCKED = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14


def _sqlite_code(e: sqlite3.Error) -> int | None:
    """The primary SQLite result code of an error raised by SQLite (None for errors of the sqlite3 module itself)."""
    code = getattr(e, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class Store:
    """Open (or create) a store. Raises :class:`UserError` for a read-only, locked, corrupt or newer store."""

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 5.0):
        self.path = Path(path)
        self.readonly = readonly
        self._copy: Path | None = None
        if readonly:
            if not self.path.exists():
                raise UserError(f"store {self.path} not found", "run the experiment first")
            self.db = self._connect_readonly(timeout)
        else:
            if self.path.exists() and not os.access(self.path, os.W_OK):
                raise UserError(f"store {self.path} is read-only", "make it writable or choose another --out")
            if not self.path.parent.exists() or not os.access(self.path.parent, os.W_OK):
                raise UserError(f"store directory {self.path.parent} is not writable", "choose another --out")
            self.db = self._connect(str(self.path), timeout)
            self._refuse_foreign()
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._init()
        self._check_version()

    def _uri(self, path: Path, **params: str) -> str:
        from urllib.parse import quote

        return f"file:{quote(str(path.resolve()))}?" + "&".join(f"{k}={v}" for k, v in params.items())

    def _connect_readonly(self, timeout: float) -> sqlite3.Connection:
        """``mode=ro``; on read-only media, where SQLite cannot create the WAL index next to the store, the
        file is opened ``immutable`` (nothing can change it there), or, when it still has a write-ahead log
        with data (a run killed before its last checkpoint), a private copy of both is read instead."""
        try:
            return self._connect(self._uri(self.path, mode="ro"), timeout, uri=True, quiet=True)
        except sqlite3.OperationalError as e:
            if _sqlite_code(e) not in (_SQLITE_CANTOPEN, _SQLITE_READONLY):
                return self._connect(self._uri(self.path, mode="ro"), timeout, uri=True)  # the usual message
        wal = self.path.with_name(self.path.name + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            return self._connect(self._uri(self.path, mode="ro", immutable="1"), timeout, uri=True)
        import shutil
        import tempfile

        self._copy = Path(tempfile.mkdtemp(prefix="quant-disparity-store-"))
        copy = self._copy / self.path.name
        shutil.copyfile(self.path, copy)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        return self._connect(self._uri(copy, mode="ro"), timeout, uri=True)

    def _connect(self, target: str, timeout: float, uri: bool = False, quiet: bool = False) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(target, timeout=timeout, uri=uri, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            if quiet and isinstance(e, sqlite3.OperationalError):
                raise
            msg = str(e)
            if _sqlite_code(e) in _SQLITE_BUSY_OR_LOCKED:
                raise UserError(f"store {self.path} is locked by another run", "wait for it to finish") from None
            if _sqlite_code(e) == _SQLITE_READONLY:
                raise UserError(f"store {self.path} is read-only", "make it writable or choose another --out") from None
            raise UserError(
                f"store {self.path} is not a usable SQLite database ({msg})", "point --out at a fresh directory"
            ) from None

    def _refuse_foreign(self) -> None:
        """Refuse a SQLite file of another program before anything (journal mode, tables) is changed in it."""
        (app_id,) = self.db.execute("PRAGMA application_id").fetchone()
        names = [n for (n,) in self.db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        ours = app_id == APPLICATION_ID or (
            app_id == 0 and "meta" in names and "trials" in names and self._has_schema_version()
        )
        if (names and not ours) or app_id not in (0, APPLICATION_ID):
            what = (
                f"application id {app_id:#x}"
                if app_id not in (0, APPLICATION_ID)
                else f"tables {', '.join(sorted(names)[:4])}{', ...' if len(names) > 4 else ''}"
            )
            raise UserError(
                f"store {self.path} is a SQLite database of another program ({what}), not a quant-disparity store",
                "point --out at a fresh directory",
            )

    def _has_schema_version(self) -> bool:
        try:
            return self.db.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        except sqlite3.DatabaseError:
            return False

    def _init(self) -> None:
        if self._has_meta():
            return
        try:  # one script, one transaction: a half-created store cannot exist
            self.db.executescript(
                f"BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID}; {_SCHEMA} "
                f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
            )
        except sqlite3.OperationalError as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if _sqlite_code(e) in _SQLITE_BUSY_OR_LOCKED:
                raise UserError(f"store {self.path} is locked by another run", "wait for it to finish") from None
            raise

    def _has_meta(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None

    def _check_version(self) -> None:
        if not self._has_meta():
            raise UserError(f"store {self.path} is not a quant-disparity store", "point --out at a fresh directory")
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise UserError(
                f"store {self.path} has schema version {version}, newer than this quant-disparity ({SCHEMA_VERSION})",
                "upgrade quant-disparity to read it",
            )

    @contextmanager
    def transaction(self):
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: all or nothing, and only one writer at a time."""
        if self.readonly:
            raise UserError(f"store {self.path} was opened read-only")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _sqlite_code(e) in _SQLITE_BUSY_OR_LOCKED:
                raise UserError(f"store {self.path} is locked by another run", "wait for it to finish") from None
            if _sqlite_code(e) == _SQLITE_READONLY:
                raise UserError(f"store {self.path} is read-only", "make it writable") from None
            raise
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
        if self._copy is not None:
            import shutil

            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    # -- trials --------------------------------------------------------------------------------------------
    def trial_status(self, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM trials WHERE trial_key = ?", (key,)).fetchone()
        return row[0] if row else None

    def register(self, key: str, meta: dict, documents: list[dict], spec: str, name: str, created: str) -> None:
        """Record a trial (once) with its documents, and map ``spec``'s trial ``name`` to it."""
        with self.transaction() as db:
            stored = db.execute("SELECT info FROM trials WHERE trial_key = ?", (key,)).fetchone()
            if stored is not None:
                # a record field an older version did not store (a calibrated trial's calibration record) is added;
                # nothing stored is changed: the key is a hash of the content these fields describe
                info, record = json.loads(stored[0]), meta.get("info", {}).get("calibration")
                if record is not None and "calibration" not in info:
                    db.execute(
                        "UPDATE trials SET info = ? WHERE trial_key = ?",
                        (json.dumps({**info, "calibration": record}), key),
                    )
            else:
                db.execute(
                    "INSERT INTO trials (trial_key, model, model_digest, scheme, plan, resolved, corpus_digest,"
                    " selection, eval, code_version, n_batches, status, info, created)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        key,
                        meta["model"],
                        meta["model_digest"],
                        meta["scheme"],
                        meta["plan"],
                        json.dumps(meta["resolved"]),
                        meta["corpus_digest"],
                        json.dumps(meta["selection"]),
                        json.dumps(meta["eval"]),
                        meta["code_version"],
                        meta["n_batches"],
                        "pending",
                        json.dumps(meta.get("info", {})),
                        created,
                    ),
                )
                db.executemany(
                    "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?)",
                    [
                        (key, d["doc"], d["lang"], d["doc_id"], d["bytes"], d["chars"], d["tokens"], d["n_pred"])
                        for d in documents
                    ],
                )
            db.execute("INSERT OR REPLACE INTO spec_trials VALUES (?,?,?)", (spec, name, key))

    def done_batches(self, key: str) -> set[int]:
        return {b for (b,) in self.db.execute("SELECT batch FROM batches_done WHERE trial_key = ?", (key,))}

    def commit_batch(self, batch: int, results: dict[str, list[tuple]], finished_at: str) -> list[str]:
        """Store one batch's per-document partial sums for several trials; finish trials that are complete.

        ``results[key] = [(doc, nll, nll_ref, kl, top1), ...]``. Returns the keys finished by this commit.
        """
        finished = []
        with self.transaction() as db:
            for key, parts in results.items():
                if db.execute("SELECT 1 FROM batches_done WHERE trial_key = ? AND batch = ?", (key, batch)).fetchone():
                    continue  # already stored by an earlier run: keep the first, never duplicate
                db.executemany("INSERT INTO partials VALUES (?,?,?,?,?,?,?)", [(key, batch, *p) for p in parts])
                db.execute("INSERT INTO batches_done VALUES (?, ?)", (key, batch))
                (n_batches,) = db.execute("SELECT n_batches FROM trials WHERE trial_key = ?", (key,)).fetchone()
                (n_done,) = db.execute("SELECT count(*) FROM batches_done WHERE trial_key = ?", (key,)).fetchone()
                if n_done == n_batches:
                    self._mark_finished(db, key, finished_at)
                    finished.append(key)
        return finished

    @staticmethod
    def _mark_finished(db: sqlite3.Connection, key: str, finished_at: str) -> None:
        sums: dict[int, list[list[float]]] = {}
        for doc, nll, nll_ref, kl, top1 in db.execute(
            "SELECT doc, nll, nll_ref, kl, top1 FROM partials WHERE trial_key = ?", (key,)
        ):
            sums.setdefault(doc, [[], [], [], []])
            for acc, v in zip(sums[doc], (nll, nll_ref, kl, top1)):
                acc.append(v)
        rows = []
        for doc, lang, doc_id, nbytes, chars, tokens, n_pred in db.execute(
            "SELECT doc, lang, doc_id, bytes, chars, tokens, n_pred FROM documents WHERE trial_key = ? ORDER BY doc",
            (key,),
        ):
            parts = sums.get(doc, [[], [], [], []])
            rows.append(
                ResultRow(key, lang, doc_id, doc, nbytes, chars, tokens, n_pred, *(math.fsum(p) for p in parts))
            )
        db.executemany(f"INSERT INTO rows VALUES ({','.join('?' * len(ROW_COLUMNS))})", rows)
        db.execute("DELETE FROM partials WHERE trial_key = ?", (key,))
        db.execute("UPDATE trials SET status = 'done', finished = ? WHERE trial_key = ?", (finished_at, key))

    # -- task results ------------------------------------------------------------------------------------
    def _has_task_tables(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'task_runs'").fetchone() is not None

    def task_done(self, task_key: str) -> bool:
        if not self._has_task_tables():
            return False
        return self.db.execute("SELECT 1 FROM task_runs WHERE task_key = ?", (task_key,)).fetchone() is not None

    def commit_task(
        self,
        task_key: str,
        trial_key: str,
        task: str,
        settings: dict,
        info: dict,
        items: list[tuple[str, int, str, str, str, float, float]],
        created: str,
    ) -> bool:
        """Store one task run of one trial, all or nothing: ``items`` = [(lang, item, item_id, metric, arm, num,
        den)]. A run already stored is kept (never duplicated or replaced); returns whether this call stored it."""
        if not self._has_task_tables():
            with self.transaction() as db:
                for statement in _TASK_SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM task_runs WHERE task_key = ?", (task_key,)).fetchone():
                return False
            db.executemany("INSERT INTO task_items VALUES (?,?,?,?,?,?,?,?)", [(task_key, *it) for it in items])
            db.execute(
                "INSERT INTO task_runs VALUES (?,?,?,?,?,?)",
                (task_key, trial_key, task, json.dumps(settings, sort_keys=True), json.dumps(info), created),
            )
        return True

    def task_run(self, task_key: str) -> dict | None:
        """A stored task run: its record and its items as ``{lang: {"item_ids": [...], "values": {(metric, arm):
        (num array, den array)}}}`` in item order; None when it is not stored."""
        if not self.task_done(task_key):
            return None
        trial_key, task, settings, info, created = self.db.execute(
            "SELECT trial_key, task, settings, info, created FROM task_runs WHERE task_key = ?", (task_key,)
        ).fetchone()
        langs: dict[str, dict] = {}
        for lang, item, item_id, metric, arm, num, den in self.db.execute(
            "SELECT lang, item, item_id, metric, arm, num, den FROM task_items WHERE task_key = ? ORDER BY rowid",
            (task_key,),
        ):
            entry = langs.setdefault(lang, {"items": {}, "values": {}})
            entry["items"][item] = item_id
            entry["values"].setdefault((metric, arm), {})[item] = (num, den)
        out = {}
        for lang, entry in langs.items():
            order = sorted(entry["items"])
            out[lang] = {
                "item_ids": [entry["items"][i] for i in order],
                "values": {
                    k: tuple(np.array([v[i][j] for i in order], dtype=np.float64) for j in (0, 1))
                    for k, v in entry["values"].items()
                },
            }
        return {
            "trial_key": trial_key,
            "task": task,
            "settings": json.loads(settings),
            "info": json.loads(info),
            "created": created,
            "languages": out,
        }

    # -- reading -------------------------------------------------------------------------------------------
    def spec_trials(self, spec: str) -> dict[str, str]:
        return dict(self.db.execute("SELECT trial_name, trial_key FROM spec_trials WHERE spec = ?", (spec,)))

    def trial(self, key: str) -> dict:
        cur = self.db.execute("SELECT * FROM trials WHERE trial_key = ?", (key,))
        cols = [c[0] for c in cur.description]
        row = cur.fetchone()
        if row is None:
            raise KeyError(key)
        out = dict(zip(cols, row))
        for k in ("resolved", "selection", "eval", "info"):
            out[k] = json.loads(out[k])
        return out

    def rows(self, keys: Iterable[str] | None = None) -> list[ResultRow]:
        """The rows of the trials ``keys`` (all trials when None), by trial key, then document."""
        q = f"SELECT {', '.join(ROW_COLUMNS)} FROM rows"
        if keys is None:
            return [ResultRow._make(r) for r in self.db.execute(q + " ORDER BY trial_key, doc")]
        keys = list(keys)
        out = []
        for i in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[i : i + _KEYS_PER_QUERY]
            cur = self.db.execute(
                q + f" WHERE trial_key IN ({','.join('?' * len(chunk))}) ORDER BY trial_key, doc", chunk
            )
            out += [ResultRow._make(r) for r in cur]
        return out

    def dataframe(self, spec: str | None = None):
        """A pandas DataFrame of document rows (with trial names when ``spec`` is given)."""
        import pandas as pd

        df = pd.DataFrame(self.rows(), columns=list(ROW_COLUMNS))
        if spec is not None:
            names = pd.DataFrame(list(self.spec_trials(spec).items()), columns=["trial", "trial_key"])
            df = names.merge(df, on="trial_key", how="inner")
        return df

    def export(self, path: str | Path, spec: str | None = None) -> Path:
        """Write the document rows to ``.csv`` or ``.parquet`` (by suffix)."""
        from .._io import atomic_path

        path = Path(path)
        if path.suffix not in (".parquet", ".csv"):
            raise UserError(f"cannot export to {path.name}", "use a .csv or .parquet file name")
        df = self.dataframe(spec)
        with atomic_path(path) as tmp:
            if path.suffix == ".parquet":
                try:
                    df.to_parquet(tmp, index=False)
                except ImportError:
                    raise UserError("Parquet export needs pyarrow", "run: pip install pyarrow") from None
            else:
                df.to_csv(tmp, index=False)
        return path
