"""`facemask watch`: many cameras, one batched detector, compliance per camera over time (docs/cameras.md)."""
