"""Tag the cells whose numbers depend on neither random draws on the device nor training
(`nbval-check-output`): `make test-anywhere` compares them within its tolerance.

    python tools/tag_exact_cells.py book/04_gradients.ipynb 3 6 8 ...

Cell numbers count all cells from 0, markdown included. Tags only; outputs are untouched.
"""
import sys

import nbformat

TAG = "nbval-check-output"

if __name__ == "__main__":
    path, numbers = sys.argv[1], {int(n) for n in sys.argv[2:]}
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        tags = [t for t in cell.metadata.get("tags", []) if t != TAG]
        if i in numbers:
            if cell.cell_type != "code":
                sys.exit(f"{path}: cell {i} is not a code cell")
            tags.append(TAG)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    nbformat.write(nb, path)
    print(f"{path}: {TAG} on cells {sorted(numbers)}")
