# Starts a benchmark module the way a board runs its main program: as mpy-cross
# bytecode, not as source compiled into the heap by the unix port.
#   micropython -X heapsize=128k boot.py MODULE [args...] [--romfs IMAGE]
# With --romfs the image is mounted at /rom (bytecode executed in place, as from
# flash or frozen modules on a board) and MODULE is imported from it; otherwise
# MODULE.mpy is imported from the current directory.  The image's bytes sit in
# this heap on the unix port (on a board they are flash): the module finds
# "--romfs IMAGE" in sys.argv to report them separately.
import sys

if "--romfs" in sys.argv:
    import vfs
    with open(sys.argv[sys.argv.index("--romfs") + 1], "rb") as f:
        rom = f.read()
    vfs.mount(vfs.VfsRom(rom), "/rom")
    sys.path.insert(0, "/rom")
    del vfs, f
else:
    sys.path.insert(0, "")
__import__(sys.argv[1])
