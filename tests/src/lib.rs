//! Black-box integration tests for Switchyard live in `tests/tests/`.
