"""The kernels behind the layers: each operation with more than one form, and the per-backend
table (`backends.BACKEND_DEFAULTS`) that "auto" resolves through. Nothing here knows of Flax."""
