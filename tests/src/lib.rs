//! Integration tests for Kluis live in tests/*.rs.
