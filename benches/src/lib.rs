//! Criterion benches for Kluis live in benches/benches/*.rs.
