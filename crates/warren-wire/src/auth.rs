//! SASL responses of `connection.start-ok`: PLAIN and AMQPLAIN.

use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::AMQPValue;

use crate::codec::table_depth_ok;

/// The mechanisms the server offers, in RabbitMQ's order.
pub(crate) const MECHANISMS: &str = "AMQPLAIN PLAIN";

/// A login name and password taken from a SASL response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Login {
    pub(crate) user: String,
    pub(crate) password: String,
}

/// Parses a SASL response for `mechanism`; `None` when it is malformed.
/// Unknown mechanisms are the caller's concern.
pub(crate) fn parse_response(mechanism: &str, response: &[u8]) -> Option<Login> {
    match mechanism {
        "PLAIN" => plain(response),
        "AMQPLAIN" => amqplain(response),
        _ => None,
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
fn plain(r: &[u8]) -> Option<Login> {
    let mut parts = r.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Login {
        user: String::from_utf8(user.to_vec()).ok()?,
        password: String::from_utf8(password.to_vec()).ok()?,
    })
}

/// AMQPLAIN: a field table with `LOGIN` and `PASSWORD`. py-amqp and lapin
/// send it without the table's 4-byte length prefix; accept both.
fn amqplain(r: &[u8]) -> Option<Login> {
    let mut prefixed = (r.len() as u32).to_be_bytes().to_vec();
    prefixed.extend_from_slice(r);
    let found = [prefixed.as_slice(), r].into_iter().find_map(|candidate| {
        if !table_depth_ok(candidate) {
            return None;
        }
        let (rest, table) = parse_field_table(candidate).ok()?;
        if !rest.is_empty() {
            return None;
        }
        let text = |k: &str| match table.inner().get(k)? {
            AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        };
        Some(Login {
            user: text("LOGIN")?,
            password: text("PASSWORD")?,
        })
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::auth::{Credentials, SASLMechanism};

    #[test]
    fn plain_with_and_without_authzid() {
        let want = Login {
            user: "guest".into(),
            password: "pw".into(),
        };
        assert_eq!(parse_response("PLAIN", b"\0guest\0pw"), Some(want));
        assert_eq!(
            parse_response("PLAIN", b"admin\0guest\0pw").map(|l| l.user),
            Some("guest".into())
        );
        assert_eq!(parse_response("PLAIN", b"guest"), None);
    }

    #[test]
    fn amqplain_as_lapin_and_py_amqp_send_it() {
        let c = Credentials::new("bob".into(), "secret".into());
        let r = c.sasl_auth_string(SASLMechanism::AMQPlain);
        assert_eq!(
            parse_response("AMQPLAIN", r.as_bytes()),
            Some(Login {
                user: "bob".into(),
                password: "secret".into()
            })
        );
        // with the length prefix, as some clients send it
        let mut with_len = (r.len() as u32).to_be_bytes().to_vec();
        with_len.extend_from_slice(r.as_bytes());
        assert_eq!(
            parse_response("AMQPLAIN", &with_len).map(|l| l.password),
            Some("secret".into())
        );
        assert_eq!(parse_response("AMQPLAIN", b"\x05LOGIN"), None);
    }
}
