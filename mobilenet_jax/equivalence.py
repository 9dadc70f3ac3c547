"""`python -m mobilenet_jax.equivalence`: the PyTorch agreement report of `mobilenet_jax.tools.equivalence`."""

from mobilenet_jax.tools.equivalence import main

if __name__ == "__main__":
    main()
