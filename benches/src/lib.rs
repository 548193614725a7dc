//! Benchmarks of fdloop and its peers (see docs/benchmarks.md).
