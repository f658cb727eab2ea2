//! Emulated maps (in progress).
