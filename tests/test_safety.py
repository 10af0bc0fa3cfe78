"""What commands that write do with outputs: locks, atomic and all-or-nothing results, inputs never replaced,
read-only stores, stale cache temporaries, foreign stores, and one-line messages."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli as _cli

from quant_disparity.errors import UserError
from quant_disparity.experiments import Store, load_run, run_experiment

pytestmark = pytest.mark.usefixtures("isolated_cache")

AUDIT = ["--langs", "eng,heb", "--max-tokens", "40", "--n-boot", "50", "--window", "64"]


@pytest.fixture
def model_dir(saved_model):
    return saved_model("llama")


def spec_text(model: Path, name: str = "tiny-safety") -> str:
    return textwrap.dedent(f"""
        name = "{name}"
        description = "tiny"
        n_boot = 50

        [corpus]
        name = "udhr"
        split = "all"
        langs = ["eng", "heb"]
        max_tokens = 40

        [eval]
        window = 64
        context = 8
        batch_tokens = 192

        [grid]
        models = ["{model}"]
        schemes = ["w4g16"]
        [grid.plans]
        all = "{{scheme}}:*"
        """)


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _proc(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "quant_disparity.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        **kw,
    )


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(model_dir, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(model_dir))
    run_experiment(spec, tmp_path / "run")
    return tmp_path / "run"


# -- 1. report --out never replaces a file without --overwrite, and never an input of the run --------------------
def test_report_refuses_existing_files_and_never_replaces_the_runs_inputs(run_dir, tmp_path, capsys):
    other = tmp_path / "audit.json"
    other.write_text('{"keep": true}')
    code, _, err = _cli(["report", str(run_dir), "--format", "html", "--out", str(other)], capsys)
    assert code == 2 and "already exists" in _one_error_line(err) and "--overwrite" in err
    assert other.read_text() == '{"keep": true}'
    inputs = {n: (run_dir / n).read_bytes() for n in ("spec.toml", "store.sqlite")}
    for name in inputs:
        for extra in ([], ["--overwrite"]):
            code, _, err = _cli(
                ["report", str(run_dir), "--format", "md", "--out", str(run_dir / name), *extra], capsys
            )
            assert code == 2 and "is an input of the run" in _one_error_line(err)
            assert (run_dir / name).read_bytes() == inputs[name]
    code, _, err = _cli(["report", str(run_dir), "--out", str(tmp_path)], capsys)  # a directory
    assert code == 2 and "is a directory" in _one_error_line(err)
    code, _, err = _cli(["report", str(run_dir), "--format", "md", "--out", str(other), "--overwrite"], capsys)
    assert code == 0, err
    assert other.read_text().startswith("#") and not list(tmp_path.glob(".audit.json*"))  # no lock/temp left


# -- 2. one writer per output: a second command exits 2 with one line, the first one's result intact ----------
def test_a_held_lock_refuses_every_writing_command(run_dir, model_dir, tmp_path, capsys):
    from quant_disparity._io import lock_dir, lock_file_for

    out = tmp_path / "audit"
    out.mkdir()
    with lock_dir(out):
        code, _, err = _cli(
            ["audit", "--model", str(model_dir), "--scheme", "w4g16", *AUDIT, "--out", str(out)], capsys
        )
        assert code == 2 and f"is in use by another quant-disparity process (pid {os.getpid()})" in _one_error_line(err)
        code, _, err = _cli(["locate", "--model", str(model_dir), *AUDIT, "--out", str(out)], capsys)
        assert code == 2 and "in use by another quant-disparity process" in _one_error_line(err)
    assert not (out / "audit.json").exists() and not (out / "locate.json").exists()

    before = _snapshot(run_dir)
    with lock_dir(run_dir):
        code, _, err = _cli(["run", str(run_dir / "spec.toml"), "--out", str(run_dir)], capsys)
        assert code == 2 and f"{run_dir} is in use by another quant-disparity process" in _one_error_line(err)
    assert _snapshot(run_dir) == before

    report = tmp_path / "r.md"
    with lock_file_for(report):
        code, _, err = _cli(["report", str(run_dir), "--format", "md", "--out", str(report)], capsys)
        assert code == 2 and "in use by another quant-disparity process" in _one_error_line(err)
    assert not report.exists()


def test_a_lock_held_by_another_process_refuses_the_cli(run_dir, tmp_path):
    from quant_disparity._io import lock_dir

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from quant_disparity._io import lock_dir; "
            f"l = lock_dir({str(run_dir)!r}); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = _proc(["run", str(run_dir / "spec.toml"), "--out", str(run_dir)])
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2
        assert f"in use by another quant-disparity process (pid {holder.pid})" in _one_error_line(err)
    finally:
        holder.kill()  # a holder that dies without releasing leaves its lock file, but not a lock
        holder.communicate(timeout=60)
    assert (run_dir / ".quant-disparity.lock").exists()
    with lock_dir(run_dir):
        pass
    assert not (run_dir / ".quant-disparity.lock").exists()  # released and removed


def test_two_concurrent_audits_on_one_out_exactly_one_writes(model_dir, tmp_path):
    # Whatever the interleaving: overlapping, the second finds the lock; one after the other, it finds
    # audit.json (no --overwrite). Either way exactly one succeeds and the result is its own, whole.
    out = tmp_path / "out"
    argv = ["audit", "--model", str(model_dir), "--scheme", "w4g16", *AUDIT, "--out", str(out)]
    procs = [_proc(argv), _proc(argv)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    assert sorted(p.returncode for p, _, _ in results) == [0, 2], [e for _, _, e in results]
    ((winner, w_out, _),) = [r for r in results if r[0].returncode == 0]
    ((_, _, l_err),) = [r for r in results if r[0].returncode == 2]
    line = _one_error_line(l_err)
    assert "in use by another quant-disparity process" in line or "already holds audit.json" in line
    data = json.loads((out / "audit.json").read_text())
    assert data["config"]["scheme"] == "w4g16" and (out / "audit.md").exists() and (out / "config.toml").exists()
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "audit.md", "config.toml"]


def test_two_concurrent_runs_on_one_out_compute_each_trial_once(model_dir, tmp_path):
    # Overlapping, the second exits 2 on the lock; one after the other, the second finds every trial stored.
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(model_dir))
    out = tmp_path / "run"
    procs = [_proc(["run", str(spec), "--out", str(out)]) for _ in range(2)]
    results = []
    for p in procs:
        o, e = p.communicate(timeout=600)
        results.append((p.returncode, o, e))
    assert all(code in (0, 2) for code, _, _ in results) and any(code == 0 for code, _, _ in results), results
    for code, _, err in results:
        if code == 2:
            assert "in use by another quant-disparity process" in _one_error_line(err)
    computed = []
    for log in out.glob("*/run.log"):
        text = log.read_text()
        computed += [
            int(line.split(" trials computed")[0].split()[-1])
            for line in text.splitlines()
            if " trials computed" in line
        ]
    assert sum(computed) == 1  # the spec has one trial
    _, store = load_run(out)
    assert len(store.rows()) > 0
    store.close()


# -- 3. --scheme none, and a failed command leaves nothing behind -----------------------------------------------
def test_audit_scheme_none_compares_the_reference_with_itself(model_dir, tmp_path, capsys):
    out = tmp_path / "none"
    code, stdout, err = _cli(
        ["audit", "--model", str(model_dir), "--scheme", "none", *AUDIT, "--out", str(out)], capsys
    )
    assert code == 0, err
    data = json.loads((out / "audit.json").read_text())
    assert all(r["delta_bpb"]["value"] == 0 for r in data["languages"])
    assert data["summary"]["disparity"]["ratio"]["value"] is None  # undefined, reported as such
    md = (out / "audit.md").read_text()
    assert "Quantized: nothing" in md and "undefined" in md


def test_locate_scheme_none_is_refused_before_any_work(model_dir, tmp_path, capsys):
    out = tmp_path / "loc"
    code, _, err = _cli(["locate", "--model", str(model_dir), "--scheme", "none", *AUDIT, "--out", str(out)], capsys)
    assert code == 2 and "quantizes nothing" in _one_error_line(err)
    assert not out.exists()


def test_a_failing_audit_or_locate_leaves_no_partial_result(model_dir, tmp_path, capsys, monkeypatch):
    import quant_disparity.report.plots as plots
    import quant_disparity.report.tables as tables

    def boom(*a, **k):
        raise UserError("rendering failed")

    argv = ["audit", "--model", str(model_dir), "--scheme", "w4g16", *AUDIT]
    monkeypatch.setattr(tables, "audit_markdown", boom)  # fails after audit.json is rendered
    fresh = tmp_path / "fresh"
    code, _, err = _cli(argv + ["--out", str(fresh)], capsys)
    assert code == 2 and "rendering failed" in err
    assert not fresh.exists()  # this command created it: removed again
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    code, _, _ = _cli(argv + ["--out", str(kept)], capsys)
    assert code == 2 and _snapshot(kept) == {"notes.txt": b"mine"} and sorted(os.listdir(kept)) == ["notes.txt"]
    monkeypatch.undo()
    (kept / ".staging-killed").mkdir()  # what a SIGKILLed command leaves (its lock is gone with it)
    (kept / ".staging-killed" / "audit.json").write_text("{")
    code, _, err = _cli(argv + ["--out", str(kept)], capsys)  # nothing half-written blocks the rerun
    assert code == 0, err
    assert {"audit.json", "audit.md", "config.toml", "notes.txt"} == set(os.listdir(kept))

    monkeypatch.setattr(plots, "bars_by_group", boom)  # fails after heatmap.png is saved
    loc = tmp_path / "loc"
    code, _, err = _cli(["locate", "--model", str(model_dir), "--scheme", "w4g16", *AUDIT, "--out", str(loc)], capsys)
    assert code == 2 and not loc.exists()


# -- 4. the spec is recorded before any work -------------------------------------------------------------------
def test_spec_is_recorded_before_computing(model_dir, tmp_path, monkeypatch):
    import quant_disparity.experiments as experiments

    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(model_dir))
    out = tmp_path / "run"
    seen = {}

    def killed(spec_, store, **kw):
        seen["spec.toml"] = (out / "spec.toml").read_text()
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_spec", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, out)
    assert seen["spec.toml"] == spec.read_text()
    s, store = load_run(out)  # a killed run can be reported
    assert s.name == "tiny-safety"
    store.close()
    other = tmp_path / "o.toml"
    other.write_text(spec_text(model_dir, name="another"))
    with pytest.raises(UserError, match="holds the run of another spec"):
        run_experiment(other, out)


# -- 5. reports read stores read-only ---------------------------------------------------------------------------
def test_reports_open_the_store_read_only(run_dir):
    _, store = load_run(run_dir)
    try:
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            store.db.execute("INSERT INTO meta VALUES ('x', 'y')")
    finally:
        store.close()


def _read_only_view(d: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI with ``d`` read-only: a private read-only bind mount as root, ``chmod a-w`` otherwise."""
    cmd = [sys.executable, "-m", "quant_disparity.cli", *argv]
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(d)], check=True)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(d)], check=True)
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare for a read-only bind mount")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{d}' '{d}'"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here ({probe.stderr.decode().strip()})")
    script = f"mount --bind -o ro '{d}' '{d}' && touch '{d}/probe' 2>/dev/null && exit 99; exec \"$@\""
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *cmd],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )


def test_a_run_on_read_only_media_can_be_reported(run_dir, tmp_path):
    before = _snapshot(run_dir)
    assert not (run_dir / "store.sqlite-wal").exists()  # the run closed its store: no log left
    r = _read_only_view(run_dir, ["report", str(run_dir), "--format", "md", "--out", str(tmp_path / "r.md")])
    assert r.returncode == 0, r.stderr
    assert "tiny-safety" in (tmp_path / "r.md").read_text()
    assert _snapshot(run_dir) == before


def test_a_killed_runs_log_on_read_only_media_is_read_too(run_dir, tmp_path):
    # A writer killed before its checkpoint leaves store.sqlite-wal holding committed data.
    code = (
        "import os, sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "db.execute(\"INSERT INTO meta VALUES ('killed-writer', 'yes')\"); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(run_dir / "store.sqlite")], check=True)
    assert (run_dir / "store.sqlite-wal").stat().st_size > 0
    # Without its WAL index (-shm: e.g. a copy of the directory that left it out) SQLite cannot open the store on
    # read-only media at all, and `immutable` would silently ignore the log; the data must still be read.
    (run_dir / "store.sqlite-shm").unlink()
    probe = (
        "import sys; from quant_disparity.experiments import Store; s = Store(sys.argv[1], readonly=True); "
        "print(s.db.execute(\"SELECT value FROM meta WHERE key = 'killed-writer'\").fetchone()[0]); s.close()"
    )
    r = _read_only_view(run_dir, ["report", str(run_dir), "--format", "md", "--out", str(tmp_path / "r.md")])
    assert r.returncode == 0, r.stderr
    if os.geteuid() == 0:
        script = f"mount --bind -o ro '{run_dir}' '{run_dir}' && exec \"$@\""
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-c", probe, str(run_dir / "store.sqlite")],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        assert r.returncode == 0 and r.stdout.strip() == "yes", r.stderr


# -- 6. stale cache temporaries and foreign stores --------------------------------------------------------------
def test_stale_dequantization_temporaries_are_removed_at_the_next_load(tmp_path):
    from quant_disparity.models import load_model
    from quant_disparity.models.loading import cache_root

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    models = cache_root() / "models"
    stale = models / f"0123456789abcdef-tf1-gguf1.tmp-{dead.pid}"
    live = models / f"0123456789abcdef-tf1-gguf1.tmp-{os.getppid()}"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x" * 1000)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="could not read GGUF"):
        load_model(str(bad))
    assert not stale.exists() and live.exists()


def test_a_foreign_sqlite_file_is_refused_untouched(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    foreign = out / "store.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices VALUES (1, 9.5)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(UserError, match="database of another program .*invoices"):
        Store(foreign)
    assert foreign.read_bytes() == before
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(model_dir))
    code, _, err = _cli(["run", str(spec), "--out", str(out)], capsys)
    assert code == 2 and "not a quant-disparity store" in _one_error_line(err)
    assert foreign.read_bytes() == before and sorted(os.listdir(out)) == ["store.sqlite"]
    # a sqlite file with our table names but another program's application id
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("PRAGMA application_id = 42")
    db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    db.commit()
    db.close()
    with pytest.raises(UserError, match="application id 0x2a"):
        Store(other)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    Store(empty).close()  # an empty new file is fine
    Store(empty).close()


# -- 7. messages --------------------------------------------------------------------------------------------------
def test_interrupting_run_says_what_was_kept_in_one_line(model_dir, tmp_path, capsys, monkeypatch):
    import quant_disparity.experiments as experiments

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_spec", interrupted)
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(model_dir))
    code, _, err = _cli(["run", str(spec), "--out", str(tmp_path / "run")], capsys)
    assert code == 130
    lines = err.splitlines()
    assert (
        lines[-1] == "interrupted; the trials committed so far are kept in the store: rerun the same command to finish"
    )
    assert "nothing was written" not in err and sum("interrupted" in x for x in lines) == 1, err


def test_run_errors_are_one_line_without_a_progress_bar(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "spec.toml").write_text(spec_text(model_dir, name="another"))
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(model_dir))
    code, _, err = _cli(["run", str(spec), "--out", str(out)], capsys)
    assert code == 2 and "holds the run of another spec" in _one_error_line(err)


def test_a_broken_model_directory_is_not_blamed_on_the_hub(model_dir, tmp_path, capsys):
    from quant_disparity.models import load_model

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(model_dir / "config.json", no_weights / "config.json")
    truncated = tmp_path / "truncated"
    shutil.copytree(model_dir, truncated)
    w = truncated / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    for d in (no_weights, truncated):
        with pytest.raises(UserError) as e:
            load_model(str(d))
        msg = str(e.value)
        assert f"model directory {d}" in msg and "Hub" not in msg and "network" not in msg, msg
    code, _, err = _cli(
        ["audit", "--model", str(truncated), "--scheme", "w4g16", *AUDIT, "--out", str(tmp_path / "a")], capsys
    )
    assert code == 2 and "model directory" in _one_error_line(err) and not (tmp_path / "a").exists()
    # run: informational lines may come first, but the error is the last line, whole, after no progress bar;
    # the run directory this call created holds no trial and is removed
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(truncated))
    code, _, err = _cli(["run", str(spec), "--out", str(tmp_path / "r")], capsys)
    lines = err.splitlines()
    assert code == 2 and lines[-1].startswith("error: could not load the model from the model directory"), err
    assert sum(x.startswith("error") for x in lines) == 1 and not any("━" in x or not x.strip() for x in lines), err
    assert not (tmp_path / "r").exists()
