//! Engine tests: every opcode with its error cases, against independent references.
