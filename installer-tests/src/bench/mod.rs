//! Benchmarks run by `lab bench ...` against the lab. They print figures; they never pass
//! or fail on speed (speed targets live in docs, not in timed tests).

pub mod upload;
