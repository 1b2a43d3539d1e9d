pub use warren_core::*;
