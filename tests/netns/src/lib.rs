//! Network-namespace harness.
