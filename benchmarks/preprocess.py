"""Preprocessing benchmark (see ``edgevlp/bench/preprocess.py``): ``python benchmarks/preprocess.py``."""

from edgevlp.bench.preprocess import main

if __name__ == "__main__":
    main()
