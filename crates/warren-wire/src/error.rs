//! AMQP errors as the server sends them, and the crate's public errors.
//!
//! An [`AmqpError`] is what ends up in a `channel.close` or `connection.close`:
//! a reply code, RabbitMQ's reply text (`NOT_FOUND - no queue 'q' in vhost
//! '/'`), the class and method that failed, and whether it closes the channel
//! or the whole connection. Errors from `warren-core` already carry their code
//! and RabbitMQ's wording; the wire layer adds its own (frame errors, unknown
//! delivery tags, ...) with the same shape.

use std::fmt;

/// Whether an error closes the channel or the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Channel,
    Connection,
}

/// One AMQP error on its way to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AmqpError {
    pub(crate) code: u16,
    pub(crate) text: String,
    pub(crate) class_id: u16,
    pub(crate) method_id: u16,
    pub(crate) scope: Scope,
}

/// The constant name of a reply code, as RabbitMQ prefixes its texts.
pub(crate) fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

impl AmqpError {
    fn new(code: u16, detail: impl fmt::Display, scope: Scope) -> Self {
        AmqpError {
            code,
            text: format!("{} - {detail}", code_name(code)),
            class_id: 0,
            method_id: 0,
            scope,
        }
    }

    /// A channel-level error (the channel closes).
    pub(crate) fn channel(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(code, detail, Scope::Channel)
    }

    /// A connection-level error (the connection closes).
    pub(crate) fn connection(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(code, detail, Scope::Connection)
    }

    /// Sets the class and method the error is about.
    pub(crate) fn at(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// Sets class and method only if none were set yet.
    pub(crate) fn or_at(self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.at(class_id, method_id)
        } else {
            self
        }
    }
}

impl From<warren_core::Error> for AmqpError {
    fn from(e: warren_core::Error) -> Self {
        AmqpError {
            code: e.reply_code(),
            text: e.reply_text(),
            class_id: 0,
            method_id: 0,
            scope: if e.is_connection_error() {
                Scope::Connection
            } else {
                Scope::Channel
            },
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not match the format.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// The configuration is well-formed but makes no sense (for example a
    /// user allowed on a virtual host that is not declared).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_carry_the_code_name() {
        let e = AmqpError::channel(406, "unknown delivery tag 7").at(60, 80);
        assert_eq!(e.text, "PRECONDITION_FAILED - unknown delivery tag 7");
        assert_eq!((e.class_id, e.method_id), (60, 80));
        let core = warren_core::Error::CommandInvalid("unknown exchange type 'x'".into());
        let e = AmqpError::from(core);
        assert_eq!(e.scope, Scope::Connection);
        assert_eq!(e.code, 503);
    }
}
