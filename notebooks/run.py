"""Execute notebooks top to bottom and write their rendered output (.ipynb and .html).

    python notebooks/run.py notebooks/01_quickstart.ipynb --out build

Each notebook runs with the output folder as its working directory, so its history
(``.flux/``) and images land there, never in the source tree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter


def run_notebook(source: Path, out_dir: Path, timeout: int = 600, allow_errors: bool = False) -> tuple[Path, Path]:
    """Execute ``source`` in ``out_dir``; return the paths of the executed notebook and its HTML."""
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(source, as_version=4)
    env_name = os.environ.get("FLUX_NB_NOTEBOOK")
    os.environ["FLUX_NB_NOTEBOOK"] = source.name
    try:
        NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(out_dir)}},
        ).execute()
    finally:
        if env_name is None:
            os.environ.pop("FLUX_NB_NOTEBOOK", None)
        else:
            os.environ["FLUX_NB_NOTEBOOK"] = env_name
    executed = out_dir / source.name
    nbformat.write(notebook, executed)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    page = executed.with_suffix(".html")
    page.write_text(html, encoding="utf-8")
    return executed, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("build"))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    for source in args.notebooks:
        started = time.perf_counter()
        executed, page = run_notebook(source.resolve(), args.out.resolve(), args.timeout)
        size_kb = executed.stat().st_size / 1024
        print(f"ran {source} in {time.perf_counter() - started:.1f} s -> {executed} ({size_kb:.0f} KB), {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
