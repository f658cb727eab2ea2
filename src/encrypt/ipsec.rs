//! IPsec mode (placeholder filled in by the following commits).
