//! The virtual Intel DSA: descriptor formats and the software engine (the register front end
//! lives beside these modules).

pub mod descriptor;
pub mod engine;
