//! Fixtures shared by the fuzz targets in `fuzz_targets/` and by the seed generator
//! (`examples/gen_corpus.rs`): a fixed group key, peers in every handshake state, a
//! representative steering table, and helpers that let a target get past a check the
//! fuzzer cannot solve by mutation (an HMAC tag, an ICMPv6 checksum) so that the code
//! behind it is fuzzed too.
//!
//! Everything here is deterministic: a crash reproduces from its input file alone.

pub mod proto;
pub mod steer;
pub mod wire;
