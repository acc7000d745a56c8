"""The self-contained agent bundle, mounted read-only at ``/.corral`` in every sandbox.

The in-sandbox agent (:mod:`corral.agent`) must start in any rootfs: Debian,
Alpine (musl), or nothing but a static busybox. So it brings its own
interpreter, taken from a Python on the host (:func:`agent_python`: the
system's ``python3`` if it is 3.11 or newer, else the one running corral)::

    /.corral/
      bin/python3                     the host interpreter binary
      lib/ld-linux-x86-64.so.2        glibc's loader, and every library it
      lib/libc.so.6, lib/libpython…   needs (what ``ldd`` lists)
      lib/python3.11/                 the stdlib subset the agent imports, with
        os.py, asyncio/, …            unchecked-hash ``.opt-2.pyc`` files (no
        lib-dynload/*.so              stat of sources at import), the extension
        corral/agent/                 modules it needs, and the agent itself
      BUNDLE                          what was built from what

It starts as (:func:`agent_command`)::

    /.corral/lib/ld-linux-x86-64.so.2 --library-path /.corral/lib --inhibit-cache \\
        /.corral/bin/python3 -I -S -B -OO -X utf8 -m corral.agent --port 49983

Running the loader explicitly means the rootfs's own loader and libc (or
their absence) never matter, and ``--inhibit-cache`` keeps the image's
``/etc/ld.so.cache`` out of it. ``-I`` (isolated: ignore ``PYTHON*``
variables, no user site, no current directory on ``sys.path``) keeps the
image's environment from steering the agent's interpreter; Python finds its
prefix from the binary's location (``/.corral/lib/python3.11/os.py`` is the
landmark), so no ``PYTHONHOME`` is needed. ``-S`` skips ``site``, ``-B``
writing bytecode to the read-only mount, ``-X utf8`` makes text I/O UTF-8 in
any locale. :func:`agent_env` is therefore empty; the sandbox's own
variables (image ``ENV``, user envs) go next to it in the OCI spec and are
what the agent hands to the processes it starts. ``-OO`` leaves docstrings
and asserts out of the bytecode: the agent's memory is mostly the code it
imports, which every idle sandbox holds (0.5 MiB less of the 9.6 it holds once
started, measured as a host process).

:func:`build_agent_bundle` builds it once per host interpreter and agent
source: the directory name is a hash of both, the build happens in a
temporary directory that is renamed into place, so concurrent builders and
crashes never leave a half-built bundle behind. An upgrade of corral or of the
host's Python makes a new one; :func:`prune_agent_bundles` removes the earlier
ones once no sandbox on the host was made with them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import corral.agent
from corral.mounts import detach_all

log = logging.getLogger(__name__)

MOUNT_POINT = "/.corral"
SYSTEM_PYTHON = "/usr/bin/python3"
"""Preferred over corral's own interpreter for the bundle (see :func:`agent_python`)."""
# glibc's dynamic loader, by machine; the bundle runs it explicitly.
LOADERS = {"x86_64": "ld-linux-x86-64.so.2", "aarch64": "ld-linux-aarch64.so.1"}
LOADER = LOADERS.get(platform.machine(), "ld-linux-x86-64.so.2")
STALE_BUILD = 3600.0  # seconds after which a leftover build directory is removed
BUNDLE_FORMAT = 5  # bump when the layout or the module selection changes

# Imported lazily by the agent or at the interpreter's start, so an import
# scan of the agent's modules alone would miss them.
EXTRA_MODULES = (
    "concurrent.futures.thread",
    "ctypes",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.utf_8_sig",
    "linecache",
    "resource",
    "runpy",
    "shutil",
    "termios",
    "tokenize",
    "traceback",
    "urllib.parse",
    "zlib",
)
# Optional imports of asyncio and shutil the agent does without: they would
# drag in OpenSSL, libbz2 and liblzma.
BLOCKED_MODULES = ("ssl", "_ssl", "bz2", "_bz2", "lzma", "_lzma", "_hashlib", "hashlib")

_SCAN = """
import json, sys, types
for name in {blocked!r}:
    sys.modules[name] = None
package = types.ModuleType("corral")  # as in the bundle: corral/__init__.py is not run
package.__path__ = [{package!r}]
sys.modules["corral"] = package
import importlib
for name in {modules!r}:
    importlib.import_module(name)
files = {{}}
for name, module in list(sys.modules.items()):
    file = getattr(module, "__file__", None)
    if file and not name.startswith("corral"):
        files[name] = file
print(json.dumps(files))
"""


def agent_command(port: int) -> list[str]:
    """The argv that starts the agent from the bundle mounted at ``/.corral``."""
    return [
        f"{MOUNT_POINT}/lib/{LOADER}",
        "--library-path",
        f"{MOUNT_POINT}/lib",
        "--inhibit-cache",
        f"{MOUNT_POINT}/bin/python3",
        "-I",
        "-S",
        "-B",
        "-OO",
        "-X",
        "utf8",
        "-m",
        "corral.agent",
        "--port",
        str(port),
    ]


def agent_env() -> dict[str, str]:
    """Environment the agent's command needs besides the sandbox's own: none (see above)."""
    return {}


@dataclass(frozen=True)
class Interpreter:
    """A host Python the bundle can be built from, as it describes itself."""

    binary: Path
    version: str  # sys.version
    minor: str  # "python3.11": the stdlib directory's name
    stdlib: Path
    libpython: Path | None  # its shared libpython, if it has one


_DESCRIBE = """
import json, os, sys, sysconfig
library = sysconfig.get_config_var("LDLIBRARY") or ""
libdir = sysconfig.get_config_var("LIBDIR") or ""
shared = os.path.join(libdir, library) if library.endswith(".so") or ".so." in library else ""
print(json.dumps({
    "version": sys.version, "info": list(sys.version_info[:2]), "stdlib": sysconfig.get_paths()["stdlib"],
    "libpython": shared if shared and os.path.exists(shared) else "",
}))
"""


def describe(binary: Path) -> Interpreter | None:
    """What ``binary`` is, if it is a Python the agent runs on (3.11 or newer)."""
    try:
        done = subprocess.run([str(binary), "-I", "-S", "-c", _DESCRIBE], capture_output=True, text=True, timeout=30)
        facts = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if done.returncode != 0 or tuple(facts["info"]) < (3, 11):
        return None
    return Interpreter(
        binary=Path(os.path.realpath(binary)),
        version=facts["version"],
        minor=f"python{facts['info'][0]}.{facts['info'][1]}",
        stdlib=Path(facts["stdlib"]),
        libpython=Path(facts["libpython"]) if facts["libpython"] else None,
    )


@functools.cache
def agent_python() -> Interpreter:
    """The interpreter the bundle is built from: the system's ``python3`` if it will do, else corral's own.

    The system's (Debian's ``/usr/bin/python3``) is built with profile-guided
    and link-time optimisation and has most extension modules linked in;
    an interpreter built from source with the defaults (as pyenv builds it)
    has neither. Inside gVisor that matters twice over: each extension module
    loaded from its own ``.so`` costs several milliseconds there, and the
    agent's own Python code runs up to 2.7 times faster on the optimised build.
    """
    for candidate in (SYSTEM_PYTHON, getattr(sys, "_base_executable", None) or sys.executable):
        if Path(candidate).exists() and (found := describe(Path(candidate))) is not None:
            return found
    raise RuntimeError("no Python 3.11 or newer to build the agent bundle from")


def _agent_sources() -> list[Path]:
    package = Path(corral.agent.__file__).parent
    return sorted(package.glob("*.py"))


def bundle_key() -> str:
    """Hash of everything a bundle is built from."""
    digest = hashlib.sha256()
    python = agent_python()
    digest.update(f"{BUNDLE_FORMAT}\0{python.version}\0{python.binary}\0".encode())
    digest.update(python.binary.read_bytes())
    if python.libpython is not None:
        st = python.libpython.stat()
        digest.update(f"{python.libpython}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for source in _agent_sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def build_agent_bundle(dest_root: Path) -> Path:
    """The bundle directory for this host's Python and agent, building it if needed."""
    dest_root = Path(dest_root)
    final = dest_root / f"agent-{bundle_key()[:16]}"
    if (final / "BUNDLE").exists():
        if bundle_intact(final):
            return final
        log.error("agent bundle %s was changed on disk; building it again", final)
        detach_all(final)
        shutil.rmtree(final, ignore_errors=True)
    dest_root.mkdir(parents=True, exist_ok=True)
    for leftover in dest_root.glob(".agent-build-*"):  # from a builder that crashed
        if time.time() - leftover.stat().st_mtime > STALE_BUILD:
            shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".agent-build-", dir=dest_root))
    try:
        _build(work)
        work.chmod(0o755)
        try:
            os.rename(work, final)
        except OSError:
            if not (final / "BUNDLE").exists():
                raise
            # Another builder won the race; its bundle is identical.
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final


def prune_agent_bundles(current: Path, sandboxes: Path) -> list[Path]:
    """Remove the bundles beside ``current`` that no sandbox under ``sandboxes`` mounts; those removed.

    A sandbox keeps the bundle it was made with for its whole life (a
    hibernated one wakes with it), so a bundle goes only once no sandbox's OCI
    spec names it. Snapshots are restored with the current bundle. Should a
    spec not be readable, every bundle stays.
    """
    in_use = {current}
    for config in sandboxes.glob("*/bundle/config.json"):
        try:
            mounts = json.loads(config.read_text())["mounts"]
            in_use.update(Path(m["source"]) for m in mounts if m["destination"] == MOUNT_POINT)
        except FileNotFoundError:
            continue  # killed meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("cannot tell which agent bundle %s mounts; keeping every bundle", config)
            return []
    removed = []
    for bundle in sorted(current.parent.glob("agent-*")):
        if bundle in in_use:
            continue
        try:
            detach_all(bundle)  # sealed read-only, maybe more than once by an older server
            shutil.rmtree(bundle)
        except OSError as exc:
            log.warning("could not remove the earlier agent bundle %s: %s", bundle, exc)
            continue
        removed.append(bundle)
    if removed:
        log.info("removed %d earlier agent bundle(s) no sandbox uses", len(removed))
    return removed


def _build(root: Path) -> None:
    interpreter = agent_python()
    python, stdlib = interpreter.binary, interpreter.stdlib
    lib = root / "lib"
    pylib = lib / interpreter.minor
    (root / "bin").mkdir(parents=True)
    pylib.mkdir(parents=True)

    _copy(python, root / "bin" / "python3", mode=0o755)
    libraries = _shared_libraries(python)

    modules = _scan_modules(python)
    for file in sorted(modules.values()):
        path = Path(file)
        try:
            relative = path.relative_to(stdlib)
        except ValueError:
            continue  # outside the stdlib: not ours to ship
        _copy(path, pylib / relative, mode=0o755 if path.suffix == ".so" else 0o644)
        if path.suffix == ".so":
            libraries.update(_shared_libraries(path))
    if not (pylib / "os.py").exists():  # the prefix landmark, even though os is frozen
        _copy(stdlib / "os.py", pylib / "os.py")

    agent_dir = pylib / "corral" / "agent"
    agent_dir.mkdir(parents=True)
    (pylib / "corral" / "__init__.py").write_text('"""corral\'s in-sandbox agent only."""\n')
    for source in _agent_sources():
        _copy(source, agent_dir / source.name)

    strip = shutil.which("strip")
    for name, path in sorted(libraries.items()):
        _copy(path, lib / name, mode=0o755)
        if strip and name.startswith("libpython"):  # debug info is most of its size
            subprocess.run([strip, "--strip-debug", str(lib / name)], check=False, timeout=120)

    if not (lib / LOADER).exists():
        raise RuntimeError(f"{python} is not loaded by {LOADER}: cannot bundle it")
    _compile(python, pylib)
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {
        "format": BUNDLE_FORMAT,
        "python": str(python),
        "version": interpreter.version,
        "command": agent_command(49983),
        "libraries": {name: str(path) for name, path in sorted(libraries.items())},
        "modules": sorted(modules),
        "files": files,
    }
    (root / "BUNDLE").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in root.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)


def bundle_intact(root: Path) -> bool:
    """Whether every file of a built bundle is there with the size it was built with.

    The bundle is shared by every sandbox, read-only; this catches one changed
    on disk anyway (by hand, or before the host-side read-only mount existed).
    """
    try:
        files = json.loads((root / "BUNDLE").read_text())["files"]
        return all((root / name).lstat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _copy(source: Path, dest: Path, *, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.realpath(source), dest)
    dest.chmod(mode)


_LDD_LINE = re.compile(r"^\s*(\S+)\s*(?:=>\s*(\S+))?\s*\(0x[0-9a-f]+\)\s*$")


def _shared_libraries(binary: Path) -> dict[str, Path]:
    """``{name in the bundle: host path}`` of what ``binary`` links, loader included."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False, timeout=60)
    if "not a dynamic executable" in result.stdout + result.stderr:
        return {}
    if result.returncode != 0:
        raise RuntimeError(f"ldd {binary} failed: {result.stderr.strip()}")
    libraries: dict[str, Path] = {}
    for line in result.stdout.splitlines():
        if "not found" in line:
            raise RuntimeError(f"{binary} needs a library the host lacks: {line.strip()}")
        match = _LDD_LINE.match(line)
        if not match:
            continue
        name, path = match.group(1), match.group(2)
        if path is None:
            if not name.startswith("/"):
                continue  # linux-vdso.so.1: provided by the kernel
            path, name = name, Path(name).name
        libraries[name] = Path(path)
    return libraries


def _scan_modules(python: Path) -> dict[str, str]:
    """``{module: file}`` for every module the agent imports, from a fresh interpreter."""
    package = str(Path(corral.agent.__file__).parent.parent)
    agent_modules = [f"corral.agent.{p.stem}" for p in _agent_sources() if p.stem != "__main__"]
    script = _SCAN.format(blocked=BLOCKED_MODULES, package=package, modules=[*agent_modules, *EXTRA_MODULES])
    result = subprocess.run(
        [str(python), "-I", "-S", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scanning the agent's imports failed: {result.stderr.strip()}")
    modules: dict[str, str] = json.loads(result.stdout)
    return modules


_COMPILE = """
import os, py_compile, sys
for source in sys.argv[1:]:
    cfile = py_compile.compile(
        source, doraise=True, optimize=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    os.chmod(cfile, 0o644)
"""


def _compile(python: Path, pylib: Path) -> None:
    """Bytecode for every source, by the bundle's own interpreter (its magic number, its optimiser)."""
    sources = [str(source) for source in sorted(pylib.rglob("*.py"))]
    done = subprocess.run(
        [str(python), "-I", "-S", "-c", _COMPILE, *sources], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"compiling the agent bundle failed: {done.stderr.strip()[-2000:]}")
