"""`python -m mobilenet_jax.profile`: the paper's table of counts, as `python -m mobilenet_jax.counts`."""

from mobilenet_jax.counts import Counts, count, paper_table  # noqa: F401

if __name__ == "__main__":
    print(paper_table())
