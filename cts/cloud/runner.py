"""Entry point of the detached per-job runner: `python -m cts.cloud.runner STATE_JSON`."""

import sys

from cts.cloud.jobs import run_job

__all__ = ["main"]


def main(argv: list) -> int:
    if len(argv) != 1:
        print("usage: python -m cts.cloud.runner STATE_JSON", file=sys.stderr)
        return 2
    return 0 if run_job(argv[0]) in ("success", "failed") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
