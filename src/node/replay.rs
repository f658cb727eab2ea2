//! Capture replay (in progress).
