//! warren-wire (in progress).
