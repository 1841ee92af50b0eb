"""``python -m autodeeplab`` (also what ``torchrun -m autodeeplab`` runs)."""

from autodeeplab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
