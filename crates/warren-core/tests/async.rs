//! The async side, polled by hand without a runtime: `recv_async`, its
//! cancel safety, several receivers on one consumer, `Stream`, and the
//! `Send` / `Sync` guarantees of the public types.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use warren_core::{
    Broker, ConsumeOptions, Consumer, Delivery, Message, PublishAsync, QueueDeclareOptions, Recv,
    RecvError,
};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Counted {
    count: Arc<CountingWaker>,
    waker: Waker,
}

impl Counted {
    fn new() -> Self {
        let count = Arc::new(CountingWaker::default());
        Counted {
            waker: Waker::from(count.clone()),
            count,
        }
    }
    fn wakes(&self) -> usize {
        self.count.0.load(Ordering::SeqCst)
    }
    fn cx(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }
}

fn setup() -> (Broker, Consumer) {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    (b, c)
}

fn body(d: &Delivery) -> &[u8] {
    d.body()
}

#[test]
fn recv_async_pending_then_woken_then_ready() {
    let (b, c) = setup();
    let w = Counted::new();
    let mut fut = pin!(c.recv_async());
    assert!(fut.as_mut().poll(&mut w.cx()).is_pending());
    assert!(fut.as_mut().poll(&mut w.cx()).is_pending());
    assert_eq!(w.wakes(), 0);
    b.publish("", "q", "m").unwrap();
    assert!(w.wakes() >= 1);
    match fut.as_mut().poll(&mut w.cx()) {
        Poll::Ready(Ok(d)) => {
            assert_eq!(body(&d), b"m");
            d.ack();
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn recv_async_is_ready_at_once_when_something_waits() {
    let (b, c) = setup();
    b.publish("", "q", "m").unwrap();
    let w = Counted::new();
    let mut fut = pin!(c.recv_async());
    assert!(matches!(fut.as_mut().poll(&mut w.cx()), Poll::Ready(Ok(_))));
}

#[test]
fn dropping_a_pending_recv_loses_nothing() {
    let (b, c) = setup();
    let w = Counted::new();
    {
        let mut fut = pin!(c.recv_async());
        assert!(fut.as_mut().poll(&mut w.cx()).is_pending());
    }
    b.publish("", "q", "1").unwrap();
    assert_eq!(w.wakes(), 0, "a dropped future is not woken");
    let d = c.recv_timeout(WAIT).unwrap();
    assert_eq!(body(&d), b"1");
    d.ack();
    {
        // Woken, then dropped before it is polled again.
        let mut fut = pin!(c.recv_async());
        assert!(fut.as_mut().poll(&mut w.cx()).is_pending());
        b.publish("", "q", "2").unwrap();
        assert_eq!(w.wakes(), 1);
    }
    let d = c.recv_timeout(WAIT).unwrap();
    assert_eq!(body(&d), b"2");
    d.ack();
    assert_eq!(b.queue_stats("q").unwrap().acked, 2);
}

#[test]
fn a_woken_then_dropped_recv_passes_the_wake_up_on() {
    let (b, c) = setup();
    let wa = Counted::new();
    let wb = Counted::new();
    let mut a = Box::pin(c.recv_async());
    let mut bb = Box::pin(c.recv_async());
    assert!(a.as_mut().poll(&mut wa.cx()).is_pending());
    assert!(bb.as_mut().poll(&mut wb.cx()).is_pending());
    b.publish("", "q", "m").unwrap();
    assert_eq!(
        (wa.wakes(), wb.wakes()),
        (1, 0),
        "the longest waiter is woken"
    );
    drop(a); // woken, but leaves without taking the message
    assert_eq!(wb.wakes(), 1, "the wake-up went to the other receiver");
    match bb.as_mut().poll(&mut wb.cx()) {
        Poll::Ready(Ok(d)) => assert_eq!(body(&d), b"m"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_longest_waiting_receiver_is_woken_first() {
    let (b, c) = setup();
    let ws: Vec<Counted> = (0..4).map(|_| Counted::new()).collect();
    let mut futs: Vec<_> = (0..4).map(|_| Some(Box::pin(c.recv_async()))).collect();
    for (f, w) in futs.iter_mut().zip(&ws) {
        assert!(f.as_mut().unwrap().as_mut().poll(&mut w.cx()).is_pending());
    }
    // The first waiter leaves without having been woken.
    futs[0] = None;
    b.publish("", "q", "1").unwrap();
    let wakes: Vec<usize> = ws.iter().map(Counted::wakes).collect();
    assert_eq!(wakes, [0, 1, 0, 0]);
    b.publish("", "q", "2").unwrap();
    let wakes: Vec<usize> = ws.iter().map(Counted::wakes).collect();
    assert_eq!(wakes, [0, 1, 1, 0]);
}

#[test]
fn two_async_receivers_on_one_consumer_both_complete() {
    let (b, c) = setup();
    let wa = Counted::new();
    let wb = Counted::new();
    let mut a = pin!(c.recv_async());
    let mut z = pin!(c.recv_async());
    assert!(a.as_mut().poll(&mut wa.cx()).is_pending());
    assert!(z.as_mut().poll(&mut wb.cx()).is_pending());
    b.publish("", "q", "1").unwrap();
    b.publish("", "q", "2").unwrap();
    assert!(wa.wakes() >= 1);
    assert!(wb.wakes() >= 1);
    let mut got = Vec::new();
    for (f, w) in [(a.as_mut(), &wa), (z.as_mut(), &wb)] {
        match f.poll(&mut w.cx()) {
            Poll::Ready(Ok(d)) => got.push(body(&d).to_vec()),
            other => panic!("{other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
}

#[test]
fn an_async_receiver_on_another_thread() {
    // A minimal block_on: park the thread until woken.
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
    let (b, c) = setup();
    let n = 200;
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut seen = Vec::new();
            for _ in 0..n {
                let d = block_on(c.recv_async()).unwrap();
                seen.push(String::from_utf8(d.body().to_vec()).unwrap());
                d.ack();
            }
            seen
        });
        for i in 0..n {
            b.publish("", "q", format!("{i}").into_bytes()).unwrap();
        }
        let seen = h.join().unwrap();
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(seen, want);
    });
    assert_eq!(b.queue_stats("q").unwrap().acked, n as u64);
}

#[test]
fn cancel_and_delete_complete_a_pending_recv_with_an_error() {
    let (b, c) = setup();
    let w = Counted::new();
    let mut fut = pin!(c.recv_async());
    assert!(fut.as_mut().poll(&mut w.cx()).is_pending());
    c.cancel();
    assert!(w.wakes() >= 1);
    assert!(matches!(
        fut.as_mut().poll(&mut w.cx()),
        Poll::Ready(Err(RecvError))
    ));

    let c2 = b.consume("q", ConsumeOptions::default()).unwrap();
    let w = Counted::new();
    let mut fut = pin!(c2.recv_async());
    assert!(fut.as_mut().poll(&mut w.cx()).is_pending());
    b.delete_queue("q", Default::default()).unwrap();
    assert!(w.wakes() >= 1);
    assert!(matches!(
        fut.as_mut().poll(&mut w.cx()),
        Poll::Ready(Err(RecvError))
    ));
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Broker>();
    assert_send_sync::<Consumer>();
    assert_send_sync::<Delivery>();
    assert_send_sync::<Message>();
    assert_send_sync::<PublishAsync>();
    assert_send_sync::<Recv<'static>>();
    assert_send_sync::<warren_core::PublishError>();
    assert_send_sync::<warren_core::Error>();
    assert_send_sync::<warren_core::ManualClock>();
    assert_send_sync::<warren_core::Publisher>();
    // Futures can move to another executor thread.
    let (b, c) = setup();
    fn send_it<T: Send>(_: &T) {}
    send_it(&c.recv_async());
    send_it(&b.publish_async("", "q", "m"));
    assert_send::<Pin<Box<PublishAsync>>>();
}

#[cfg(feature = "stream")]
#[test]
fn consumer_is_a_stream() {
    use futures_core::Stream;
    let (b, mut c) = setup();
    let w = Counted::new();
    assert!(Pin::new(&mut c).poll_next(&mut w.cx()).is_pending());
    b.publish("", "q", "1").unwrap();
    b.publish("", "q", "2").unwrap();
    assert!(w.wakes() >= 1);
    for want in [b"1", b"2"] {
        match Pin::new(&mut c).poll_next(&mut w.cx()) {
            Poll::Ready(Some(d)) => {
                assert_eq!(body(&d), want);
                d.ack();
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(Pin::new(&mut c).poll_next(&mut w.cx()).is_pending());
    let before = w.wakes();
    b.publish("", "q", "3").unwrap();
    assert!(w.wakes() > before);
    c.cancel();
    // What was dispatched before the cancel is still yielded, then the end.
    match Pin::new(&mut c).poll_next(&mut w.cx()) {
        Poll::Ready(Some(d)) => assert_eq!(body(&d), b"3"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Pin::new(&mut c).poll_next(&mut w.cx()),
        Poll::Ready(None)
    ));
    assert_eq!(b.queue_stats("q").unwrap().acked, 2);
    assert_eq!(
        b.queue_stats("q").unwrap().ready,
        1,
        "the unanswered 3 is requeued"
    );
}
