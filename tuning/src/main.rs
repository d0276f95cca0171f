//! `ringlog-tune`: sweeps batch, linger, fsync and I/O-mode settings on a node and
//! recommends a configuration. The sweep needs the broker and the load generator; until
//! they land this binary says so and exits non-zero.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "ringlog-tune {}: the tuning sweep is not implemented yet (it needs the broker and \
         the load generator).",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(3)
}
