//! The virtual Intel DSA (8086:0b25).
