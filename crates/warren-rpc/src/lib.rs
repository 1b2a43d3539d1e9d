//! warren-rpc (in progress).
