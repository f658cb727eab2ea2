//! The executor (in progress).
