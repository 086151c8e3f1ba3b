"""``python -m evalkit`` (and ``torchrun -m evalkit``) runs the CLI."""
import sys

try:
    from cli.main import main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: nothing has run yet
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    main()
