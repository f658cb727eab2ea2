//! The kernel verifier-log text form (in progress).
