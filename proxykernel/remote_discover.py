"""Discover: what ``proxykernel discover`` runs on the remote Python (probe.py) to list the Pythons
a kernel could use there: conda environments, the interpreters of kernelspecs, those on PATH and
the candidates given as arguments, each asked for its version and that of its ipykernel.

Sent as text after remote_checks.py (for ``say``), as ``python -c TEXT [CANDIDATE...]``. It needs
no ipykernel itself and makes no version check: it lists from any Python 3 that has
``subprocess.run`` and ``shutil.which``. Answers ``INFO`` and a base64 JSON list.
"""
import os
import sys

from proxykernel.remote_checks import say

__all__ = ["main", "candidates", "describe", "VERSION_QUERY"]

# Run by each candidate interpreter, of any version: its prefix, version, ipykernel and executable.
VERSION_QUERY = "\n".join([
    "import sys",
    "try:",
    "    from importlib.metadata import version",
    "    v = version(\"ipykernel\")",
    "except Exception:",
    "    v = None",
    "print(sys.prefix)",
    "print(\"%d.%d.%d\" % sys.version_info[:3])",
    "print(v)",
    "print(sys.executable)",
])
CONDA_DIRS = ("miniconda3", "anaconda3", "miniforge3", "mambaforge")
SYSTEM_CONDAS = ("/opt/conda", "/opt/miniconda3", "/opt/anaconda3")
KERNEL_DIRS = ("/usr/local/share/jupyter/kernels", "/usr/share/jupyter/kernels")


def conda_environments(home):
    # type: (str) -> list[str]
    """The prefixes of the conda environments listed in ~/.conda or found under the usual bases."""
    import glob
    found = []
    try:
        with open(os.path.join(home, ".conda", "environments.txt")) as listed:
            found += [line.strip() for line in listed if line.strip()]
    except OSError:
        pass
    bases = [os.environ.get("CONDA_PREFIX", ""), os.path.dirname(os.path.dirname(os.environ.get("CONDA_EXE", "")))]
    bases += [os.path.join(home, name) for name in CONDA_DIRS] + list(SYSTEM_CONDAS)
    for base in bases:
        if base and os.path.isdir(os.path.join(base, "conda-meta")):
            found += [base] + glob.glob(os.path.join(base, "envs", "*"))
    return found


def kernelspec_pythons():
    # type: () -> list[tuple[str, str]]
    """(interpreter, kernelspec name) of the Python kernelspecs whose argv starts with an absolute path."""
    import glob
    import json
    home = os.path.expanduser("~")
    dirs = [os.path.join(home, ".local/share/jupyter/kernels")] + list(KERNEL_DIRS)
    dirs += [os.path.join(d, "kernels") for d in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if d]
    found = []
    for directory in sorted(set(dirs)):
        for path in sorted(glob.glob(os.path.join(directory, "*", "kernel.json"))):
            try:
                with open(path) as spec_file:
                    spec = json.load(spec_file)
                argv0 = spec["argv"][0]
            except Exception:  # not a kernelspec we can read: not ours to judge
                continue
            if spec.get("language") == "python" and os.path.isabs(argv0):
                found.append((argv0, os.path.basename(os.path.dirname(path))))
    return found


def candidates(names):
    # type: (list[str]) -> list[tuple[str, str, str]]
    """(interpreter, source, label) of every executable Python found, sources in a fixed order."""
    import shutil
    found = []  # type: list[tuple[str, str, str]]

    def add(path, source, label):
        # type: (str | None, str, str) -> None
        if path and os.path.isdir(path) and not os.path.isfile(path):
            path = os.path.join(path, "bin", "python")
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            found.append((path, source, label))

    for prefix in conda_environments(os.path.expanduser("~")):
        add(prefix, "conda", os.path.basename(prefix.rstrip("/")))
    for python, name in kernelspec_pythons():
        add(python, "kernelspec", name)
    for name in names:
        add(name if os.sep in name else shutil.which(name), "--python", name)
    for name in ("python3", "python"):
        add(shutil.which(name), "PATH", name)
    return found


def describe(found):
    # type: (list[tuple[str, str, str]]) -> list[dict[str, object]]
    """Ask each interpreter for its version and that of its ipykernel; one entry per prefix, first found wins."""
    import subprocess
    seen = set()
    described = []  # type: list[dict[str, object]]
    for python, source, label in found:
        try:
            lines = subprocess.run([python, "-c", VERSION_QUERY], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, timeout=30).stdout.decode().split("\n")
        except Exception:  # an interpreter that does not run is not a candidate
            continue
        if len(lines) < 4 or lines[0] in seen:
            continue
        seen.add(lines[0])
        described.append({"python": lines[3] or python, "source": source,
                          "label": label if source != "--python" else os.path.basename(lines[0]),
                          "prefix": lines[0], "version": lines[1],
                          "ipykernel": None if lines[2] == "None" else lines[2]})
    return described


def main(argv):
    # type: (list[str]) -> None
    """Run by ``python -c``: ``argv`` is sys.argv, the candidates after the first."""
    import base64
    import json
    say("INFO " + base64.b64encode(json.dumps(describe(candidates(argv[1:]))).encode()).decode())


if __name__ == "__main__":
    main(sys.argv)
