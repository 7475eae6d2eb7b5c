"""The training grid on executors: the same runs on every engine, failures reported without
stopping the others, two grids on one folder, a killed worker, and clear errors.

- In-process, a local process pool, a Dask LocalCluster and submitit's LocalExecutor give the
  same runs at the same thread count: every trace entry but its wall time, and the weights,
  bit for bit.
- A run that fails is listed with its error; the others finish; a rerun retries only it.
- Two grids started at once on one folder train each run once (a lock per run).
- Killing a worker mid-run (held by a hook after epoch 2 of 4, so the kill never races the
  run's end), then rerunning, resumes the run: the result equals a run never interrupted.
"""
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from fa_nb_utils.paper import executors
from fa_nb_utils.paper.executors import GridRunError, make_executor
from fa_nb_utils.paper.experiments import profile_data, run_grid
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.paper.runner import ReproductionError, check_grid

TINY = get_profile("tiny")
trainer_module = importlib.import_module("fa_nb_utils.trainer")


@pytest.fixture(scope="module")
def grid_data_root(tmp_path_factory):
    """The tiny profile's data in a folder the workers read through the config (data_root)."""
    root = tmp_path_factory.mktemp("grid_data")
    profile_data(TINY, data_root=str(root))   # generated once, before any worker starts
    return str(root)


def _runs(records):
    """What must agree across engines: each run's trace without its wall time, and weights."""
    return [([{k: v for k, v in e.items() if k != "seconds"} for e in r.result.trace],
             {k: v.clone() for k, v in r.result.model.state_dict().items()}) for r in records]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        ta == tb and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        for (ta, wa), (tb, wb) in zip(a, b))


def test_every_engine_gives_the_in_process_runs_bit_identically(grid_data_root, tmp_path):
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("distributed")
    kw = dict(rules=["dfa"], seeds=[42], data_root=grid_data_root, progress=False)
    reference = run_grid(TINY, tmp_path / "inprocess", executor="inprocess", threads=1, **kw)
    assert [r.status for r in reference] == ["trained", "trained"]
    local = submitit.LocalExecutor(folder=str(tmp_path / "submitit_jobs"))
    local.update_parameters(timeout_min=20)
    for name, engine in [("process", dict(executor="process", workers=2, threads=1)),
                         ("dask", dict(executor="dask", workers=2, threads=1)),
                         ("submitit", dict(executor=local, workers=2, threads=1))]:
        records = run_grid(TINY, tmp_path / name, **engine, **kw)
        assert [r.status for r in records] == ["trained", "trained"], name
        assert _same(_runs(records), _runs(reference)), name
        assert all((r.result.run_dir / executors.WORKER_LOG).exists() for r in records), name
        # a rerun on the same engine submits nothing and returns the same runs
        again = run_grid(TINY, tmp_path / name, **engine, **kw)
        assert [r.status for r in again] == ["reused", "reused"], name
        assert _same(_runs(again), _runs(reference)), name


def test_a_failed_run_does_not_stop_the_others_and_a_rerun_retries_only_it(
        grid_data_root, tmp_path, monkeypatch, capsys):
    real = trainer_module.train

    def flaky(config, *args, **kwargs):
        if config.seed == 123 and not config.freeze_blocks:
            raise RuntimeError("injected failure for this test")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train", flaky)
    kw = dict(rules=["bp"], data_root=grid_data_root)
    with pytest.raises(GridRunError) as err:
        run_grid(TINY, tmp_path, **kw)
    assert [f.label for f in err.value.failures] == ["bp seed 123"]
    assert "injected failure for this test" in str(err.value)
    assert "1 of 4 run(s) failed; the other 3 finished" in str(err.value)
    out = capsys.readouterr().out
    assert "[grid] 4/4 runs finished (3 trained, 0 resumed, 0 reused, 1 failed)" in out
    assert "bp seed 123: FAILED" in out

    monkeypatch.setattr(trainer_module, "train", real)
    records = run_grid(TINY, tmp_path, **kw)
    assert {(r.seed, r.frozen): r.status for r in records} == {
        (42, False): "reused", (123, False): "trained", (42, True): "reused",
        (123, True): "reused"}
    capsys.readouterr()
    run_grid(TINY, tmp_path, **kw)
    assert "[grid] all 4 runs already finished: reusing them, nothing to train" in (
        capsys.readouterr().out)


def test_two_grids_on_one_folder_train_each_run_once(grid_data_root, tmp_path):
    kw = dict(rules=["dfa"], data_root=grid_data_root, executor="process", workers=1,
              threads=1, progress=False)
    results, errors = {}, []

    def grid(name):
        try:
            results[name] = run_grid(TINY, tmp_path, **kw)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=grid, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    for i in range(4):
        statuses = sorted(results[n][i].status for n in ("a", "b"))
        assert statuses == ["reused", "trained"], (i, statuses)
        trace = results["a"][i].result.trace
        assert [e["epoch"] for e in trace] == list(range(TINY.epochs + 1))
        log = (results["a"][i].result.run_dir / executors.WORKER_LOG).read_text()
        assert log.count("--- ") >= 1
    assert _same(_runs(results["a"]), _runs(results["b"]))


# Installed in the grid's processes through PYTHONPATH: the worker that trains the run pauses
# once, before epoch PAUSE_AFTER + 1, after epoch PAUSE_AFTER's checkpoint; it says where in a
# file and sleeps until the test kills it. The retried worker sees the file and does not pause.
PAUSE_HOOK = """
import json, os, time
from pathlib import Path

if os.environ.get("FA_TEST_PAUSE_MARKER"):
    from fa_nb_utils import trainer

    _marker, _after = Path(os.environ["FA_TEST_PAUSE_MARKER"]), int(os.environ["FA_TEST_PAUSE_AFTER"])
    _real = trainer._train_epoch
    trainer.CHECKPOINT_SECONDS = 0.0   # a checkpoint at every epoch (by default about a minute)

    def _train_epoch(run, epoch, bar):
        if epoch == _after + 1 and not _marker.exists():
            tmp = _marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "run_dir": str(run.run_dir)}))
            os.replace(tmp, _marker)
            time.sleep(3600)
        return _real(run, epoch, bar)

    trainer._train_epoch = _train_epoch
"""


def test_killing_a_worker_mid_run_then_rerunning_loses_nothing(grid_data_root, tmp_path):
    """The worker is killed while it is provably mid-run (paused after epoch 2 of 4), whatever
    the machine's speed; the grid restarts the pool and resumes the run, and the result equals a
    run never interrupted."""
    kw = dict(rules=["dfa"], seeds=[42], frozen=False, data_root=grid_data_root, epochs=4)
    script = tmp_path / "grid.py"
    script.write_text(textwrap.dedent(f"""
        from fa_nb_utils.paper.experiments import run_grid
        from fa_nb_utils.paper.profiles import get_profile
        if __name__ == "__main__":
            run_grid(get_profile("tiny"), {str(tmp_path / 'killed')!r}, executor="process",
                     workers=1, threads=1, **{kw!r})
    """))
    hook, marker = tmp_path / "hook", tmp_path / "paused.json"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_HOOK)
    path = [str(hook)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path),
           "FA_TEST_PAUSE_MARKER": str(marker), "FA_TEST_PAUSE_AFTER": "2"}
    grid = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and grid.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"no worker paused: {grid.poll()=}, {grid.stdout.read()[-3000:]}"
        paused = json.loads(marker.read_text())
        trace = json.loads((Path(paused["run_dir"]) / "trace.json").read_text())["trace"]
        assert [e["epoch"] for e in trace] == [0, 1, 2]     # checkpointed epoch 2 of 4
        os.kill(paused["pid"], signal.SIGKILL)
        out, _ = grid.communicate(timeout=300)
    finally:
        if grid.poll() is None:
            grid.kill()
    # the grid starts a new pool and retries the run once: it resumes from its last checkpoint
    assert grid.returncode == 0, out[-3000:]
    assert "a worker process died; restarting the pool and retrying 1 run(s) once" in out
    assert "1/1 runs finished (0 trained, 1 resumed" in out, out[-3000:]

    rerun = run_grid(TINY, tmp_path / "killed", threads=1, progress=False, **kw)
    assert rerun[0].status == "reused"
    assert [e["epoch"] for e in rerun[0].result.trace] == [0, 1, 2, 3, 4]
    never_killed = run_grid(TINY, tmp_path / "clean", threads=1, progress=False, **kw)
    assert _same(_runs(rerun), _runs(never_killed))


def test_workers_refuse_data_that_are_not_the_planned_data(grid_data_root, tmp_path):
    other = profile_data(TINY, data_root=str(tmp_path / "other"), synthetic_n_train=600)
    with pytest.raises(GridRunError) as err:
        run_grid(TINY, tmp_path, rules=["bp"], seeds=[42], frozen=False, data=other,
                 data_root=grid_data_root, executor="process", workers=1, threads=1,
                 progress=False)
    assert "fingerprint" in str(err.value) and "data_root" in str(err.value)
    (failure,) = err.value.failures
    assert failure.log is not None and "fingerprint" in Path(failure.log).read_text()


def test_a_worker_of_another_package_version_refuses_the_run(grid_data_root, tmp_path):
    config = TINY.config("bp", 42, data_root=grid_data_root)
    data = profile_data(TINY, data_root=grid_data_root)
    job = executors.GridJob(config, str(tmp_path), data.fingerprint, "bp seed 42",
                            "bp-s42-000000000000", log=False)
    with pytest.raises(RuntimeError, match="same version of the package on every worker"):
        executors.run_job(job, data)
    assert not list(tmp_path.glob("*/checkpoint.pt"))   # refused before any training


def test_a_thread_pool_is_refused():
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="executor='process'"):
        make_executor(pool)


@pytest.mark.parametrize("kwargs, match", [
    (dict(workers=0), "workers must be an int >= 1"),
    (dict(threads=-1), "threads must be an int >= 1"),
    (dict(executor="inprocess", workers=2), "one run at a time"),
    (dict(executor="spark"), "unknown executor 'spark'"),
    (dict(executor=3.5), "executor must be None, a name"),
])
def test_bad_executor_settings_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_executor(**kwargs)


@pytest.mark.parametrize("engine, module", [("dask", "distributed"), ("submitit", "submitit")])
def test_a_missing_engine_says_what_to_install(engine, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)   # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[cluster\]'"):
        make_executor(engine, workers=1)
    with pytest.raises(ReproductionError, match="cluster"):
        check_grid(engine, None, None)


def test_reproduce_checks_the_grid_settings_before_any_notebook():
    from fa_nb_utils.cli import reproduce_main
    assert reproduce_main(["--profile", "tiny", "--executor", "spark", "--only", "01"]) == 2
    assert reproduce_main(["--profile", "tiny", "--workers", "0", "--only", "01"]) == 2
    assert check_grid("process", 2, 1) == {"executor": "process", "workers": 2, "threads": 1}
    assert check_grid("tcp://scheduler:8786", None, None) == {"executor": "tcp://scheduler:8786"}


def test_the_dask_local_cluster_keeps_glibcs_dynamic_malloc_thresholds():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers (a 2.5x slower training
    step, measured); the grid's LocalCluster starts them without it."""
    pytest.importorskip("distributed")
    engine = make_executor("dask", workers=1, threads=1)
    try:
        env = engine.executor.submit(os.environ.get, "MALLOC_TRIM_THRESHOLD_").result(timeout=120)
    finally:
        engine.close()
    assert env is None


def test_auto_is_a_process_per_core_on_a_cpu_and_in_process_on_a_gpu(monkeypatch):
    monkeypatch.setattr(executors, "_cores", lambda: 4)
    engine = make_executor("auto", device=torch.device("cpu"))
    try:
        assert (engine.name, engine.workers, engine.threads) == ("process", 4, 1)
    finally:
        engine.close()
    engine = make_executor("auto", device="cuda")
    assert (engine.name, engine.workers) == ("inprocess", 1)
    monkeypatch.setattr(executors, "_cores", lambda: 1)
    assert make_executor("auto", device=torch.device("cpu")).name == "inprocess"
    engine = make_executor("auto", workers=2, device="cpu")   # asked for: a pool, the cores shared
    try:
        assert (engine.name, engine.workers, engine.threads) == ("process", 2, 1)
    finally:
        engine.close()


def test_bad_grid_settings_are_refused_before_the_data_load(monkeypatch, tmp_path):
    from fa_nb_utils.paper import experiments

    def no_load(*args, **kwargs):
        raise AssertionError("the data were loaded before the settings were checked")

    monkeypatch.setattr(experiments, "profile_data", no_load)
    with pytest.raises(ValueError, match="unknown executor 'spark'"):
        run_grid(TINY, tmp_path, executor="spark")
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        run_grid(TINY, tmp_path, workers=0)


def test_the_costliest_runs_are_submitted_first(grid_data_root, tmp_path, monkeypatch):
    """EP (T relaxation steps a step) and the bridges go to the pool before BP and DFA, so a
    pool never ends on one long run while the other workers idle; the records keep plan order."""
    from fa_nb_utils.paper import experiments
    submitted = []

    def fake_execute(jobs, engine, **kw):
        submitted.extend(job.config.rule for job in jobs)
        raise RuntimeError("captured")

    monkeypatch.setattr(experiments, "execute", fake_execute)
    with pytest.raises(RuntimeError, match="captured"):
        run_grid(TINY, tmp_path, rules=["bp", "dfa", "ep", "credit_bridge", "state_bridge"],
                 seeds=[42], frozen=False, data_root=grid_data_root, executor="inprocess",
                 progress=False)
    assert submitted == ["ep", "credit_bridge", "state_bridge", "bp", "dfa"]
    ep_cls = experiments.RULES["ep"]
    assert ep_cls.cost_hint(ep_cls.parse_options({"steps": 20})) > \
        ep_cls.cost_hint(ep_cls.parse_options({"steps": 10})) > 1
