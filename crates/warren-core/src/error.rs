//! The crate error and the AMQP reply codes it carries.
//!
//! Management operations (declare, bind, delete, ...) return [`Error`]. Each
//! variant is one AMQP 0-9-1 reply code, and its text follows RabbitMQ's
//! wording (`NOT_FOUND - no queue 'q' in vhost '/'`), because clients such as
//! oslo.messaging parse it. `warren-wire` maps an [`Error`] to a `channel.close`
//! or `connection.close` with [`Error::reply_code`] and [`Error::reply_text`]
//! and needs no table of its own.

/// An error from a broker operation, carrying its AMQP reply code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 403 ACCESS_REFUSED: the operation is not allowed (an `amq.` name, the
    /// default exchange).
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// 404 NOT_FOUND: no such exchange or queue.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// 405 RESOURCE_LOCKED: an exclusive queue or consumer belongs to someone
    /// else.
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// 406 PRECONDITION_FAILED: inequivalent redeclare, bad argument, in-use or
    /// non-empty delete, unknown delivery tag.
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// 503 COMMAND_INVALID: for example an unknown exchange type.
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// 530 NOT_ALLOWED: for example a consumer tag already in use.
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// 540 NOT_IMPLEMENTED.
    #[error("NOT_IMPLEMENTED - {0}")]
    NotImplemented(String),
}

impl Error {
    /// The AMQP 0-9-1 reply code of this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            Error::AccessRefused(_) => 403,
            Error::NotFound(_) => 404,
            Error::ResourceLocked(_) => 405,
            Error::PreconditionFailed(_) => 406,
            Error::CommandInvalid(_) => 503,
            Error::NotAllowed(_) => 530,
            Error::NotImplemented(_) => 540,
        }
    }

    /// The reply text as RabbitMQ words it: `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub fn reply_text(&self) -> String {
        self.to_string()
    }

    /// Whether AMQP makes this a connection-level error (reply codes 5xx) rather
    /// than a channel-level one.
    pub fn is_connection_error(&self) -> bool {
        self.reply_code() >= 500
    }
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_follow_rabbitmq() {
        let e = Error::NotFound("no queue 'q' in vhost '/'".into());
        assert_eq!(e.reply_code(), 404);
        assert_eq!(e.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
        assert!(!e.is_connection_error());
        assert!(Error::CommandInvalid("x".into()).is_connection_error());
    }
}
