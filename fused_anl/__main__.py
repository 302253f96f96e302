"""``fused-anl`` / ``python -m fused_anl``: command-line entry point."""
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: fused-anl demo [options]   (fused-anl demo --help for the options)")
        return 0 if argv else 2
    if argv[0] == "demo":
        from .demo import main as demo_main
        return demo_main(argv[1:])
    print(f"fused-anl: unknown command {argv[0]!r} (try: fused-anl demo --quick)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
