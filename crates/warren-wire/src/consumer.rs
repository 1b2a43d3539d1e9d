//! Consumer tasks: one per `basic.consume`, forwarding a warren
//! [`Consumer`]'s deliveries to the client.
//!
//! A task waits for the next delivery, takes room in the writer's budget,
//! then, under its channel's lock, checks that the consumer and channel are
//! still there and that the channel's global prefetch allows one more,
//! assigns the channel's next delivery tag, records the delivery as
//! unacknowledged and queues `basic.deliver`. Doing the last three under one
//! lock keeps delivery tags in the order the client sees them.
//!
//! It stops when told to (`basic.cancel`, channel or connection closing):
//! dropping the [`Consumer`] puts whatever it had been handed but not shown
//! back in the queue. When the queue goes away under it (`RecvError`), it
//! sends the client a `basic.cancel` if the client asked for
//! `consumer_cancel_notify`.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use tokio::sync::oneshot;
use warren_core::Consumer;

use crate::channel::{ChannelShared, Unacked};
use crate::convert::{properties_to_wire, short};
use crate::writer::Out;

/// Forwards `consumer`'s deliveries until `stop` fires or is dropped.
pub(crate) async fn forward(
    ch: Arc<ChannelShared>,
    consumer: Consumer,
    tag: String,
    no_ack: bool,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => return,
            r = consumer.recv_async() => r,
        };
        let Ok(delivery) = next else {
            server_cancel(&ch, &tag);
            return;
        };
        let properties = properties_to_wire(delivery.properties());
        let body = delivery.body().clone();
        let permit = tokio::select! {
            biased;
            _ = &mut stop => return,
            p = ch.out.reserve(body.len()) => match p {
                Some(p) => p,
                None => return,
            },
        };
        let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: short(&tag),
            delivery_tag: 0,
            redelivered: delivery.redelivered(),
            exchange: short(delivery.exchange()),
            routing_key: short(delivery.routing_key()),
        }));
        let mut pending = Some((delivery, method, properties, body, permit));
        loop {
            let credit = ch.credit.notified();
            {
                let mut st = ch.state.lock();
                if !st.open || !st.consumers.contains_key(&tag) {
                    drop(st);
                    return; // `pending` drops: the delivery is requeued
                }
                if no_ack || st.global_prefetch == 0 || st.consumer_unacked < st.global_prefetch {
                    if let Some((delivery, mut method, properties, body, permit)) = pending.take() {
                        st.next_tag += 1;
                        let delivery_tag = st.next_tag;
                        if let AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) = &mut method {
                            d.delivery_tag = delivery_tag;
                        }
                        ch.out.send(Out::Content {
                            channel: ch.id,
                            method,
                            properties,
                            body,
                            permit: Some(permit),
                        });
                        if !no_ack {
                            st.consumer_unacked += 1;
                            st.unacked.insert(
                                delivery_tag,
                                Unacked {
                                    delivery,
                                    counted: true,
                                },
                            );
                        }
                    }
                    break;
                }
            }
            tokio::select! {
                biased;
                _ = &mut stop => return,
                _ = credit => {}
            }
        }
    }
}

/// The queue went away under the consumer.
fn server_cancel(ch: &ChannelShared, tag: &str) {
    let mut st = ch.state.lock();
    if st.open && st.consumers.remove(tag).is_some() && ch.cancel_notify {
        ch.out.method(
            ch.id,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: short(tag),
                nowait: true,
            })),
        );
    }
}
