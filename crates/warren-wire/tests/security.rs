//! Who gets in and what they see: `guest` only from loopback (checked over a
//! real non-loopback interface), virtual hosts that do not see each other,
//! and a cap on connections so that one client cannot take them all.
//! (Wrong passwords, unknown users and vhost access refusals are in
//! handshake.rs.)

mod common;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

use common::{code, start_with, text, within, Env};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_core::{Broker, BrokerOptions};
use warren_wire::{Limits, Server, ServerConfig, User};

/// A local IPv4 address that is not loopback: the one the kernel would use
/// to reach the outside (a UDP `connect` sends nothing), else the first
/// non-127 local address in /proc/net/fib_trie.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let routed = UdpSocket::bind("0.0.0.0:0").ok().and_then(|s| {
        s.connect("192.0.2.1:9")
            .or_else(|_| s.connect("203.0.113.1:9"))
            .ok()?;
        match s.local_addr().ok()?.ip() {
            IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
            _ => None,
        }
    });
    routed.or_else(|| {
        let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
        let lines: Vec<&str> = trie.lines().collect();
        lines.windows(2).find_map(|w| {
            if !w[1].trim().starts_with("/32 host LOCAL") {
                return None;
            }
            let ip: Ipv4Addr = w[0].trim().trim_start_matches("|-- ").parse().ok()?;
            (!ip.is_loopback()).then_some(ip)
        })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_is_refused_from_a_non_loopback_address() {
    let Some(ip) = non_loopback_ipv4() else {
        println!("SKIPPED guest_is_refused_from_a_non_loopback_address: this machine has no non-loopback IPv4 address");
        return;
    };
    let broker = Broker::new();
    let config = ServerConfig::with_broker(broker.clone())
        .with_user(User::new("app", "secret").with_vhosts(["/"]));
    let server = Server::bind((ip, 0), config).await.expect("bind");
    let env = Env { broker, server };
    let addr = env.addr();
    assert!(!addr.ip().is_loopback());

    // guest/guest is right, but the client's address is not loopback
    let err = env
        .connect_url(&format!("amqp://guest:guest@{addr}/%2f"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
    assert_eq!(
        text(&err),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    within(env.server.wait_for_connection_count(0)).await;

    // a configured user works on the same address
    let conn = env
        .connect_url(&format!("amqp://app:secret@{addr}/%2f"))
        .await
        .unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare(
        "from-afar".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(env.broker.has_queue("from-afar"));
}

#[tokio::test(flavor = "multi_thread")]
async fn virtual_hosts_do_not_see_each_other() {
    // (each broker knows its own name: errors quote it)
    let named = |vhost: &str| {
        Broker::with_options(BrokerOptions {
            vhost: vhost.to_owned(),
            ..BrokerOptions::default()
        })
    };
    let a = named("a");
    let b = named("b");
    let env = start_with(|c| {
        c.with_vhost("a", a.clone())
            .with_vhost("b", b.clone())
            .with_user(User::new("alice", "pw").with_vhosts(["a", "b"]))
    })
    .await;
    let url = |vhost: &str| format!("amqp://alice:pw@{}/{vhost}", env.addr());
    let conn_a = env.connect_url(&url("a")).await.unwrap();
    let conn_b = env.connect_url(&url("b")).await.unwrap();
    let ch_a = within(conn_a.create_channel()).await.unwrap();
    within(ch_a.queue_declare(
        "private".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(a.has_queue("private") && !b.has_queue("private"));

    // passive declare from b: 404, worded with b's name
    let ch_b = within(conn_b.create_channel()).await.unwrap();
    let err = within(ch_b.queue_declare(
        "private".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(404), "{err:?}");
    assert_eq!(text(&err), "NOT_FOUND - no queue 'private' in vhost 'b'");

    // consuming it from b: 404
    let ch_b = within(conn_b.create_channel()).await.unwrap();
    let err = within(ch_b.basic_consume(
        "private".into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(404), "{err:?}");

    // publishing to it from b, mandatory: returned, a's queue untouched
    assert_eq!(
        common::publish_mandatory(&conn_b, "private", b"for a").await,
        Some(312)
    );
    assert_eq!(a.queue_stats("private").unwrap().enqueued, 0);

    // a direct reply-to address handed out in a is no address in b
    let ch_a = within(conn_a.create_channel()).await.unwrap();
    let mut replies = within(ch_a.basic_consume(
        "amq.rabbitmq.reply-to".into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // learn the address: a sends itself a message through it
    a.declare_queue("probe", Default::default()).unwrap();
    within(ch_a.basic_publish(
        "".into(),
        "probe".into(),
        BasicPublishOptions::default(),
        b"",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    ))
    .await
    .unwrap();
    let address = within(async {
        loop {
            if let Some(d) = a.get("probe", Default::default()).unwrap() {
                return d.properties().reply_to.clone().unwrap();
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(address.starts_with("amq.rabbitmq.reply-to."));
    let ch_b = within(conn_b.create_channel()).await.unwrap();
    let err = within(ch_b.queue_declare(
        address.as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(404), "{err:?}");
    assert_eq!(
        common::publish_mandatory(&conn_b, &address, b"not for you").await,
        Some(312)
    );
    // from a, the same address works
    within(ch_a.basic_publish(
        "".into(),
        address.as_str().into(),
        BasicPublishOptions::default(),
        b"for you",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let d = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"for you");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_max_refuses_one_connection_too_many() {
    let env = start_with(|c| {
        c.with_limits(Limits {
            connection_max: Some(3),
            ..Limits::default()
        })
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(env.connect().await);
    }
    // RabbitMQ's wording, at connection.open
    let err = env.connect_url(&env.url()).await.unwrap_err();
    assert_eq!(code(&err), Some(530), "{err:?}");
    assert_eq!(
        text(&err),
        "NOT_ALLOWED - connection refused: node connection limit (3) is reached"
    );
    within(env.server.wait_for_connection_count(3)).await;
    // the three are unaffected
    let mut channels = Vec::new();
    for c in &open {
        let ch = within(c.create_channel()).await.unwrap();
        within(ch.queue_declare(
            "still".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        channels.push(ch);
    }
    // one leaves: there is room again
    let gone = open.pop().unwrap();
    within(gone.close(200, "bye".into())).await.unwrap();
    within(env.server.wait_for_connection_count(2)).await;
    let again = env.connect().await;
    assert!(again.status().connected());
}
