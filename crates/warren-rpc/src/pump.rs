//! What an RPC server and a notification listener share: a [`Pump`] that
//! takes messages from a transport listener and hands each to a handler,
//! at most `max_in_flight` at once, with start, stop and drain.
//!
//! Semantics (the same for both users):
//!
//! - a message is taken from the listener only when a slot is free, so the
//!   others wait in their queues (where another server may take them);
//! - [`Pump::stop`] stops taking messages, lets the transport listener go
//!   (what it held but had not handed out goes back to its queues), then
//!   waits until every handler in flight is done;
//! - [`Pump::start`] again makes a new transport listener and resumes;
//! - dropping the pump stops the intake; handlers in flight finish on
//!   their own.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{oneshot, Semaphore, TryAcquireError};

use crate::error::{RpcError, TransportError};
use crate::transport::Listener;
use crate::util::log_error;

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// The intake of a server or a listener (see the module docs).
pub(crate) struct Pump {
    permits: usize,
    semaphore: Arc<Semaphore>,
    running: AtomicBool,
    state: tokio::sync::Mutex<Option<Running>>,
}

impl Pump {
    /// A stopped pump running at most `max_in_flight` handlers at once
    /// (clamped to at least 1).
    pub(crate) fn new(max_in_flight: usize) -> Pump {
        let permits = max_in_flight.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Pump {
            permits,
            semaphore: Arc::new(Semaphore::new(permits)),
            running: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(None),
        }
    }

    /// The bound on handlers in flight, as clamped.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.permits
    }

    /// Whether it is started.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Starts, unless started: `open` makes the transport listener, then a
    /// task takes its messages and runs `handle(message)` for each.
    /// `label` names the pump in logs.
    ///
    /// Each handler's first poll runs on the pump's task; only a handler
    /// that has to wait gets a task of its own (most finish at once, and
    /// this saves a spawn and a scheduling hop per message).
    ///
    /// # Errors
    ///
    /// [`TransportError::NoRuntime`] outside a Tokio runtime, or what `open`
    /// returns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it completes, the pump is not started.
    pub(crate) async fn start<T, O, Fo, H, Fh>(
        &self,
        label: String,
        open: O,
        handle: H,
    ) -> Result<(), RpcError>
    where
        T: Send + 'static,
        O: FnOnce() -> Fo,
        Fo: Future<Output = Result<Box<dyn Listener<T>>, RpcError>>,
        H: Fn(T) -> Fh + Send + 'static,
        Fh: Future<Output = ()> + Send + 'static,
    {
        let mut state = self.state.lock().await;
        if state.is_some() {
            return Ok(());
        }
        tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let listener = open().await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            self.semaphore.clone(),
            listener,
            stopped,
            handle,
            label,
        ));
        *state = Some(Running { stop, task });
        self.running.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops taking messages, lets the transport listener go, and waits
    /// until the handlers in flight are done.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, the pump still stops taking messages;
    /// handlers already running finish on their own.
    pub(crate) async fn stop(&self) {
        let mut state = self.state.lock().await;
        if let Some(r) = state.take() {
            self.running.store(false, Ordering::Release);
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
        let permits = self.permits as u32;
        if let Ok(all) = self.semaphore.acquire_many(permits).await {
            drop(all);
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // Dropping the stop sender ends the task; running handlers finish.
        let _ = self.state.get_mut().take();
    }
}

/// The pump yields to the runtime's other tasks once per this many slots it
/// takes without waiting (see `run`).
const YIELD_EVERY: u32 = 32;

async fn run<T, H, Fh>(
    semaphore: Arc<Semaphore>,
    mut listener: Box<dyn Listener<T>>,
    mut stop: oneshot::Receiver<()>,
    handle: H,
    label: String,
) where
    T: Send + 'static,
    H: Fn(T) -> Fh,
    Fh: Future<Output = ()> + Send + 'static,
{
    // The box a handler runs in on its first poll. Most handlers finish
    // there (their first step runs inline), and then the next message reuses
    // it: a handler's future can be kilobytes, and allocating one per message
    // showed in the in-process call's profile. A handler that has to wait
    // keeps the box and goes off as a task of its own.
    let mut slot = None;
    let mut taken = 0u32;
    loop {
        // A free slot is taken at once; only when there is none does the
        // pump wait for one, or for the stop. (The stop is looked at below
        // before each message in any case.)
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(p) => {
                // Taken without waiting, a slot costs the task none of its
                // cooperative budget; nor does a message a listener has
                // ready. A listener that always has one (a handler that
                // requeues its notification) would then keep the thread:
                // the pump lets the others run every so often.
                taken += 1;
                if taken == YIELD_EVERY {
                    taken = 0;
                    tokio::task::yield_now().await;
                }
                p
            }
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => tokio::select! {
                biased;
                _ = &mut stop => break,
                p = semaphore.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            },
        };
        // Stopped (or dropped) before the next message is taken: a look at
        // the signal's state, cheaper than polling it first; it is polled
        // (and so waited for) only while no message is ready.
        if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            break;
        }
        let incoming = tokio::select! {
            biased;
            r = listener.recv() => r,
            _ = &mut stop => break,
        };
        match incoming {
            Ok(message) => {
                let work = handle(message);
                let task = match &mut slot {
                    Some(task) => {
                        Pin::set(&mut Pin::as_mut(task), work);
                        task
                    }
                    None => slot.insert(Box::pin(work)),
                };
                let done = poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx).is_ready())).await;
                // The in-flight slot is held until the handler is done. (Not
                // in a wrapper future around the handler's: an async wrapper
                // holds its inner future twice, as its argument and as what
                // it awaits, and the whole is moved into the box each time.)
                if done {
                    drop(permit);
                } else if let Some(task) = slot.take() {
                    tokio::spawn(async move {
                        task.await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                log_error!("{} stops: {}", label, e);
                break;
            }
        }
    }
    // Let go of the queues before `stop` returns: what the listener held
    // but had not handed out goes back.
    listener.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::BoxFuture;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::mpsc;

    /// A listener fed by a channel.
    #[derive(Debug)]
    struct Fed(mpsc::UnboundedReceiver<u32>);

    impl Listener<u32> for Fed {
        fn recv(&mut self) -> BoxFuture<'_, Result<u32, TransportError>> {
            Box::pin(async move { self.0.recv().await.ok_or(TransportError::Closed) })
        }
    }

    #[tokio::test]
    async fn stop_drains_and_start_resumes_with_a_new_listener() {
        let pump = Pump::new(2);
        let gate = Arc::new(Semaphore::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let handler = {
            let (gate, done) = (gate.clone(), done.clone());
            move |n: u32| {
                let (gate, done, started_tx) = (gate.clone(), done.clone(), started_tx.clone());
                async move {
                    let _ = started_tx.send(n);
                    if let Ok(p) = gate.acquire().await {
                        p.forget();
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        pump.start(
            "test".into(),
            || async { Ok(Box::new(Fed(rx)) as _) },
            handler.clone(),
        )
        .await
        .unwrap();
        assert!(pump.is_running());
        for n in 0..3 {
            tx.send(n).unwrap();
        }
        // Two run, the third waits for a slot.
        assert_eq!(started.recv().await, Some(0));
        assert_eq!(started.recv().await, Some(1));
        tokio::task::yield_now().await;
        assert!(started.try_recv().is_err(), "the bound held");
        {
            let stop = pump.stop();
            tokio::pin!(stop);
            tokio::select! {
                biased;
                _ = &mut stop => panic!("stop returned while handlers ran"),
                _ = tokio::task::yield_now() => {}
            }
            assert!(!pump.is_running());
            gate.add_permits(2);
            stop.await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 2, "stop waited for both");
        assert!(started.try_recv().is_err(), "the third was not taken");
        // A new listener: it takes what is sent to it.
        let (tx2, rx2) = mpsc::unbounded_channel();
        pump.start(
            "test".into(),
            || async { Ok(Box::new(Fed(rx2)) as _) },
            handler,
        )
        .await
        .unwrap();
        gate.add_permits(1);
        tx2.send(9).unwrap();
        assert_eq!(started.recv().await, Some(9));
        pump.stop().await;
        assert_eq!(done.load(Ordering::SeqCst), 3);
        drop(tx);
    }
}
