"""Pack the real tritonserver, its Python backend and perf_analyzer for a machine without them.

    .venv/bin/python scripts/pack_triton.py [--out build/triton_pack] [--stubs 3.12 3.11]

Writes OUT/triton.tar.xz (and OUT/contents.txt), one folder `triton/` laid out like the
nvidia-pytriton wheel's `tritonserver/`, so `DLM_TRITON_HOME=<unpacked>/triton` serves with it
(model_repository.serve):

- `bin/tritonserver`; `bin/perf_analyzer`, a wrapper that runs `libexec/perf_analyzer` (the
  tritonclient wheel's) with the `libb64.so.0d` and `libcudart.so.12` it links (links into
  `lib/` beside it) on LD_LIBRARY_PATH;
- `lib/`: the wheel's `nvidia_pytriton.libs` that the server, the backend and the stubs load
  (their ldd closure; the rest stays behind);
- `backends/python/`: libtriton_python.so, triton_python_backend_utils.py;
- `python_backend_stubs/<X.Y>/triton_python_backend_stub` for each of `--stubs`;
- `pylib/libpython3.12.so.1.0` (stripped), for a target whose Python 3.12 has no shared
  libpython (the stub links it);
- `site/`: the client's Python packages a GPU image lacks: tritonclient (pure Python, from this
  venv) and python-rapidjson unpacked from its cp312 wheel (PyPI). Put it on PYTHONPATH.
- `numpy1/`: numpy 1.x for CPython 3.12 (this venv's version, from PyPI). The 2.51 Python backend
  stub reads a NumPy 1 array layout: under NumPy 2 every output tensor it sends is empty
  ("output tensor shape does not match size"). scripts/device_triton.sh puts it in a venv
  layered over the image's packages when the image has NumPy 2.
- `lib/libicudata-*`: ICU's stub data (see ICU_STUB) where a C compiler is found.

Prints the sizes and fails if the archive plus the working tree that the device tool sends
(tracked and untracked-not-ignored files) would pass its 64 MiB limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20  # what one device call may send: the working tree plus the carried paths
TARGET_PYTHON = "3.12"  # the GPU image's python3
PERF_ANALYZER = """#!/bin/sh
# perf_analyzer with the libb64.so.0d and libcudart.so.12 it links, from ../libexec
here=$(dirname "$(readlink -f "$0")")/../libexec
LD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer" "$@"
"""


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def closure(files: list[Path], lib_dirs: list[Path]) -> tuple[set[Path], set[str]]:
    """The libraries `files` load that live in `lib_dirs[0]`, and the names ldd found nowhere."""
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(d) for d in lib_dirs))
    found, missing = set(), set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], env=env, capture_output=True, text=True).stdout
        for line in out.splitlines():
            name, _, rest = line.strip().partition(" => ")
            if rest.startswith("not found"):
                missing.add(name)
            elif rest:
                path = Path(rest.split(" (")[0]).resolve()
                if path.parent == lib_dirs[0].resolve():
                    found.add(path)
    return found, missing


def libpython(version: str) -> Path | None:
    """libpythonX.Y.so.1.0 of a `pythonX.Y` on PATH or of a pyenv version X.Y.*, else None."""
    name = f"libpython{version}.so.1.0"
    exe = shutil.which(f"python{version}")
    if exe:
        code = "import sysconfig as s; print(s.get_config_var('LIBDIR'))"
        r = subprocess.run([exe, "-c", code], capture_output=True, text=True)
        if r.returncode == 0 and (Path(r.stdout.strip()) / name).is_file():
            return Path(r.stdout.strip()) / name
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    return next(iter(sorted(pyenv.glob(f"versions/{version}.*/lib/{name}"), reverse=True)), None)


def wheel(name: str, dst: Path) -> Path:
    """`name` (this venv's version) for CPython 3.12, manylinux x86-64, from PyPI."""
    version = importlib.metadata.version(name)
    tag = TARGET_PYTHON.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", TARGET_PYTHON, "--implementation", "cp", "-d", str(dst)]
    for p in ("manylinux_2_28", "manylinux_2_24", "manylinux_2_17", "manylinux2014"):
        cmd += ["--platform", f"{p}_x86_64"]
    subprocess.run([*cmd, f"{name}=={version}"], check=True)
    return next(dst.glob(f"{name.replace('-', '_')}-{version}-cp{tag}-*.whl"))


def unpack_wheel(whl: Path, dst: Path) -> None:
    """Install a wheel by unpacking it (what pip does for these), without its test suites."""
    with zipfile.ZipFile(whl) as z:
        z.extractall(dst, [m for m in z.namelist() if "/tests/" not in m])


# ICU's own "stub data" (icu4c/source/stubdata): an empty table of contents under the data
# symbol, for builds that load ICU data from files. Only libxml2 links ICU, for conversions
# from unusual encodings that no model repository needs; it saves 29 MB (7 MB packed).
ICU_STUB = """
const unsigned char %s[48] __attribute__((aligned(16))) = {
    32, 0, 0xda, 0x27,                      /* MappedData: headerSize, magic */
    20, 0, 0, 0, 0, 0, 2, 0,                /* UDataInfo: size, little endian, ASCII, UChar */
    'T', 'o', 'C', 'P', 1, 0, 0, 0, 0, 0, 0, 0,    /* format "ToCP" 1.0, data version */
    0, 0, 0, 0, 0, 0, 0, 0,                 /* padding */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* count 0, reserved, TOC */
};
"""


def icu_stub_data(lib: Path) -> bool:
    """Replace libicudata (its data symbol, SONAME and name kept) by ICU's stub data; False
    (and nothing changed) without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    symbol = "icudt" + lib.name.rsplit(".so.", 1)[1].split(".")[0] + "_dat"  # icudt70_dat
    src = lib.with_suffix(".c")
    src.write_text(ICU_STUB % symbol)
    cmd = [cc, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{lib.name}", "-o", str(lib), str(src)]
    subprocess.run(cmd, check=True)
    src.unlink()
    return True


def travelling_tree_bytes() -> int:
    """Bytes of the files a device call sends besides `carry`: tracked and untracked-not-ignored
    (and shared/, if the checkout has one)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    paths = {ROOT / p.decode() for p in out.split(b"\0") if p}
    if (ROOT / "shared").is_dir():
        paths |= {p for p in (ROOT / "shared").rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def build(stage: Path, stubs: list[str]) -> list[str]:
    """Lay out `stage/triton/`; returns notes to print."""
    import pytriton

    server = Path(pytriton.__file__).resolve().parent / "tritonserver"
    libs = server.parent.parent / "nvidia_pytriton.libs"
    out = stage / "triton"
    notes = []
    for sub in ("bin", "lib", "libexec", "backends/python", "pylib", "site", "numpy1"):
        (out / sub).mkdir(parents=True)
    shutil.copy2(server / "bin/tritonserver", out / "bin")
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(server / "backends/python" / name, out / "backends/python")
    stub_files = [server / f"python_backend_stubs/{v}/triton_python_backend_stub" for v in stubs]
    for v, stub in zip(stubs, stub_files, strict=True):
        (out / "python_backend_stubs" / v).mkdir(parents=True)
        shutil.copy2(stub, out / "python_backend_stubs" / v)
    # The closure, with every libpython we can find so that ldd follows the stubs through it.
    pylibs = {v: libpython(v) for v in stubs}
    py_dirs = [p.parent for p in pylibs.values() if p]
    roots = [server / "bin/tritonserver", server / "backends/python/libtriton_python.so"]
    needed, missing = closure([*roots, *stub_files], [libs, *py_dirs])
    missing -= {f"libpython{v}.so.1.0" for v in stubs}
    if missing:
        raise SystemExit(f"error: ldd found no {sorted(missing)} for tritonserver")
    for lib in sorted(needed):
        shutil.copy2(lib, out / "lib")
    icu = next((out / "lib").glob("libicudata-*"), None)
    if icu is not None and icu_stub_data(icu):
        notes.append(f"lib/{icu.name}: ICU's stub data")
    left = sorted(p.name for p in libs.iterdir() if p not in needed)
    notes.append(f"lib/: {len(needed)} of {len(needed) + len(left)} libraries (left: {left})")

    libexec = out / "libexec"
    pa = Path(sys.executable).parent / "perf_analyzer"
    subprocess.run(["strip", "-o", str(libexec / pa.name), str(pa)], check=True)
    for link, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*")):
        target = next((out / "lib").glob(pattern))
        (libexec / link).symlink_to(Path("../lib") / target.name)
    (out / "bin/perf_analyzer").write_text(PERF_ANALYZER)
    (out / "bin/perf_analyzer").chmod(0o755)
    _, pa_missing = closure([libexec / "perf_analyzer"], [libexec])
    if pa_missing:
        raise SystemExit(f"error: perf_analyzer still misses {sorted(pa_missing)}")

    target = pylibs.get(TARGET_PYTHON) or libpython(TARGET_PYTHON)
    if target is None:
        notes.append(f"no python{TARGET_PYTHON} here: pylib/ left empty")
    else:
        dst = out / "pylib" / target.name
        subprocess.run(["strip", "--strip-unneeded", "-o", str(dst), str(target)], check=True)
        notes.append(f"pylib/: {target} (stripped)")

    client = site_packages() / "tritonclient"
    shutil.copytree(client, out / "site/tritonclient", ignore=shutil.ignore_patterns("__pycache__"))
    rapidjson = wheel("python-rapidjson", stage / "wheels")
    unpack_wheel(rapidjson, out / "site")
    notes.append(
        f"site/: tritonclient {importlib.metadata.version('tritonclient')}, {rapidjson.name}"
    )
    numpy = wheel("numpy", stage / "wheels")
    unpack_wheel(numpy, out / "numpy1")
    notes.append(f"numpy1/: {numpy.name}, without its tests")
    return notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "build/triton_pack")
    p.add_argument(
        "--stubs",
        nargs="+",
        default=sorted({TARGET_PYTHON, f"{sys.version_info[0]}.{sys.version_info[1]}"}),
        help="Python versions of the backend stubs (default: the GPU image's and this one's)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triton-pack-") as tmp:
        stage = Path(tmp)
        notes = build(stage, args.stubs)
        raw = sum(f.stat().st_size for f in (stage / "triton").rglob("*") if f.is_file())
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        archive = args.out / "triton.tar.xz"
        print(f"compressing {mib(raw)} into {archive} (xz -6, about two minutes) ...", flush=True)
        with open(archive, "wb") as f:
            tar = subprocess.Popen(["tar", "-C", str(stage), "-cf", "-", "triton"], stdout=-1)
            subprocess.run(["xz", "-6", "-T0"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait() != 0:
                raise SystemExit("error: tar failed")
        listing = subprocess.run(
            ["tar", "-tvJf", str(archive)], capture_output=True, text=True, check=True
        ).stdout
        (args.out / "contents.txt").write_text(listing)
    for note in notes:
        print(note)
    size = archive.stat().st_size
    tree = travelling_tree_bytes()
    print(f"archive {mib(size)} ({mib(raw)} unpacked) + working tree {mib(tree)}")
    print(f"= {mib(size + tree)} of the device call's {mib(LIMIT)}")
    if size + tree > LIMIT:
        print("error: too large for one device call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
