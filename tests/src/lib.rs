//! Shared helpers for workloads and end-to-end tests.
