"""Run many lcgen command lines, each in its own process, paying for the imports once: this script
imports the entry points, then forks one child per command line. A child has its own working
folder, stdout, stderr and exit status, and exits the way a console script does (a SystemExit
message on stderr and status 1; an uncaught exception's traceback and status 1).

A case may also ask to be killed: with "kill_at": N the child sends itself SIGKILL just before its
Nth `os.replace`, the moment lcgen has written a temporary file (a shard, an image, a feature block,
a converted folder) and not yet renamed it to its final name — as `kill -9` at the worst point,
with no cleanup and no `finally`. Every child reports how many replaces it made.

    python tests/cli_fork.py cases.json results.json
cases.json: [{"argv": [...], "cwd": "...", "entry": "lcgen.cli" (default) | "lcgen.eval.sampling", "kill_at": N}]
results.json: [{"returncode": int (-9 when killed), "stdout": str, "stderr": str, "replaces": int, "seconds": float}]
"""
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback

ENTRIES = ("lcgen.cli", "lcgen.eval.sampling")


def _count_replaces(kill_at, count_path):
    real_replace, calls = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *args, **kwargs)
        with open(count_path, "w") as f:
            f.write(str(calls[0]))

    os.replace = replace


def _child(case, out_path, err_path, count_path):
    main = importlib.import_module(case.get("entry", "lcgen.cli")).main
    os.chdir(case["cwd"])
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    _count_replaces(case.get("kill_at", 0), count_path)
    code = 0
    try:
        main(case["argv"])
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_all(cases):
    for entry in ENTRIES:  # imported once, before forking
        importlib.import_module(entry)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            paths = [os.path.join(tmp, f"{i}.{ext}") for ext in ("out", "err", "count")]
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                _child(case, *paths)
            _, status = os.waitpid(pid, 0)
            with open(paths[0]) as o, open(paths[1]) as e:
                out, err = o.read(), e.read()
            replaces = int(open(paths[2]).read()) if os.path.exists(paths[2]) else 0
            results.append({"returncode": os.waitstatus_to_exitcode(status), "stdout": out, "stderr": err,
                            "replaces": replaces, "seconds": round(time.perf_counter() - start, 2)})
    return results


def run_cases(cases, workdir, env=None, timeout=900):
    """From a test: run `cases` through this script in a fresh interpreter; returns the results."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    src, dst = os.path.join(workdir, "cases.json"), os.path.join(workdir, "results.json")
    with open(src, "w") as f:
        json.dump(cases, f)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    subprocess.run([sys.executable, os.path.abspath(__file__), src, dst], check=True, env=env, timeout=timeout)
    with open(dst) as f:
        return json.load(f)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = run_all(cases)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
