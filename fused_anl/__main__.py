"""``fused-anl`` / ``python -m fused_anl``: command-line entry point."""
import sys

USAGE = """\
usage: fused-anl [-h] [--version] COMMAND ...

commands:
  demo    train CE and robust losses on digits under label noise
          (fused-anl demo --quick; fused-anl demo --help for its options)
"""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write(USAGE + "fused-anl: error: a command is required\n")
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv[0] == "--version":
        from . import __version__
        print(f"fused-anl {__version__}")
        return 0
    if argv[0] == "demo":
        from .demo import main as demo_main
        return demo_main(argv[1:])
    sys.stderr.write(USAGE + f"fused-anl: error: unknown command {argv[0]!r} "
                             "(try: fused-anl demo --quick)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
